"""Autoscaling the Denoiser on the work waiting inside its batching engines.

Serve's default policy counts ongoing requests per replica. A batching Denoiser holds
many requests at once, and what matters is how long its engine needs to drain them:
each replica reports ``engine_step_batches`` (batched steps left for every request it
holds, see DenoiseScheduler.load) through ``record_autoscaling_stats``, and this policy
asks for enough replicas that none has more than ``target_backlog_steps`` of them.

Knobs (the Denoiser's ``autoscaling_config`` in deploy/videoserve.yaml):
- ``policy.policy_kwargs.target_backlog_steps``: batched steps of backlog one replica
  may hold (its queueing delay is about that many step times);
- ``min_replicas`` / ``max_replicas`` / ``upscale_delay_s`` / ``downscale_delay_s``: Serve
  applies them around this policy as for its own.
"""

from __future__ import annotations

import math
from typing import Any

POLICY_IMPORT_PATH = "serve.denoiser_autoscaling:denoiser_autoscaling_policy"
BACKLOG_METRIC = "engine_step_batches"
DEFAULT_TARGET_BACKLOG_STEPS = 40.0


def desired_replicas(backlog_by_replica: dict[Any, float], current_replicas: int, target_backlog_steps: float) -> int:
    if target_backlog_steps <= 0:
        raise ValueError(f"target_backlog_steps: must be positive (got {target_backlog_steps})")
    if not backlog_by_replica:  # no report yet: keep what runs
        return current_replicas
    return max(1, math.ceil(sum(backlog_by_replica.values()) / target_backlog_steps))


def denoiser_autoscaling_policy(ctx, target_backlog_steps: float = DEFAULT_TARGET_BACKLOG_STEPS):
    metrics = ctx.aggregated_metrics or {}
    backlog = metrics.get(BACKLOG_METRIC, {})
    return desired_replicas(backlog, ctx.current_num_replicas, target_backlog_steps), ctx.policy_state
