"""How much of this CPU's matmul throughput one DiT forward achieves, by batch size.

    python -m benchmarks.dit_mfu --model bench --batch-sizes 1,2,4,8 --repeats 5 \\
        --output benchmarks/out/dit_mfu.json

The peak is measured in the same run: the median time of a large float32 ``torch.mm``
(2·n³ FLOPs), so MFU = achieved FLOP/s ÷ that peak compares like with like on whatever
machine it runs. A forward's FLOPs are counted by ``torch.utils.flop_counter`` at the
model's default latent shape; "batch" is rows in one forward (with CFG a request is two
rows). The gain column is rows/s at that batch over rows/s at batch 1: what step-level
batching can buy in per-request throughput, before any scheduling cost.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from engine.models.model_spec import ModelSpec

DEFAULT_CACHE_DIR = Path(os.environ.get("VIDEOSERVE_CACHE_DIR", Path.home() / ".cache" / "videoserve"))


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's flop counter knows the CUDA attention kernels but not the CPU one that
# scaled_dot_product_attention picks here; without this, attention would count as free.
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


@dataclass(frozen=True)
class MatmulPeak:
    size: int
    flops: int
    seconds: float  # median of the timed runs

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds


@dataclass(frozen=True)
class ForwardFigure:
    rows: int
    flops_per_forward: int
    seconds: float  # median of the timed forwards
    achieved_gflops_per_s: float
    mfu: float
    rows_per_s: float
    throughput_gain_vs_batch1: float | None


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls after one untimed warm-up call."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1 (got {repeats})")
    run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def matmul_peak(size: int = 2048, repeats: int = 5) -> MatmulPeak:
    """This machine's float32 matmul throughput, the denominator of MFU."""
    if size < 1:
        raise ValueError(f"size must be at least 1 (got {size})")
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(size, size, generator=generator)
    right = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    seconds = median_seconds(lambda: torch.mm(left, right, out=out), repeats)
    return MatmulPeak(size=size, flops=2 * size**3, seconds=seconds)


