"""Classifier-free-guidance parallelism: a step's conditional rows on one rank, its unconditional rows on another.

With guidance, every request runs twice a step (with its prompt, and with the negative
prompt) and the two predictions are combined after the forward. Until then the two halves
of a step's batch are independent, so a cfg group of 2 ranks shares them out: cfg index 0
runs the conditional rows, cfg index 1 the unconditional rows, and the two all-gather
their outputs, so that every rank holds the full batch output in the original row order
(as tensor and Ulysses parallelism hand every rank the full output) and runs the same
guidance and scheduler step on it.

The DiT is not touched, so this works for every family. With Ulysses inside each cfg
index (``cfg 2 x sequence N``, engine/parallel/parallel_layout.py) the ranks of one index
split their own rows' tokens among themselves, and the output is gathered across the cfg
group of ranks at the same position in both indices.

A row stays on its side for all its steps (conditional rows always on cfg index 0): a
step-cached row's cache (engine/step_cache) lives on the rank that computes the row, and
its skip decision is made there.

The sides seldom hold the same number of rows (a request without guidance has no
unconditional row): each pads its output to the larger side's row count for the
all-gather and the padding is cut off. A side with no rows in a step (no request of the
batch uses guidance) runs nothing but still takes part, contributing zeros; in that case
only, the ranks first gather a small descriptor of the output's row shape and dtype,
which the empty side cannot know.

Per step, each rank hands the cfg group (payload per rank):
    max(conditional rows, unconditional rows) x output values per row x dtype_bytes   all-gather of the output
    + DESCRIPTOR_BYTES                                     when one side has no rows (one more all-gather)
``cfg_parallel_step_bytes`` computes it from a model config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from engine.parallel.communication_log import CommunicationLog

ALL_GATHER = "all_gather"
CFG_DEGREES = (1, 2)

# The descriptor a side with rows sends when the other has none: [row dims, dtype code, dims...].
_MAX_ROW_DIMS = 8
_DESCRIPTOR_LENGTH = 2 + _MAX_ROW_DIMS
_OUTPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
DESCRIPTOR_BYTES = _DESCRIPTOR_LENGTH * torch.int64.itemsize

RunRows = Callable[[dict[str, Any], list | None], torch.Tensor]


def _config_field(config: Any, name: str, default: Any = None) -> Any:
    # diffusers' FrozenDict is a Mapping; a plain namespace or dataclass works too.
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def check_cfg_parallel_degree(config: Any, degree: int) -> None:
    """CFG parallelism has two sides to share out, whatever the model."""
    if degree not in CFG_DEGREES:
        raise ValueError(f"parallel.cfg must be 1 or 2 (one conditional and one unconditional side), not {degree}")


def output_values_per_token(config: Any) -> int:
    """Values of the DiT's output per video token: out channels x patch volume (Wan: 16 x 1x2x2; LTX: 128 x 1)."""
    out_channels = _config_field(config, "out_channels") or _config_field(config, "in_channels")
    patch = _config_field(config, "patch_size", 1)
    if isinstance(patch, (tuple, list)):
        volume = math.prod(patch)
    else:  # LTX: a spatial patch size and a separate temporal one
        volume = patch * patch * (_config_field(config, "patch_size_t") or 1)
    return out_channels * volume


def cfg_parallel_step_bytes(config: Any, conditional_rows: int, unconditional_rows: int, tokens: int,
                            dtype_bytes: int) -> int:
    """Payload bytes one rank hands the cfg group in one step (the same on both sides).

    ``tokens`` is the video sequence after patching. Both sides contribute the larger
    side's row count of output rows (padding included); the DiT's own collectives, if
    Ulysses splits it inside each cfg index, come on top (``sequence_parallel_step_bytes``
    with this rank's side's rows).
    """
    if conditional_rows < 0 or unconditional_rows < 0 or conditional_rows + unconditional_rows == 0:
        raise ValueError(f"a step has rows: got {conditional_rows} conditional, {unconditional_rows} unconditional")
    payload = max(conditional_rows, unconditional_rows) * tokens * output_values_per_token(config) * dtype_bytes
    if min(conditional_rows, unconditional_rows) == 0:
        payload += DESCRIPTOR_BYTES
    return payload


