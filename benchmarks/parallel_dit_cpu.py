"""One DiT forward on a gang of N CPU ranks over gloo: time and bytes per rank, measured here.

    python -m benchmarks.parallel_dit_cpu --model bench --degrees 1,2,4 --repeats 5 \\
        --output benchmarks/out/parallel_dit_cpu.json

Each degree and mode starts N real processes joined in a gloo group (the CPU path of the
NCCL code), splits the DiT as the Denoiser does, and times the forward of one
classifier-free-guidance step (2 rows) at the model's default size; the median over
``--repeats`` is reported with the payload the communication log counted. Modes: tensor
and sequence at every degree, cfg at 2 (the conditional row on one rank, the
unconditional on the other, outputs gathered) and cfg 2 x sequence N/2 at every even
degree from 4 (``--modes`` picks). The ranks
share this machine's cores, so on a 2-core box this measures the cost of the split, not
a speed-up; the 4xH100 picture is benchmarks/parallel_cost_model.py.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

REPO_ROOT = Path(__file__).resolve().parent.parent
ROWS = 2  # one request's cond and uncond rows


def rank_main(rank: int, world_size: int, port: int, mode: str, model: str, cache_dir: str, repeats: int,
              output: str) -> None:
    import torch
    import torch.distributed as dist

    from engine.models.model_registry import resolve_model
    from engine.parallel.communication_log import CommunicationLog
    from engine.parallel.parallel_dit import needs_deepspeed, parallelize_transformer
    from engine.parallel.parallel_layout import ParallelLayout
    from engine.parallel.process_group import RankGroupAddress, join_rank_group
    from engine.stages.loading import load_denoiser

    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // world_size))
    spec = resolve_model(model, Path(cache_dir))
    denoiser = load_denoiser(spec)
    log = CommunicationLog()
    row_split = None
    if world_size > 1:
        layout = ParallelLayout.from_mode(mode, world_size)
        join_rank_group(RankGroupAddress("127.0.0.1", port, world_size), rank, "cpu",
                        with_deepspeed=needs_deepspeed(layout))
        row_split = parallelize_transformer(denoiser.transformer, layout, log)
    defaults = spec.defaults
    shape = spec.geometry.latent_shape(defaults.num_frames, defaults.height, defaults.width)
    generator = torch.Generator().manual_seed(0)
    config = denoiser.transformer.config
    inputs = {
        "hidden_states": torch.randn((ROWS, config.in_channels, *shape[2:]), generator=generator),
        "timestep": torch.tensor([999.0, 999.0]),
        "encoder_hidden_states": torch.randn((ROWS, spec.geometry.text_max_length, config.text_dim),
                                             generator=generator),
    }
    if config.image_dim is not None:
        inputs["encoder_hidden_states_image"] = torch.randn((ROWS, 257, config.image_dim), generator=generator)

    def forward() -> None:
        if row_split is None:
            denoiser.transformer(**inputs, return_dict=False)
        else:  # cfg: this rank's row (conditional, or unconditional), then both gathered
            row_split.forward(lambda part, caching: denoiser.transformer(**part, return_dict=False)[0], inputs, None,
                              [True, False])

    seconds = []
    with torch.no_grad():
        forward()  # warm-up
        log.take()
        for _ in range(repeats):
            if world_size > 1:
                dist.barrier()
            started = time.perf_counter()
            forward()
            seconds.append(time.perf_counter() - started)
    volume = log.take()
    if rank == 0:
        Path(output).write_text(json.dumps({
            "mode": mode if world_size > 1 else "single", "degree": world_size,
            "median_seconds": statistics.median(seconds), "seconds": seconds, "torch_threads": torch.get_num_threads(),
            "payload_bytes_per_forward": {kind: amount // repeats for kind, amount in volume.bytes_by_kind.items()},
        }))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_gang(world_size: int, mode: str, model: str, cache_dir: str, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "rank0.json"
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        ranks = [
            subprocess.Popen([sys.executable, "-m", "benchmarks.parallel_dit_cpu", "rank", str(rank), str(world_size),
                              str(port), mode, model, cache_dir, str(repeats), str(output)],
                             cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for rank in range(world_size)
        ]
        logs = [rank.communicate()[0] for rank in ranks]
        if any(rank.returncode for rank in ranks):
            raise RuntimeError("a rank failed:\n" + "\n".join(log[-2000:] for log in logs))
        return json.loads(output.read_text())


def _size(amount: int) -> str:
    # The tiny presets move kilobytes, the bench preset megabytes.
    return f"{amount / 1e6:.2f} MB" if amount >= 100_000 else f"{amount / 1e3:.1f} kB"


app = typer.Typer(add_completion=False)


MODES = ("tensor", "sequence", "cfg", "cfg+sequence")


def modes_at(degree: int, modes: tuple[str, ...]) -> list[str]:
    """The requested modes a gang of ``degree`` ranks can run (cfg alone is 2 ranks; cfg+sequence an even 4+)."""
    runnable = {"tensor": True, "sequence": True, "cfg": degree == 2, "cfg+sequence": degree >= 4 and degree % 2 == 0}
    return [mode for mode in modes if runnable[mode]]


@app.command()
def main(
    model: str = "bench",
    degrees: str = "1,2,4",
    repeats: int = 5,
    modes: Annotated[str, typer.Option(help=f"Comma-separated, of {', '.join(MODES)}.")] = ",".join(MODES),
    cache_dir: Path = Path("~/.cache/videoserve").expanduser(),
    output: Annotated[Path | None, typer.Option(help="Write the figures as JSON here.")] = None,
) -> None:
    from engine.models.model_registry import resolve_model

    chosen = tuple(mode.strip() for mode in modes.split(","))
    unknown = sorted(set(chosen) - set(MODES))
    if unknown:
        raise typer.BadParameter(f"{', '.join(unknown)}: modes are {', '.join(MODES)}", param_hint="--modes")
    resolve_model(model, cache_dir)  # build the preset once, before any rank races for it
    results = [run_gang(1, "single", model, str(cache_dir), repeats)]
    for degree in (int(value) for value in degrees.split(",") if int(value) > 1):
        for mode in modes_at(degree, chosen):
            results.append(run_gang(degree, mode, model, str(cache_dir), repeats))
    single = results[0]["median_seconds"]
    print(f"{model}: one CFG forward (2 rows), median of {repeats}, {os.cpu_count()} cores")
    print("| mode | ranks | threads/rank | forward | vs 1 rank | payload per rank per forward |")
    print("|---|---|---|---|---|---|")
    for result in results:
        payload = ", ".join(f"{kind} {_size(amount)}" for kind, amount in
                            sorted(result["payload_bytes_per_forward"].items())) or "none"
        print(f"| {result['mode']} | {result['degree']} | {result['torch_threads']} | "
              f"{result['median_seconds'] * 1000:.0f} ms | {result['median_seconds'] / single:.2f}x | {payload} |")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "rank":
        rank_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7],
                  int(sys.argv[8]), sys.argv[9])
    else:
        app()
