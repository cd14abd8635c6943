"""What a request asks of step caching: a policy and a threshold, validated once at the edge."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


# magcache: at most this many skipped steps in a row, and the first this fraction of the steps
# always run (MagCache's K and retention ratio; its Wan settings are 2 and 0.2).
MAGCACHE_MAX_SKIPS_IN_A_ROW = 2
MAGCACHE_RETAINED_FRACTION = 0.2


@dataclass(frozen=True)
class PolicyInfo:
    default_threshold: float
    description: str
    # Decides before the first block and, when it skips, skips every block (not only the later ones).
    whole_transformer: bool = False


# threshold, first_block and taylorseer: the relative L1 change of a row's first-block residual
# (since the step that last ran the whole transformer) under which the rest of the transformer
# is skipped; on the toy model 0.1 skips about a quarter of the steps at 42-45 dB PSNR, 0.2
# about half at 27-29 dB. magcache: the error its magnitude ratios predict, summed over the
# steps skipped since the last full one (MagCache's Wan settings are 0.12-0.24); on the toy
# model 0.1 skips 45 % of the steps, every block of them, at 37.5 dB with prompt adherence
# unchanged, which makes it the default (benchmarks.step_cache_quality, RESULTS.md).
POLICIES: dict[str, PolicyInfo] = {
    "first_block": PolicyInfo(
        0.1, "first-block cache: while the first block's residual has changed less than the threshold, "
              "the rest of the transformer's residual from the last full step is reused"),
    "taylorseer": PolicyInfo(
        0.1, "first-block decision, TaylorSeer estimate: a skipped step's residual is extrapolated to first "
              "order from the last two full steps instead of reused"),
    "magcache": PolicyInfo(
        0.1, "magnitude-ratio cache (MagCache class): decides before any block from how the magnitude of the "
             "whole transformer's residual changed between its last two full steps, and skips every block while "
             "the error that ratio predicts, summed over the skipped steps, stays under the threshold (at most "
             f"{MAGCACHE_MAX_SKIPS_IN_A_ROW} steps in a row, none in the first {MAGCACHE_RETAINED_FRACTION:.0%} of "
             "the schedule)",
        whole_transformer=True),
}
DEFAULT_POLICY = "magcache"
MAX_THRESHOLD = 1.0


class StepCacheError(ValueError):
    """A bad step_cache option; ``field`` names the part at fault (step_cache, step_cache.policy, ...)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class StepCacheOptions:
    policy: str = DEFAULT_POLICY
    threshold: float = POLICIES[DEFAULT_POLICY].default_threshold
    # Steps that always run the whole transformer: the first ones (nothing to compare with yet;
    # taylorseer needs two) and the last (the finest detail is drawn there).
    warmup_steps: int = 2

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise StepCacheError("step_cache.policy", f"must be one of {', '.join(POLICIES)} (got {self.policy!r})")
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
                or not 0 < threshold <= MAX_THRESHOLD:
            raise StepCacheError("step_cache.threshold",
                                 f"must be a number above 0 and at most {MAX_THRESHOLD:g} (got {threshold!r})")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 2:
            raise StepCacheError("step_cache.warmup_steps", f"must be an integer of at least 2 (got {self.warmup_steps!r})")

    def describe(self) -> dict[str, Any]:
        return {"policy": self.policy, "threshold": self.threshold}


def parse_step_cache(value: Any, default: StepCacheOptions | None = None) -> StepCacheOptions | None:
    """A request's ``step_cache``: None (the app's default), false (off), true (the default policy and
    threshold) or ``{"policy": ..., "threshold": ...}`` (either may be left out)."""
    if value is None:
        return default
    if value is False:
        return None
    if value is True:
        return StepCacheOptions()
    if not isinstance(value, dict):
        raise StepCacheError("step_cache", "must be true, false or {\"policy\": ..., \"threshold\": ...} "
                                           f"(got {type(value).__name__})")
    unknown = sorted(set(value) - {"policy", "threshold"})
    if unknown:
        raise StepCacheError(f"step_cache.{unknown[0]}", "is not an option (options: policy, threshold)")
    policy = value.get("policy", DEFAULT_POLICY)
    if not isinstance(policy, str) or policy not in POLICIES:
        raise StepCacheError("step_cache.policy", f"must be one of {', '.join(POLICIES)} (got {policy!r})")
    threshold = value.get("threshold", POLICIES[policy].default_threshold)
    return StepCacheOptions(policy=policy, threshold=threshold)
