"""The transformer's block list, able to skip its later blocks for some rows of a batched step.

``install_step_caching(transformer, "blocks")`` swaps the model's ``ModuleList`` of blocks
for a ``StepCachingBlocks`` holding the same modules under the same names (weights, hooks
and the model's own forward are untouched). Iterated outside a caching step it yields the
blocks themselves, so a forward without step caching is the model's own, op for op. During
a caching step (``caching_rows``) the model's ``for block in self.blocks`` loop gets two
callables instead: the first block, which records every row's first-block residual and
decides which rows skip, then the other blocks, run on the rows that recompute only, with
the skipped rows' residual reused or estimated (engine/step_cache/row_cache.py).

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
        self._first_outputs: torch.Tensor | None = None
        self._first_residuals: list[torch.Tensor | None] = []
        # Set by the sequence-parallel split, where each rank holds part of every row's tokens:
        # sums a statistic over the ranks, and how many of this rank's tokens are real (the
        # rest is padding to a multiple of the ranks) given how many it holds.
        self.row_sum: RowSum | None = None
        self.real_tokens: Callable[[int], int] | None = None
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
            self._rows, self._first_outputs, self._first_residuals, self._skipping = None, None, [], []

    def __iter__(self) -> Iterator[Any]:
        if self._rows is None or len(self) < 2:
            return super().__iter__()
        return iter((self._run_first_block, self._run_other_blocks))

    def _run_first_block(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # The block's input as the block saw it: a sequence-parallel pre-hook cuts it to this
        # rank's tokens on the way in, so it is read by a hook, after the cut.
        seen: list[torch.Tensor] = []
        handle = self[0].register_forward_hook(
            lambda module, inputs, kw, result: seen.append(inputs[0] if inputs else kw["hidden_states"]),
            with_kwargs=True)
        try:
            output = self[0](hidden_states, *args, **kwargs)
        finally:
            handle.remove()
        residuals = output - seen[0]
        if self.real_tokens is not None:  # padding tokens carry no signal: compared without them
            residuals = residuals[:, : self.real_tokens(residuals.shape[1])]
        self._first_outputs = output
        self._first_residuals = [residuals[index] if row.cache is not None else None
                                 for index, row in enumerate(self._rows)]
        self._skipping = [index for index, row in enumerate(self._rows)
                          if row.cache is not None and row.cache.reuses(row.step, row.total_steps, row.expert,
                                                                        residuals[index], self.row_sum)]
        return output

    def _run_other_blocks(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        batch = hidden_states.shape[0]
        skipping = set(self._skipping)
        running = [index for index in range(batch) if index not in skipping]
        if not skipping:  # every row recomputes: the blocks' own output, no copy
            return self._run_rows(running, batch, hidden_states, args, kwargs)
        output = hidden_states.clone()
        if running:
            output[running] = self._run_rows(running, batch, hidden_states, args, kwargs)
        for index in self._skipping:
            output[index] = hidden_states[index] + self._rows[index].cache.estimate(self._rows[index].step)
        return output

    def _run_rows(self, running: list[int], batch: int, hidden_states: torch.Tensor, args: tuple,
                  kwargs: dict[str, Any]) -> torch.Tensor:
        """The blocks after the first on the ``running`` rows; each caching row stores what they added."""
        subset = _rows_of(running, batch)
        states = hidden_states if len(running) == batch else hidden_states[running]
        block_args = [subset(value) for value in args]
        block_kwargs = {name: subset(value) for name, value in kwargs.items()}
        self.running_rows = None if len(running) == batch else running
        try:
            for block in list(super().__iter__())[1:]:
                states = block(states, *block_args, **block_kwargs)
        finally:
            self.running_rows = None
        for position, index in enumerate(running):
            row = self._rows[index]
            if row.cache is not None:
                row.cache.store(row.step, row.expert, self._first_residuals[index],
                                states[position] - hidden_states[index])
        return states


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
