"""What step caching costs in quality, per policy and threshold, against the same requests uncached.

    python -m benchmarks.step_cache_quality [--model toy] [--threshold 0.03 --threshold 0.05 ...]

For every prompt of the toy model's held-out set (or ``--prompts``) and every seed, the
request runs uncached, then once per policy and threshold, in this process through the
staged pipeline (the served stages' code). Reported per setting: the share of steps
skipped (a row reused or estimated the residual of the blocks after the first, or of every
block for magcache, instead of running them), PSNR and SSIM of the frames against the
uncached frames of the same seed, prompt adherence and flicker (engine/quality), and the
denoising time against uncached. Served throughput with the
default policy is ``benchmarks.served_vs_diffusers``'s.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from benchmarks.machine import describe_machine

DEFAULT_THRESHOLDS = (0.03, 0.05, 0.1, 0.2)


def psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB over all frames (inf when identical)."""
    error = np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


def ssim(frames: np.ndarray, reference: np.ndarray) -> float:
    """Mean SSIM over frames and channels (Wang et al. 2004: Gaussian window, sigma 1.5, K1 0.01, K2 0.03)."""
    import cv2

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for frame, target in zip(frames.astype(np.float64), reference.astype(np.float64)):
        for channel in range(frame.shape[-1]):
            x, y = frame[..., channel], target[..., channel]

            def blur(image):
                return cv2.GaussianBlur(image, (11, 11), 1.5)

            mu_x, mu_y = blur(x), blur(y)
            var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
            cov = blur(x * y) - mu_x * mu_y
            score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
            scores.append(score.mean())
    return float(np.mean(scores))


def main(
    model: Annotated[str, typer.Option()] = "toy",
    policy: Annotated[list[str] | None, typer.Option(help="Policies (default: all).")] = None,
    threshold: Annotated[list[float] | None, typer.Option(help="Thresholds (default 0.03, 0.05, 0.1, 0.2).")] = None,
    seeds: Annotated[int, typer.Option(min=1)] = 2,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts.")] = None,
    output: Annotated[Path, typer.Option()] = Path("benchmarks/out/step_cache_quality.json"),
    cache_dir: Annotated[Path, typer.Option(envvar="VIDEOSERVE_CACHE_DIR")] = Path.home() / ".cache" / "videoserve",
) -> None:
    from engine.models.model_registry import resolve_model
    from engine.quality.flicker import flicker_score
    from engine.quality.toy_adherence import judge_clip, summarize
    from engine.request_validation import validate_generation
    from engine.stage_types import TextRequest
    from engine.staged_pipeline import StagedPipeline
    from engine.step_cache.options import POLICIES
    from engine.toy_world.grammar import held_out_prompts, parse_prompt

    spec = resolve_model(model, cache_dir)
    pipeline = StagedPipeline.load(spec)
    prompts = held_out_prompts()[:limit]
    settings: list[dict[str, Any] | None] = [None] + [
        {"policy": name, "threshold": value} for name in (policy or list(POLICIES))
        for value in (threshold or DEFAULT_THRESHOLDS)]

    def run(prompt: str, seed: int, step_cache: dict | None) -> tuple[np.ndarray, float, int | None]:
        fields = {"prompt": prompt, "seed": seed, **({"step_cache": step_cache} if step_cache else {})}
        request = validate_generation(fields, spec)
        task = pipeline.denoiser.prepare(request, pipeline.text_encoder.encode(TextRequest.of(request)), None)
        started = time.perf_counter()
        latents = pipeline.denoiser.denoise(task)
        seconds = time.perf_counter() - started
        frames = np.asarray(pipeline.vae_decoder.decode(latents, fps=request.fps).frames)
        return frames, seconds, latents.reused_steps

    uncached: dict[tuple[str, int], tuple[np.ndarray, float]] = {}
    rows = []
    for setting in settings:
        verdicts, flickers, psnrs, ssims, seconds, reused = [], [], [], [], [], []
        for prompt in prompts:
            for seed in range(seeds):
                frames, elapsed, reused_steps = run(prompt, seed, setting)
                if setting is None:
                    uncached[prompt, seed] = (frames, elapsed)
                reference, reference_seconds = uncached[prompt, seed]
                verdicts.append(judge_clip(frames, parse_prompt(prompt)))
                flickers.append(flicker_score(frames))
                psnrs.append(psnr(frames, reference))
                ssims.append(ssim(frames, reference))
                seconds.append(elapsed / reference_seconds)
                reused.append(reused_steps or 0)
        steps = spec.defaults.num_inference_steps
        rows.append({
            "policy": None if setting is None else setting["policy"],
            "threshold": None if setting is None else setting["threshold"],
            "forwards_skipped": statistics.fmean(reused) / steps,
            "psnr_db": statistics.median(psnrs), "ssim": statistics.fmean(ssims),
            "adherence": summarize(verdicts), "flicker": statistics.fmean(flickers),
            "denoise_time_vs_uncached": statistics.median(seconds),
        })
        typer.echo(_row(rows[-1]))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"model": model, "prompts": len(prompts), "seeds": seeds,
                                  "defaults": {"steps": spec.defaults.num_inference_steps,
                                               "guidance": spec.defaults.guidance_scale},
                                  "machine": describe_machine(), "rows": rows}, indent=2))


def _row(row: dict[str, Any]) -> str:
    name = "uncached" if row["policy"] is None else f"{row['policy']} {row['threshold']:g}"
    psnr_text = "inf" if row["psnr_db"] == float("inf") else f"{row['psnr_db']:.1f} dB"
    return (f"| {name} | {row['forwards_skipped']:.0%} | {row['denoise_time_vs_uncached']:.2f}x | {psnr_text} | "
            f"{row['ssim']:.3f} | {row['adherence']['colour_and_motion']:.0%} | {row['adherence']['full']:.0%} | "
            f"{row['flicker']:.2f} |")


if __name__ == "__main__":
    typer.run(main)
