"""The one thread each replica runs its model work on: torch runs on several threads there, and only there."""

from __future__ import annotations

import asyncio
import threading

import torch

from serve.deployments.model_stage import ModelThread


def _threads_of_a_new_thread() -> int:
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_the_model_thread_keeps_its_torch_threads_and_every_other_thread_runs_torch_on_one():
    before = torch.get_num_threads()
    try:
        model_thread = ModelThread(torch_threads=2)
        try:
            assert model_thread.run_blocking(torch.get_num_threads) == 2
            # The replica's other threads, the caller's and those that first run torch later,
            # get one: idle OpenMP workers of theirs would slow the model thread's small ops.
            assert torch.get_num_threads() == 1
            assert _threads_of_a_new_thread() == 1
            assert asyncio.run(model_thread.run(torch.get_num_threads)) == 2
        finally:
            model_thread.close()
    finally:
        torch.set_num_threads(before)
