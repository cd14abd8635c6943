"""One rank of the CFG-parallel gang tests (tests/multiprocess/test_cfg_parallel.py), run in its own process.

``python -m tests.support.cfg_parallel_ranks RANK WORLD_SIZE PORT CACHE_DIR OUTPUT SCENARIO MODELS``

- ``gang``: per model, the denoiser is split with the gang's layout ("cfg" on 2 ranks,
  "cfg+sequence" on 4). First (on ``tiny``) the row split alone: batches of conditional and
  unconditional rows (one side empty in one of them) through ``row_split.forward`` against
  the unsplit transformer, with the payload the log counted and the rows each rank ran.
  Then the continuous-batching engine: rank 0 runs it with staggered arrivals (requests
  with and without guidance, one with a token count Ulysses pads; on ``tiny`` also a set
  with step-cached requests), the others mirror it; rank 0 compares every request with the
  same request run alone on an unsplit denoiser.
- ``rank-dies``: a gang of 2 (cfg) where rank 1 exits while a step is in flight; rank 0
  reports what its engine and executor did next.

Every rank writes ``OUTPUT.rankR.json``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from engine.batching.denoise_engine import DenoiseEngine, DroppedEvent, FinishedEvent, StepEvent
from engine.batching.denoise_scheduler import SchedulerConfig
from engine.models.model_registry import resolve_model
from engine.parallel.cfg_parallel import cfg_parallel_step_bytes
from engine.parallel.collective_peers import CollectivePeers, run_rank_mirror
from engine.parallel.communication_log import CommunicationLog
from engine.parallel.parallel_dit import parallelize_denoiser
from engine.parallel.parallel_layout import ParallelLayout
from engine.parallel.process_group import RankGroupAddress, join_rank_group
from engine.parallel.rank_group_executor import RankGroupExecutor, RankMirror
from engine.parallel.sequence_parallel import sequence_parallel_step_bytes
from engine.request_validation import validate_generation
from engine.staged_pipeline import StagedPipeline
from engine.stages.loading import load_denoiser
from tests.support.engine_runs import run_arrivals

LAYOUTS = {2: "cfg", 4: "cfg+sequence"}
# (width, height, frames, steps, guidance, seed, arrival step). Guidance 0 and 1 run no
# unconditional row: the two sides of a step differ in rows, and a step of only such
# requests leaves the unconditional side empty. 48x48 with one frame is 9 tokens: uneven
# over 2 ranks, so Ulysses pads.
REQUESTS = [
    (32, 32, 9, 4, 5.0, 1, 0),
    (32, 32, 9, 3, 0.0, 2, 0),
    (48, 48, 1, 3, 3.5, 3, 1),
    (32, 32, 9, 2, 7.5, 4, 2),
    (48, 48, 1, 4, 1.0, 5, 3),
    (32, 32, 9, 2, 0.0, 6, 20),  # alone by then: steps whose unconditional side is empty
]
# Step-cached requests (threshold 0.3 reuses steps on the tiny presets) next to uncached
# ones, with and without guidance: (steps, guidance, seed, arrival step, step_cache).
CACHED_REQUESTS = [
    (12, 5.0, 11, 0, {"policy": "first_block", "threshold": 0.3}),
    (10, 0.0, 12, 0, {"policy": "magcache", "threshold": 0.3}),
    (12, 4.0, 13, 1, None),
    (10, 6.0, 14, 2, {"policy": "taylorseer", "threshold": 0.3}),
]
# Conditional flags of the row-split batches: 2 to 1, 1 to 1, and no unconditional row.
ROW_PATTERNS = ((True, True, False), (True, False), (True, True))
FORWARD_LATENT_SIZES = ((3, 4, 4), (1, 6, 6))  # 12 tokens; 9 (uneven over 2)
TEXT_TOKENS = 512
FP32_BYTES = 4


def _requests(spec, image: bytes | None):
    requests = []
    multiple = spec.limits.size_multiple
    for index, (width, height, frames, steps, guidance, seed, _) in enumerate(REQUESTS):
        if spec.family == "ltx":
            # Packed LTX latents of two video sizes can have one shape, hence one batch key, and a
            # batch runs with its first request's size: every LTX request here has one size.
            width, height, frames = 32, 32, 9
        elif width % multiple or height % multiple:  # Wan 2.2's 16x VAE
            width, height = 3 * multiple, multiple
        raw = {"prompt": f"prompt {index % 2}", "width": width, "height": height, "num_frames": frames,
               "num_inference_steps": steps, "guidance_scale": guidance, "seed": seed}
        if image is not None and (spec.needs_image or index % 2):
            raw["image"] = image
        requests.append((validate_generation(raw, spec, request_id=f"r{index}"), REQUESTS[index][-1]))
    return requests


def _cached_requests(spec):
    requests = []
    for index, (steps, guidance, seed, arrival, step_cache) in enumerate(CACHED_REQUESTS):
        raw = {"prompt": f"prompt {index % 2}", "width": 32, "height": 32, "num_frames": 9,
               "num_inference_steps": steps, "guidance_scale": guidance, "seed": seed}
        if step_cache is not None:
            raw["step_cache"] = step_cache
        requests.append((validate_generation(raw, spec, request_id=f"c{index}"), arrival))
    return requests


def _forward_inputs(config, rows: int, latent_size: tuple[int, int, int]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(rows * 100 + sum(latent_size))
    return {
        "hidden_states": torch.randn(rows, config.in_channels, *latent_size, generator=generator),
        "timestep": torch.linspace(999.0, 500.0, rows),
        "encoder_hidden_states": torch.randn(rows, TEXT_TOKENS, config.text_dim, generator=generator),
    }


def _row_split_cases(spec, denoiser, log: CommunicationLog, layout: ParallelLayout, rank: int) -> list[dict]:
    """The gang's row split on fixed batches against the unsplit transformer (each rank computes the reference)."""
    reference = load_denoiser(spec).transformer
    config = reference.config
    cases = []
    for latent_size in FORWARD_LATENT_SIZES:
        tokens = int(np.prod([length // patch for length, patch in zip(latent_size, config.patch_size)]))
        for pattern in ROW_PATTERNS:
            inputs = _forward_inputs(config, len(pattern), latent_size)
            with torch.no_grad():
                expected = reference(**inputs, return_dict=False)[0]
                ran: list[int] = []

                def run(part, caching):
                    ran.append(part["hidden_states"].shape[0])
                    return denoiser.transformer(**part, return_dict=False)[0]

                log.take()
                output = denoiser.row_split.forward(run, inputs, None, list(pattern))
            volume = log.take()
            side_rows = sum(1 for conditional in pattern if conditional == (layout.cfg_index(rank) == 0))
            expected_bytes = cfg_parallel_step_bytes(config, sum(pattern), len(pattern) - sum(pattern), tokens,
                                                     FP32_BYTES)
            if layout.sequence > 1 and side_rows:
                expected_bytes += sequence_parallel_step_bytes(config, side_rows, tokens, FP32_BYTES, layout.sequence)
            cases.append({
                "pattern": list(pattern), "latent_size": list(latent_size), "tokens": tokens,
                "max_abs_diff": (output - expected).abs().max().item(), "shape_matches": output.shape == expected.shape,
                "rows_run": ran, "side_rows": side_rows, "logged_bytes": volume.total_bytes,
                "logged_calls": volume.calls_by_kind, "expected_bytes": expected_bytes,
            })
    return cases


def _frames(pipeline, latents) -> np.ndarray:
    # LTX's timestep-conditioned VAE draws noise from the request's generator state.
    return pipeline.vae_decoder.decode_latents(latents.latents, latents.generator_state)


def _compare(pipeline, results, alone) -> dict:
    return {
        "finished": sorted(results),
        "latent_abs_diff": {rid: (results[rid].latents - alone[rid].latents).abs().max().item() for rid in alone},
        "latent_max_abs_diff": max((results[rid].latents - alone[rid].latents).abs().max().item() for rid in alone),
        "frame_max_abs_diff": max(
            int(np.abs(_frames(pipeline, results[rid]).astype(int) - _frames(pipeline, alone[rid]).astype(int)).max())
            for rid in alone),
        "reused_steps": {rid: results[rid].reused_steps for rid in sorted(results)},
        "reused_steps_alone": {rid: alone[rid].reused_steps for rid in sorted(alone)},
    }


def gang(rank: int, world_size: int, models: list[str], cache_dir: Path) -> dict:
    layout = ParallelLayout.from_mode(LAYOUTS[world_size], world_size)
    report = {}
    for model in models:
        spec = resolve_model(model, cache_dir)
        runs = {"requests": None}
        if model == "tiny":  # step-cached rows decide on the rank that computes them (Ulysses: over its group)
            runs["step-cached"] = None
        if rank == 0:
            from tests.support.images import image_bytes

            pipeline = StagedPipeline.load(spec)
            image = image_bytes(40, 40) if spec.is_image_to_video else None
            runs["requests"] = [(pipeline.denoise_task(request), arrival) for request, arrival in _requests(spec, image)]
            if "step-cached" in runs:
                runs["step-cached"] = [(pipeline.denoise_task(request), arrival)
                                       for request, arrival in _cached_requests(spec)]
        denoiser = load_denoiser(spec)
        log = CommunicationLog()
        parallelize_denoiser(denoiser, layout, log)  # both experts of a two-expert model
        if model == "tiny":  # Wan's inputs, built here; every model's rows go through the engine below
            report[f"{model}/row-split"] = _row_split_cases(spec, denoiser, log, layout, rank)
        for name, arrivals in runs.items():
            if rank != 0:
                run_rank_mirror(RankMirror(denoiser))
                continue
            alone = {task.request_id: pipeline.denoiser.denoise(task) for task, _ in arrivals}
            peers = CollectivePeers()
            run = run_arrivals(RankGroupExecutor(denoiser, peers, log), arrivals)
            peers.close()
            report[f"{model}/{name}"] = {**_compare(pipeline, run.finished, alone), "batch_sizes": run.batch_sizes,
                                         "step_bytes": run.step_bytes,
                                         "experts_used": sorted({e for task, _ in arrivals
                                                                 for e in denoiser.start(task).experts})}
    return report


def rank_dies(rank: int, cache_dir: Path) -> dict:
    """Rank 1 exits on its third step message, before that step's collectives: rank 0 is left waiting in them."""
    spec = resolve_model("tiny", cache_dir)
    denoiser = load_denoiser(spec)
    log = CommunicationLog()
    parallelize_denoiser(denoiser, "cfg", log)
    if rank != 0:
        mirror = RankMirror(denoiser)
        applied = 0
        original = mirror.apply

        def apply(message):
            nonlocal applied
            applied += 1
            if applied == 3:
                os._exit(17)  # dies mid-step, as a killed rank actor does
            original(message)

        mirror.apply = apply
        run_rank_mirror(mirror)
        return {}
    pipeline = StagedPipeline.load(spec)
    arrivals = [(pipeline.denoise_task(request), arrival) for request, arrival in _requests(spec, None)]
    executor = RankGroupExecutor(denoiser, CollectivePeers(), log)
    engine = DenoiseEngine(executor, SchedulerConfig(max_batch_size=4))
    for task, _ in arrivals:
        engine.add_request(task)
    events = []
    while engine.has_unfinished():
        events += engine.step()
    # A failed step's requests are dropped as failed, then once more as aborted by the next step.
    failed = {event.request_id: event.reason for event in events
              if isinstance(event, DroppedEvent) and event.reason.startswith("failed")}
    later = None
    try:
        executor.execute([denoiser.start(arrivals[0][0])])
    except Exception as error:
        later = repr(error)
    return {
        "step_events": sum(1 for event in events if isinstance(event, StepEvent)),
        "finished": sorted(event.request_id for event in events if isinstance(event, FinishedEvent)),
        "failed": failed,
        "broken": executor.broken,
        "failure": repr(executor.failure),
        "later_step": later,
    }


def main(rank: int, world_size: int, port: int, cache_dir: str, output: str, scenario: str, models: str) -> None:
    torch.set_num_threads(1)
    layout = ParallelLayout.from_mode(LAYOUTS[world_size], world_size)
    # A dead peer fails the survivors' collectives; the shorter timeout bounds the wait if one would hang.
    join_rank_group(RankGroupAddress("127.0.0.1", port, world_size), rank, "cpu",
                    with_deepspeed=layout.sequence > 1, timeout=timedelta(seconds=45))
    if scenario == "gang":
        report = gang(rank, world_size, models.split(","), Path(cache_dir))
    else:
        report = rank_dies(rank, Path(cache_dir))
    Path(f"{output}.rank{rank}.json").write_text(json.dumps(report))
    if scenario == "rank-dies":
        os._exit(0)  # the group has a dead member: tearing it down could wait on it


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7])
