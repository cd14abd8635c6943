"""The one thread each replica runs its model work on: torch's thread count is set there, and only there."""

from __future__ import annotations

import asyncio

import torch

from serve.deployments.model_stage import ModelThread


def test_torch_threads_are_set_in_the_model_thread_only():
    main_threads = torch.get_num_threads()
    model_thread = ModelThread(torch_threads=1 if main_threads > 1 else 2)
    try:
        inside = model_thread.run_blocking(torch.get_num_threads)
        assert inside == (1 if main_threads > 1 else 2)
        assert torch.get_num_threads() == main_threads
        assert asyncio.run(model_thread.run(torch.get_num_threads)) == inside
    finally:
        model_thread._executor.shutdown()
