"""Two lossless shortcuts of the served path, each against what it replaces, side by side in one process.

    python -m benchmarks.batched_parts [--model toy] [--repeats 7]

- The DiT forward with timestep embeddings once per distinct timestep against diffusers'
  per-token embedding (TI2V checkpoints), for batches of 1, 4 and 8 requests with CFG
  (each request's two rows share a timestep, as in a served step).
- VAE decodes of several videos in one call (what ``vae_decoder.max_batch_size`` lets
  queued decodes do) against one call per video: seconds per video.

Medians of ``--repeats`` runs after a warm-up, the two variants alternated so a drift in the
machine's speed hits both.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.machine import describe_machine

DEFAULT_CACHE_DIR = Path(os.environ.get("VIDEOSERVE_CACHE_DIR", Path.home() / ".cache" / "videoserve"))


def _median_pair(first, second, repeats: int) -> tuple[float, float]:
    first(), second()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for index, function in enumerate((first, second)):
            started = time.perf_counter()
            function()
            times[index].append(time.perf_counter() - started)
    return statistics.median(times[0]), statistics.median(times[1])


def main(
    model: Annotated[str, typer.Option(help="A TI2V-layout Wan model (preset or directory).")] = "toy",
    repeats: Annotated[int, typer.Option()] = 7,
    output: Annotated[Path, typer.Option()] = Path("benchmarks/out/batched_parts.json"),
    cache_dir: Annotated[Path, typer.Option(envvar="VIDEOSERVE_CACHE_DIR")] = DEFAULT_CACHE_DIR,
) -> None:
    import torch

    from engine.families.wan import distinct_timestep_embedding
    from engine.families.wan.compact_text_attention import compact_text_batch
    from engine.families.wan.denoiser import WanDenoiser
    from engine.models.model_registry import resolve_model
    from engine.stage_types import Latents
    from engine.stages.loading import load_vae_decoder

    spec = resolve_model(model, cache_dir)
    defaults = spec.defaults
    latent_shape = spec.geometry.latent_shape(defaults.num_frames, defaults.height, defaults.width)
    denoiser = WanDenoiser(spec)
    if not distinct_timestep_embedding.is_installed(denoiser.transformer):
        raise typer.BadParameter(f"{spec.name} has one timestep a row; the shortcut is for TI2V checkpoints",
                                 param_hint="--model")
    transformer = denoiser.transformer
    tokens = latent_shape[2] * latent_shape[3] * latent_shape[4] // 4  # 2x2 patches
    generator = torch.Generator().manual_seed(0)
    rows_report = []
    for requests in (1, 4, 8):
        rows = 2 * requests
        # As a served step runs it: compact text attention over a 12-token prompt per row.
        states, key_bias = compact_text_batch(
            [torch.randn(12, transformer.config.text_dim, generator=generator) for _ in range(rows)],
            spec.geometry.text_max_length)
        for processor in denoiser._text_processors[0] if denoiser._text_processors else ():
            processor.key_bias = key_bias
        inputs = {"hidden_states": torch.randn((rows, *latent_shape[1:]), generator=generator),
                  "timestep": torch.linspace(900, 100, requests).repeat(2)[:, None].expand(rows, tokens).contiguous(),
                  "encoder_hidden_states": states}

        def forward(distinct: bool):
            (distinct_timestep_embedding.install if distinct else distinct_timestep_embedding.uninstall)(transformer)
            with torch.no_grad():
                transformer(**inputs, return_dict=False)

        per_token, distinct = _median_pair(lambda: forward(False), lambda: forward(True), repeats)
        rows_report.append({"requests": requests, "per_token_s": per_token, "distinct_s": distinct,
                            "ratio": distinct / per_token})
        typer.echo(f"DiT forward, {requests} request(s) with CFG: per-token {per_token * 1000:.1f} ms, "
                   f"distinct {distinct * 1000:.1f} ms ({distinct / per_token:.2f}x)")

    decoder = load_vae_decoder(spec)
    decode_report = []
    for videos in (2, 4, 8):
        batch = [(Latents(request_id=f"r{index}", latents=torch.randn(latent_shape, generator=generator)), defaults.fps)
                 for index in range(videos)]
        one_by_one, together = _median_pair(lambda: [decoder.decode(latents, fps) for latents, fps in batch],
                                            lambda: decoder.decode_many(batch), repeats)
        decode_report.append({"videos": videos, "one_by_one_s_per_video": one_by_one / videos,
                              "together_s_per_video": together / videos, "ratio": together / one_by_one})
        typer.echo(f"VAE decode, {videos} videos: one by one {one_by_one / videos * 1000:.0f} ms/video, "
                   f"together {together / videos * 1000:.0f} ms/video ({together / one_by_one:.2f}x)")
    report = {"model": spec.name, "repeats": repeats, "machine": describe_machine(),
              "torch_threads": torch.get_num_threads(), "dit_forward": rows_report, "vae_decode": decode_report}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