def count_forward_flops(module: torch.nn.Module, *args: Any, **kwargs: Any) -> int:
    """FLOPs of one ``module(*args, **kwargs)`` call (a multiply-add counts as two)."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS) as counter:
        module(*args, **kwargs)
    return counter.get_total_flops()


@dataclass(frozen=True)
class ForwardTiming:
    rows: int
    flops_per_forward: int
    seconds: float  # median of the timed forwards


def time_forwards(module: torch.nn.Module, inputs_for_rows: Callable[[int], dict[str, Any]],
                  batch_sizes: Sequence[int], repeats: int) -> list[ForwardTiming]:
    """Count and time ``module(**inputs_for_rows(rows))`` for each batch size."""
    if not batch_sizes or any(rows < 1 for rows in batch_sizes):
        raise ValueError(f"batch_sizes must be a non-empty list of integers >= 1 (got {list(batch_sizes)})")
    timings = []
    for rows in batch_sizes:
        inputs = inputs_for_rows(rows)
        flops = count_forward_flops(module, **inputs)
        with torch.no_grad():
            seconds = median_seconds(lambda inputs=inputs: module(**inputs), repeats)
        timings.append(ForwardTiming(rows=rows, flops_per_forward=flops, seconds=seconds))
    return timings


def forward_figures(timings: Sequence[ForwardTiming], peak: MatmulPeak) -> list[ForwardFigure]:
    """Achieved FLOP/s, MFU against ``peak`` and rows/s gain over batch 1 (None without a batch-1 timing)."""
    single = next((timing for timing in timings if timing.rows == 1), None)
    figures = []
    for timing in timings:
        achieved = timing.flops_per_forward / timing.seconds
        rows_per_s = timing.rows / timing.seconds
        figures.append(
            ForwardFigure(
                rows=timing.rows,
                flops_per_forward=timing.flops_per_forward,
                seconds=timing.seconds,
                achieved_gflops_per_s=achieved / 1e9,
                mfu=achieved / peak.flops_per_s,
                rows_per_s=rows_per_s,
                throughput_gain_vs_batch1=rows_per_s * single.seconds if single else None,
            )
        )
    return figures


def load_transformer(spec: ModelSpec) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    from engine.models.model_source import local_model_directory

    root = local_model_directory(spec, "transformer")
    return WanTransformer3DModel.from_pretrained(root, subfolder="transformer", torch_dtype=torch.float32).eval()


def dit_inputs(spec: ModelSpec, transformer: torch.nn.Module, rows: int, seed: int = 0) -> dict[str, Any]:
    """Random inputs shaped like one denoising step's at the model's default size."""
    config = transformer.config
    defaults = spec.defaults
    _, _, frames, height, width = spec.geometry.latent_shape(defaults.num_frames, defaults.height, defaults.width)
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "hidden_states": torch.randn(rows, config.in_channels, frames, height, width, generator=generator),
        "timestep": torch.full((rows,), 500, dtype=torch.long),
        "encoder_hidden_states": torch.randn(rows, spec.geometry.text_max_length, config.text_dim, generator=generator),
        "return_dict": False,
    }
    if config.image_dim is not None:
        from engine.stages.loading import image_embed_tokens

        inputs["encoder_hidden_states_image"] = torch.randn(rows, image_embed_tokens(spec), config.image_dim,
                                                            generator=generator)
    return inputs


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"batch sizes must be comma-separated integers, e.g. 1,2,4,8 (got {text!r})") from None
    if not sizes or any(size < 1 for size in sizes):
        raise ValueError(f"batch sizes must be integers >= 1 (got {text!r})")
    return sizes


def main(
    model: Annotated[str, typer.Option(help="Preset or directory.")] = "bench",
    batch_sizes: Annotated[str, typer.Option(help="Rows per forward, comma-separated.")] = "1,2,4,8",
    repeats: Annotated[int, typer.Option(help="Timed runs per figure (median reported).")] = 5,
    matmul_size: Annotated[int, typer.Option(help="n of the n×n float32 torch.mm that sets the peak.")] = 2048,
    output: Annotated[Path, typer.Option(help="JSON file for the figures.")] = Path("benchmarks/out/dit_mfu.json"),
    cache_dir: Annotated[Path, typer.Option(envvar="VIDEOSERVE_CACHE_DIR")] = DEFAULT_CACHE_DIR,
) -> None:
    from benchmarks.machine import describe_machine
    from engine.models.model_registry import resolve_model

    try:
        sizes = parse_batch_sizes(batch_sizes)
    except ValueError as error:
        typer.echo(f"error: --batch-sizes: {error}", err=True)
        raise typer.Exit(2) from None
    spec = resolve_model(model, cache_dir)
    if spec.family != "wan":  # the FLOP count below is the Wan DiT's
        typer.echo(f"error: --model: {spec.name} is a {spec.family} model; this benchmark counts Wan DiT FLOPs",
                   err=True)
        raise typer.Exit(2)
    transformer = load_transformer(spec)
    # Other processes on a shared machine make any one peak figure low; measuring it
    # before and after the forwards and keeping the faster errs towards a lower MFU.
    peak_before = matmul_peak(matmul_size, repeats)
    timings = time_forwards(transformer, lambda rows: dit_inputs(spec, transformer, rows), sizes, repeats)
    peak_after = matmul_peak(matmul_size, repeats)
    peak = max(peak_before, peak_after, key=lambda candidate: candidate.flops_per_s)
    figures = forward_figures(timings, peak)
    defaults = spec.defaults
    report = {
        "kind": "dit_mfu",
        "model": spec.name,
        "latent_shape": list(spec.geometry.latent_shape(defaults.num_frames, defaults.height, defaults.width)),
        "request": {"size": f"{defaults.width}x{defaults.height}", "num_frames": defaults.num_frames},
        "repeats": repeats,
        "machine": describe_machine(),
        "matmul_peak": {**asdict(peak), "gflops_per_s": peak.flops_per_s / 1e9,
                        "gflops_per_s_before": peak_before.flops_per_s / 1e9,
                        "gflops_per_s_after": peak_after.flops_per_s / 1e9},
        "forwards": [asdict(figure) for figure in figures],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    typer.echo(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
