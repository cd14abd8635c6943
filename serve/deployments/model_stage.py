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
    """The app's config, the spec of ``model`` (default: the app's first), and where ``component`` runs.

    Called first by a stage's constructor, so its models load with torch single-threaded on the
    constructor's thread (``keep_torch_single_threaded``).
    """
    if not isinstance(app_config, AppConfig):  # validated once, at the edge (build_app)
        raise TypeError(f"stages are built from an AppConfig (got a {type(app_config).__name__})")
    keep_torch_single_threaded()
    spec = served_spec(app_config, model or app_config.model_names()[0])
    return app_config, spec, StagePlacement.default_for(component, app_config.resolved_device())


def keep_torch_single_threaded() -> None:
    """torch on one thread in the calling thread, and in every thread that first runs torch later.

    Only a replica's model threads (a ModelThread, the denoise engine's step thread) run
    torch on several OpenMP threads. libgomp keeps the worker threads of every thread that
    ever ran a parallel region, and once a process holds more of them than it has cores it
    cuts its spin-wait from milliseconds to ~100 spins: each of a DiT's many small ops then
    waits on a futex wake-up. Models loaded on a constructor's thread with two threads made
    the toy model's denoising 2.2x slower on the engine's thread (1.31 s against 0.60 s,
    RESULTS.md, 2026-12-06); loaded single-threaded, it runs as fast there as on a lone
    main thread.
    """
    import torch

    # torch applies its process-wide count to a thread when that thread first runs a parallel
    # op: the model threads have pinned theirs already (set_torch_threads), every other
    # thread gets this one.
    torch.set_num_threads(1)


class ModelThread:
    """The one worker thread a replica runs its model work on, with torch's thread count set in it.

    OpenMP thread counts belong to the calling thread: torch.set_num_threads on the event
    loop's thread does not reach asyncio.to_thread's workers, which keep the
    OMP_NUM_THREADS=1 that Ray sets for fractional-CPU actors, whatever the actor asked for.
    One thread per replica also keeps two forwards of one replica from fighting over the
    same cores. The thread starts (and pins its count) here, and every other thread of the
    replica is left single-threaded (keep_torch_single_threaded).
    """

    def __init__(self, torch_threads: int | None):
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="model", initializer=set_torch_threads, initargs=(torch_threads,)
        )
        self._executor.submit(int).result()  # start the thread: its initializer pins its torch threads
        keep_torch_single_threaded()

    async def run(self, function: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(function, *args))

    def run_blocking(self, function: Callable[..., T], *args) -> T:
        """For start-up work (a constructor has no event loop to await on) that must see the model thread's settings."""
        return self._executor.submit(function, *args).result()

    def close(self) -> None:
        """End the thread (and its OpenMP workers), for a thread used at start-up only."""
        self._executor.shutdown(wait=True)


def set_torch_threads(torch_threads: int | None) -> None:
    """Set torch's thread count for the calling thread (a replica's model or engine thread), for good."""
    import torch

    # Unset: what Ray gave this actor (OMP_NUM_THREADS follows ray_actor_options.num_cpus),
    # so the stages sharing a machine do not oversubscribe its cores.
    torch.set_num_threads(torch_threads or int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1))
    # Pinned: torch re-applies its process-wide count to a thread at the thread's first
    # parallel op, and get_num_threads() is one; later keep_torch_single_threaded() calls
    # elsewhere then leave this thread's count alone.
    torch.get_num_threads()


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
