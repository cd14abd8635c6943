"""What every model stage deployment does on start-up."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from engine.models.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from serve.app_config import AppConfig
from serve.model_stages import served_spec

T = TypeVar("T")

logger = logging.getLogger("ray.serve")


def load_stage_context(app_config: AppConfig, component: str,
                       model: str | None = None) -> tuple[AppConfig, ModelSpec, StagePlacement]:
    """The app's config, the spec of ``model`` (default: the app's first), and where ``component`` runs."""
    if not isinstance(app_config, AppConfig):  # validated once, at the edge (build_app)
        raise TypeError(f"stages are built from an AppConfig (got a {type(app_config).__name__})")
    spec = served_spec(app_config, model or app_config.model_names()[0])
    return app_config, spec, StagePlacement.default_for(component, app_config.resolved_device())


class ModelThread:
    """The one worker thread a replica runs its model work on, with torch's thread count set in it.

    OpenMP thread counts belong to the calling thread: torch.set_num_threads on the event
    loop's thread does not reach asyncio.to_thread's workers, which keep the
    OMP_NUM_THREADS=1 that Ray sets for fractional-CPU actors, whatever the actor asked for.
    One thread per replica also keeps two forwards of one replica from fighting over the
    same cores.
    """

    def __init__(self, torch_threads: int | None):
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="model", initializer=set_torch_threads, initargs=(torch_threads,)
        )

    async def run(self, function: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(function, *args))

    def run_blocking(self, function: Callable[..., T], *args) -> T:
        """For start-up work (a constructor has no event loop to await on) that must see the model thread's settings."""
        return self._executor.submit(function, *args).result()


def set_torch_threads(torch_threads: int | None) -> None:
    """Set torch's thread count for the calling thread (a replica's model or engine thread)."""
    import torch

    # Unset: what Ray gave this actor (OMP_NUM_THREADS follows ray_actor_options.num_cpus),
    # so the stages sharing a machine do not oversubscribe its cores.
    torch.set_num_threads(torch_threads or int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))


def compile_for_default_size(model_thread: ModelThread, what: str, warm_up: Callable[..., object], spec: ModelSpec,
                             *extra) -> None:
    """Run a stage's ``warm_up_compiled(width, height, num_frames, *extra)`` for the model's default request.

    On the model thread: inductor's CPU kernels take the thread count of the thread that compiles them.
    """
    defaults = spec.defaults
    started = time.perf_counter()
    shape = model_thread.run_blocking(warm_up, defaults.width, defaults.height, defaults.num_frames, *extra)
    logger.info("compiled the %s for %dx%d, %d frames (%s) in %.1fs", what, defaults.width, defaults.height,
                defaults.num_frames, shape, time.perf_counter() - started)
