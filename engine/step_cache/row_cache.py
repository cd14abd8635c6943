"""One row's step cache: what its last full steps left behind, and the decision for this step.

A row is one transformer input of one request (its conditional or its unconditional row):
requests of different policies, thresholds and progress share a batch, and each row
decides for itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engine.step_cache.options import StepCacheOptions

# Sums a per-row statistic over the ranks that each hold part of the row's tokens (Ulysses),
# so every rank of the group makes the same decision; identity on one rank.
RowSum = Callable[[torch.Tensor], torch.Tensor]


class RowCache:
    def __init__(self, options: StepCacheOptions):
        self.options = options
        self.first_residual: torch.Tensor | None = None  # the first block's residual at the last full step
        self.residual: torch.Tensor | None = None  # what the other blocks added at the last full step
        self.previous_residual: torch.Tensor | None = None  # ... and at the full step before it
        self.full_steps: list[int] = []  # indices of the last two full steps
        self.expert: int | None = None
        self.reused_steps = 0

    def reuses(self, step: int, total_steps: int, expert: int, first_residual: torch.Tensor,
               row_sum: RowSum | None = None) -> bool:
        """Whether this step skips the blocks after the first (the caller then calls ``estimate``)."""
        if (step < self.options.warmup_steps or step >= total_steps - 1 or self.residual is None
                or expert != self.expert  # a two-expert model switched: the other expert's residual means nothing here
                or (self.options.policy == "taylorseer" and self.previous_residual is None)):
            return False
        change = torch.stack([(first_residual - self.first_residual).abs().sum(),
                              self.first_residual.abs().sum()]).float()
        if row_sum is not None:
            change = row_sum(change)
        return bool(change[0] < self.options.threshold * change[1])

    def estimate(self, step: int) -> torch.Tensor:
        """The residual of the blocks after the first, for a skipped ``step``."""
        self.reused_steps += 1
        if self.options.policy == "first_block":
            return self.residual
        # TaylorSeer, first order: the residual's change per step between the last two full
        # steps, carried on to this one.
        last, before = self.full_steps[-1], self.full_steps[-2]
        slope = (self.residual - self.previous_residual) / (last - before)
        return self.residual + slope * (step - last)

    def store(self, step: int, expert: int, first_residual: torch.Tensor, residual: torch.Tensor) -> None:
        """After a full step: what the next steps compare with and reuse."""
        self.previous_residual = self.residual if self.expert == expert else None
        self.first_residual, self.residual, self.expert = first_residual, residual, expert
        self.full_steps = [*self.full_steps[-1:], step] if self.previous_residual is not None else [step]