def rows_of(inputs: dict[str, Any], rows: Sequence[int], total: int) -> dict[str, Any]:
    """``inputs`` for a subset of the rows: per-row tensors (first dimension ``total``) selected, the rest shared."""
    if list(rows) == list(range(total)):
        return inputs
    selected = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == total:
            value = value.index_select(0, torch.tensor(rows, device=value.device))
        selected[name] = value
    return selected


def _device_of(inputs: dict[str, Any]) -> torch.device:
    return next(value.device for value in inputs.values() if isinstance(value, torch.Tensor))


class CfgRowSplit:
    """The denoiser's ``row_split`` on a rank of a cfg group of 2 (engine/stages/denoiser.py RowSplit)."""

    def __init__(self, group: dist.ProcessGroup, cfg_index: int, log: CommunicationLog | None = None):
        if cfg_index not in (0, 1):
            raise ValueError(f"a cfg group has indices 0 (conditional rows) and 1 (unconditional rows), not {cfg_index}")
        if dist.get_world_size(group) != 2:
            raise ValueError(f"a cfg group has 2 ranks, not {dist.get_world_size(group)}")
        self.cfg_index = cfg_index
        self._group = group
        self._log = log

    def forward(self, run: RunRows, inputs: dict[str, Any], caching: list | None,
                conditional: Sequence[bool]) -> torch.Tensor:
        total = len(conditional)
        sides = ([row for row, is_conditional in enumerate(conditional) if is_conditional],
                 [row for row, is_conditional in enumerate(conditional) if not is_conditional])
        mine = sides[self.cfg_index]
        local = None
        if mine:
            local = run(rows_of(inputs, mine, total), self._caching_of(caching, mine))
        device = local.device if local is not None else _device_of(inputs)
        row_shape, dtype = self._row_layout(local, device, exchange=not (sides[0] and sides[1]))
        padded_rows = max(len(side) for side in sides)
        sent = self._padded(local, padded_rows, row_shape, dtype, device)
        gathered = self._all_gather(sent)
        if local is not None:
            gathered[self.cfg_index] = local  # this side's rows as computed (the gathered copy is the same bytes)
        output = torch.empty((total, *row_shape), dtype=dtype, device=device)
        for side, rows in zip(sides, gathered):
            if side:
                output.index_copy_(0, torch.tensor(side, device=device), rows[: len(side)])
        return output

    @staticmethod
    def _caching_of(caching: list | None, rows: Sequence[int]) -> list | None:
        """This side's rows of the step-caching list; None when none of them caches (as the denoiser passes it)."""
        if caching is None:
            return None
        part = [caching[row] for row in rows]
        return None if all(row.cache is None for row in part) else part

    def _row_layout(self, local: torch.Tensor | None, device: torch.device,
                    exchange: bool) -> tuple[tuple[int, ...], torch.dtype]:
        """One output row's shape and dtype; gathered from the side with rows when one side has none."""
        if not exchange:
            return tuple(local.shape[1:]), local.dtype
        descriptor = torch.full((_DESCRIPTOR_LENGTH,), -1, dtype=torch.int64, device=device)
        if local is not None:
            row_shape = tuple(local.shape[1:])
            if len(row_shape) > _MAX_ROW_DIMS or local.dtype not in _OUTPUT_DTYPES:
                raise ValueError(f"cfg parallel gathers outputs of at most {_MAX_ROW_DIMS} dimensions per row in "
                                 f"{_OUTPUT_DTYPES}, not {row_shape} {local.dtype}")
            descriptor[0] = len(row_shape)
            descriptor[1] = _OUTPUT_DTYPES.index(local.dtype)
            descriptor[2 : 2 + len(row_shape)] = torch.tensor(row_shape)
        known = next(entry for entry in self._all_gather(descriptor) if entry[0] >= 0).tolist()
        return tuple(known[2 : 2 + known[0]]), _OUTPUT_DTYPES[known[1]]

    @staticmethod
    def _padded(local: torch.Tensor | None, rows: int, row_shape: tuple[int, ...], dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
        if local is None:
            return torch.zeros((rows, *row_shape), dtype=dtype, device=device)
        if local.shape[0] < rows:
            local = torch.cat([local, local.new_zeros((rows - local.shape[0], *row_shape))])
        return local.contiguous()

    def _all_gather(self, sent: torch.Tensor) -> list[torch.Tensor]:
        if self._log is not None:
            self._log.record(ALL_GATHER, sent.numel() * sent.element_size())
        gathered = [torch.empty_like(sent) for _ in range(2)]
        dist.all_gather(gathered, sent, group=self._group)
        return gathered
