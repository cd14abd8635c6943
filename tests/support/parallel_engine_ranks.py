"""One rank of the multi-rank engine test (tests/multiprocess/test_parallel_engine.py), run in its own process.

Rank 0 runs the continuous-batching engine on a RankGroupExecutor with staggered
arrivals; ranks 1..N-1 mirror it through step messages. Rank 0 also runs every request
alone on an unsplit denoiser and writes the comparison for the test to assert on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from engine.models.model_registry import resolve_model
from engine.parallel.collective_peers import CollectivePeers, run_rank_mirror
from engine.parallel.communication_log import CommunicationLog
from engine.parallel.parallel_dit import parallelize_denoiser
from engine.parallel.process_group import RankGroupAddress, join_rank_group
from engine.parallel.rank_group_executor import RankGroupExecutor, RankMirror
from engine.request_validation import validate_generation
from engine.staged_pipeline import StagedPipeline
from tests.support.engine_runs import run_arrivals
from engine.stages.loading import load_denoiser

# (width, height, frames, steps, guidance, seed, arrival step). 48x48 with one frame is 9
# tokens: uneven over 2 and over 4 ranks, so Ulysses pads and masks.
REQUESTS = [
    (32, 32, 9, 4, 5.0, 1, 0),
    (32, 32, 9, 3, 0.0, 2, 1),
    (48, 48, 1, 3, 3.5, 3, 1),
    (32, 32, 9, 2, 7.5, 4, 2),
    (48, 48, 1, 4, 1.0, 5, 3),
]


def _requests(spec, image: bytes | None):
    """Image-to-video models get the image on every request; models that run both tasks
    (Wan 2.2 TI2V) on every other one, so both kinds of request run on the gang."""
    requests = []
    multiple = spec.limits.size_multiple
    for index, (width, height, frames, steps, guidance, seed, _) in enumerate(REQUESTS):
        if width % multiple or height % multiple:  # Wan 2.2's 16x VAE: 96x32 is its 3 uneven tokens
            width, height = 3 * multiple, multiple
        raw = {"prompt": f"prompt {index % 2}", "width": width, "height": height, "num_frames": frames,
               "num_inference_steps": steps, "guidance_scale": guidance, "seed": seed}
        if image is not None and (spec.needs_image or index % 2):
            raw["image"] = image
        # Step caching composes with both modes: the same steps reused as on one rank, by a
        # policy that skips every block (r0) and one that runs the first block to decide (r4).
        if index == 0:
            raw["step_cache"] = {"policy": "magcache", "threshold": 1.0}
        elif index == 4:
            raw["step_cache"] = {"policy": "first_block", "threshold": 1.0}
        requests.append(validate_generation(raw, spec, request_id=f"r{index}"))
    return requests


def main(rank: int, world_size: int, port: int, cache_dir: str, output: str, models: str) -> None:
    torch.set_num_threads(1)
    join_rank_group(RankGroupAddress("127.0.0.1", port, world_size), rank, "cpu", with_deepspeed=True)
    report = {}
    for model in models.split(","):
        spec = resolve_model(model, Path(cache_dir))
        if rank == 0:
            from tests.support.images import image_bytes

            pipeline = StagedPipeline.load(spec)
            image = image_bytes(40, 40) if spec.is_image_to_video else None
            tasks = [pipeline.denoise_task(request) for request in _requests(spec, image)]
            alone_runs = {task.request_id: pipeline.denoiser.denoise(task) for task in tasks}
            alone = {request_id: run.latents for request_id, run in alone_runs.items()}
        for mode in ("tensor", "sequence"):
            denoiser = load_denoiser(spec)
            log = CommunicationLog()
            parallelize_denoiser(denoiser, mode, log)  # both experts of a two-expert model
            if rank != 0:
                run_rank_mirror(RankMirror(denoiser))
                continue
            peers = CollectivePeers()
            run = run_arrivals(RankGroupExecutor(denoiser, peers, log),
                               [(task, arrival[-1]) for arrival, task in zip(REQUESTS, tasks)])
            peers.close()
            results = {rid: latents.latents for rid, latents in run.finished.items()}
            reused = {rid: latents.reused_steps for rid, latents in run.finished.items()}
            batch_sizes, step_bytes = run.batch_sizes, run.step_bytes
            latent_diff = max((results[rid] - alone[rid]).abs().max().item() for rid in alone)
            frame_diff = max(
                int(np.abs(pipeline.vae_decoder.decode_latents(results[rid]).astype(int)
                           - pipeline.vae_decoder.decode_latents(alone[rid]).astype(int)).max())
                for rid in alone
            )
            report[f"{model}/{mode}"] = {"finished": sorted(results), "latent_max_abs_diff": latent_diff,
                                         "frame_max_abs_diff": frame_diff, "batch_sizes": batch_sizes,
                                         "step_bytes": step_bytes, "reused_steps": reused,
                                         "reused_steps_alone": {rid: run.reused_steps
                                                                for rid, run in alone_runs.items()},
                                         "experts_used": sorted({e for task in tasks
                                                                 for e in denoiser.start(task).experts})}
    if rank == 0:
        Path(output).write_text(json.dumps(report))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
