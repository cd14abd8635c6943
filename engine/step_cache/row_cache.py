"""One row's step cache: what its last full steps left behind, and the decision for this step.

A row is one transformer input of one request (its conditional or its unconditional row):
requests of different policies, thresholds and progress share a batch, and each row
decides for itself.

Two kinds of decision (engine/step_cache/options.py): ``first_block`` and ``taylorseer``
run the first block and decide from its residual (``reuses``); ``magcache`` decides before
any block (``reuses_before_blocks``) from the magnitudes of the whole transformer's
residual at its last two full steps, so a skipped step runs no block at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from engine.step_cache.options import (MAGCACHE_MAX_SKIPS_IN_A_ROW, MAGCACHE_RETAINED_FRACTION, POLICIES,
                                       StepCacheOptions)

# Sums a per-row statistic over the ranks that each hold part of the row's tokens (Ulysses),
# so every rank of the group makes the same decision; identity on one rank.
RowSum = Callable[[torch.Tensor], torch.Tensor]


class RowCache:
    def __init__(self, options: StepCacheOptions):
        self.options = options
        self.first_residual: torch.Tensor | None = None  # the first block's residual at the last full step
        # What the blocks after the first (every block, for magcache) added at the last full step ...
        self.residual: torch.Tensor | None = None
        self.previous_residual: torch.Tensor | None = None  # ... and at the full step before it
        self.full_steps: list[int] = []  # indices of the last two full steps (of this expert)
        self.magnitudes: list[float] = []  # magcache: the residual's magnitude at those steps
        self.expert: int | None = None
        self.reused_steps = 0
        # magcache, since the last full step: the magnitude ratio the skipped steps are predicted
        # to have drifted by, the error summed over them, and how many were skipped.
        self._predicted_ratio = 1.0
        self._predicted_error = 0.0
        self._skipped_in_a_row = 0

    @property
    def skips_whole_transformer(self) -> bool:
        """Whether this row's policy decides before any block (and then skips them all)."""
        return POLICIES[self.options.policy].whole_transformer

    def _may_skip(self, step: int, total_steps: int, expert: int, first_step: int) -> bool:
        return (first_step <= step < total_steps - 1 and self.residual is not None
                and expert == self.expert)  # a two-expert model switched: the other expert's residual means nothing here

    def reuses(self, step: int, total_steps: int, expert: int, first_residual: torch.Tensor,
               row_sum: RowSum | None = None) -> bool:
        """First-block policies: whether this step skips the blocks after the first (the caller then calls ``estimate``)."""
        if (not self._may_skip(step, total_steps, expert, self.options.warmup_steps)
                or (self.options.policy == "taylorseer" and self.previous_residual is None)):
            return False
        change = torch.stack([(first_residual - self.first_residual).abs().sum(),
                              self.first_residual.abs().sum()]).float()
        if row_sum is not None:
            change = row_sum(change)
        return bool(change[0] < self.options.threshold * change[1])

    def reuses_before_blocks(self, step: int, total_steps: int, expert: int) -> bool:
        """magcache: whether this step skips every block (the caller then calls ``estimate``).

        The residual's magnitude changes smoothly over a schedule (MagCache's observation), so
        the per-step ratio between the last two full steps predicts the next steps'. Each
        skipped step adds |1 - the ratio accumulated since the last full step| to the
        predicted error; the step is skipped while that stays under the threshold. MagCache
        reads the ratios from a curve calibrated offline per model; here they are measured on
        the request itself, so any checkpoint works without a calibration run.
        """
        first_step = max(self.options.warmup_steps, math.ceil(MAGCACHE_RETAINED_FRACTION * total_steps))
        if not self._may_skip(step, total_steps, expert, first_step) or len(self.magnitudes) < 2:
            return False
        (before, last), (before_magnitude, last_magnitude) = self.full_steps, self.magnitudes
        per_step = (last_magnitude / before_magnitude) ** (1 / (last - before)) if before_magnitude > 0 else math.inf
        predicted_ratio = self._predicted_ratio * per_step
        predicted_error = self._predicted_error + abs(1 - predicted_ratio)
        if predicted_error >= self.options.threshold or self._skipped_in_a_row >= MAGCACHE_MAX_SKIPS_IN_A_ROW:
            return False
        self._predicted_ratio, self._predicted_error = predicted_ratio, predicted_error
        self._skipped_in_a_row += 1
        return True

    def estimate(self, step: int) -> torch.Tensor:
        """The residual of the skipped blocks, for a skipped ``step``."""
        self.reused_steps += 1
        if self.options.policy != "taylorseer":
            return self.residual
        # TaylorSeer, first order: the residual's change per step between the last two full
        # steps, carried on to this one.
        last, before = self.full_steps[-1], self.full_steps[-2]
        slope = (self.residual - self.previous_residual) / (last - before)
        return self.residual + slope * (step - last)

    def store(self, step: int, expert: int, first_residual: torch.Tensor | None, residual: torch.Tensor,
              magnitude: float | None = None) -> None:
        """After a full step: what the next steps compare with and reuse (``magnitude``: magcache's)."""
        same_expert = self.expert == expert
        self.previous_residual = self.residual if same_expert else None
        self.first_residual, self.residual, self.expert = first_residual, residual, expert
        self.full_steps = [*self.full_steps[-1:], step] if same_expert else [step]
        if magnitude is not None:
            self.magnitudes = [*self.magnitudes[-1:], magnitude] if same_expert else [magnitude]
        self._predicted_ratio, self._predicted_error, self._skipped_in_a_row = 1.0, 0.0, 0
