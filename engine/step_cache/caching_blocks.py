"""The transformer's block list, able to skip blocks for some rows of a batched step.

``install_step_caching(transformer, "blocks")`` swaps the model's ``ModuleList`` of blocks
for a ``StepCachingBlocks`` holding the same modules under the same names (weights, hooks
and the model's own forward are untouched). Iterated outside a caching step it yields the
blocks themselves, so a forward without step caching is the model's own, op for op. During
a caching step (``caching_rows``) the model's ``for block in self.blocks`` loop gets two
callables instead: the first block, run on every row but those whose policy decided before
any block to skip them all (magcache), which records the other rows' first-block residual
and decides which of them skip; then the other blocks, run on the rows that recompute
only, with the skipped rows' residual reused or estimated (engine/step_cache/row_cache.py).
The embeddings before the blocks and the output projection after them run on every row.

The tensors a block takes are selected by row where their first dimension is the batch
(hidden states, text, timestep modulation); the rest (Wan's rotary table, [1, s, 1, d]) is
shared by every row, as in the full batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.step_cache.row_cache import RowCache, RowSum


@dataclass(frozen=True)
class CachingRow:
    """One row of a step: its cache (None: this row never skips), step index, total steps, expert."""

    cache: RowCache | None
    step: int
    total_steps: int
    expert: int


class StepCachingBlocks(torch.nn.ModuleList):
    def __init__(self, blocks: torch.nn.ModuleList):
        super().__init__(blocks)
        self._rows: Sequence[CachingRow] | None = None
        self._skipping: list[int] = []  # rows that skip the later blocks this step
        self._block_inputs: torch.Tensor | None = None
        self._first_residuals: list[torch.Tensor | None] = []
        # Set by the sequence-parallel split, where each rank holds part of every row's tokens:
        # sums a statistic over the ranks, and how many of this rank's tokens are real (the
        # rest is padding to a multiple of the ranks) given how many it holds.
        self.row_sum: RowSum | None = None
        self.real_tokens: Callable[[int], int] | None = None
        # ... and cuts a full [b, s, dim] sequence to this rank's tokens as its hook on the first
        # block does, for rows that skip every block (magcache) and so never enter it.
        self.local_tokens: Callable[[torch.Tensor], torch.Tensor] | None = None
        # The rows the later blocks run on while they run on some only (None otherwise), for
        # per-row state held outside the block arguments (the compact text attention's key bias).
        self.running_rows: list[int] | None = None

    @contextlib.contextmanager
    def caching_rows(self, rows: Sequence[CachingRow]):
        """Within this block, the model's next forward runs ``rows`` (in batch order) with step caching."""
        self._rows = rows
        try:
            yield
        finally:
            self._rows, self._block_inputs = None, None
            self._first_residuals, self._skipping = [], []

    def __iter__(self) -> Iterator[Any]:
        if self._rows is None or len(self) < 2:
            return super().__iter__()
        return iter((self._run_first_block, self._run_other_blocks))

    def _run_first_block(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        rows, batch = self._rows, hidden_states.shape[0]
        # Rows whose policy decides before any block, and skips them all this step.
        whole = [index for index, row in enumerate(rows)
                 if row.cache is not None and row.cache.skips_whole_transformer
                 and row.cache.reuses_before_blocks(row.step, row.total_steps, row.expert)]
        skipping_all = set(whole)
        running = [index for index in range(batch) if index not in skipping_all]
        # The block's input as the block saw it: a sequence-parallel pre-hook cuts it to this
        # rank's tokens on the way in, so it is read by a hook, after the cut.
        seen: list[torch.Tensor] = []
        handle = self[0].register_forward_hook(
            lambda module, inputs, kw, result: seen.append(inputs[0] if inputs else kw["hidden_states"]),
            with_kwargs=True)
        try:
            ran = self._run_rows(self._blocks()[:1], running, batch, hidden_states, args, kwargs) if running else None
        finally:
            handle.remove()
        if whole:
            # The skipping rows' tokens, cut as the hook would have cut them; they leave the
            # first block unchanged and get every block's residual in _run_other_blocks.
            block_inputs = hidden_states if self.local_tokens is None else self.local_tokens(hidden_states)
            output = block_inputs.clone()
            if running:
                output[running] = ran
        else:
            block_inputs, output = seen[0], ran
        residuals = self._real(output - block_inputs)
        self._block_inputs = block_inputs
        self._first_residuals = [residuals[index] if row.cache is not None and not row.cache.skips_whole_transformer
                                 else None for index, row in enumerate(rows)]
        self._skipping = whole + [index for index in running
                                  if self._first_residuals[index] is not None
                                  and rows[index].cache.reuses(rows[index].step, rows[index].total_steps,
                                                               rows[index].expert, residuals[index], self.row_sum)]
        return output

    def _run_other_blocks(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        batch = hidden_states.shape[0]
        skipping = set(self._skipping)
        running = [index for index in range(batch) if index not in skipping]
        later_blocks = self._blocks()[1:]
        if not skipping:  # every row recomputes: the blocks' own output, no copy
            output = self._run_rows(later_blocks, running, batch, hidden_states, args, kwargs)
        else:
            output = hidden_states.clone()
            if running:
                output[running] = self._run_rows(later_blocks, running, batch, hidden_states, args, kwargs)
            for index in self._skipping:
                output[index] = hidden_states[index] + self._rows[index].cache.estimate(self._rows[index].step)
        for index in running:
            cache = self._rows[index].cache
            if cache is None:
                continue
            # What the cache reuses: the later blocks' residual, or every block's (magcache).
            start = self._block_inputs[index] if cache.skips_whole_transformer else hidden_states[index]
            residual = output[index] - start
            magnitude = self._magnitude(residual) if cache.skips_whole_transformer else None
            cache.store(self._rows[index].step, self._rows[index].expert, self._first_residuals[index], residual,
                        magnitude)
        return output

    def _blocks(self) -> list[torch.nn.Module]:
        return list(super().__iter__())

    def _run_rows(self, blocks: Sequence[torch.nn.Module], running: list[int], batch: int,
                  hidden_states: torch.Tensor, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        """``blocks`` on the ``running`` rows of the step."""
        subset = _rows_of(running, batch)
        states = hidden_states if len(running) == batch else hidden_states[running]
        block_args = [subset(value) for value in args]
        block_kwargs = {name: subset(value) for name, value in kwargs.items()}
        self.running_rows = None if len(running) == batch else running
        try:
            for block in blocks:
                states = block(states, *block_args, **block_kwargs)
        finally:
            self.running_rows = None
        return states

    def _real(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` without the padding tokens (which carry no signal) a sequence-parallel rank holds."""
        return tokens if self.real_tokens is None else tokens[:, : self.real_tokens(tokens.shape[1])]

    def _magnitude(self, residual: torch.Tensor) -> float:
        """A row's residual magnitude: the sum of its real tokens' norms, over every rank's tokens."""
        real = residual if self.real_tokens is None else residual[: self.real_tokens(residual.shape[0])]
        total = torch.linalg.vector_norm(real.float(), dim=-1).sum().reshape(1)
        return float(total if self.row_sum is None else self.row_sum(total))


def _rows_of(rows: list[int], batch: int):
    def select(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch and len(rows) != batch:
            return value[rows]
        if isinstance(value, tuple):
            return tuple(select(item) for item in value)
        return value

    return select


def install_step_caching(transformer: torch.nn.Module, blocks_attribute: str) -> StepCachingBlocks:
    """Give ``transformer`` a StepCachingBlocks in place of its block list (idempotent)."""
    blocks = getattr(transformer, blocks_attribute)
    if not isinstance(blocks, StepCachingBlocks):
        blocks = StepCachingBlocks(blocks)
        setattr(transformer, blocks_attribute, blocks)
    return blocks
