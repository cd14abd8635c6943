"""PNG plots from load-generator reports.

    python -m benchmarks.report_plots load benchmarks/out/load_r0.5.json
    python -m benchmarks.report_plots sweep benchmarks/out/load_r*.json --output benchmarks/out/load_sweep.png

``load`` draws one run: the end-to-end latency CDF, latency against submit time (a
server falling behind shows as a rising line), and the denoiser's batch-size
histogram from the /metrics deltas. ``sweep`` draws several open-loop runs at
different rates: completed throughput and p95 latency against offered load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_latency_cdf(report: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    latencies = sorted(request["latency_s"] for request in report["requests"] if request["latency_s"] is not None)
    figure, axes = plt.subplots(figsize=(6, 4))
    if latencies:
        fractions = [(rank + 1) / len(latencies) for rank in range(len(latencies))]
        axes.step(latencies, fractions, where="post")
    else:
        _no_data(axes, "no completed requests")
    axes.set_xlabel("end-to-end latency (s)")
    axes.set_ylabel("fraction of completed requests")
    axes.set_ylim(0, 1.02)
    axes.set_title(_title(report, "latency CDF"))
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_latency_over_time(report: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4))
    completed = [request for request in report["requests"] if request["latency_s"] is not None]
    failed = [request for request in report["requests"] if request["latency_s"] is None]
    if completed:
        axes.scatter([r["submit_s"] for r in completed], [r["latency_s"] for r in completed], s=12, label="completed")
    if failed:
        # Failures have no latency; mark when they were sent along the bottom.
        axes.scatter([r["submit_s"] for r in failed], [0] * len(failed), marker="x", color="red", s=20,
                     label=f"not completed ({len(failed)})")
    if not completed and not failed:
        _no_data(axes, "no requests")
    else:
        axes.legend(loc="upper left")
    axes.set_xlabel("submit time since start (s)")
    axes.set_ylabel("end-to-end latency (s)")
    axes.set_ylim(bottom=0)
    axes.set_title(_title(report, "latency over time"))
    axes.grid(alpha=0.3)
    return _save(figure, path)


def plot_batch_sizes(report: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    histogram = report.get("server_metrics", {}).get("denoise_batch_size") or {}
    buckets = [bucket for bucket in histogram.get("buckets", []) if bucket["count"] > 0 or bucket["le"] is not None]
    if histogram.get("count"):
        axes.bar([bucket["label"] for bucket in buckets], [bucket["count"] for bucket in buckets])
        axes.set_title(_title(report, f"denoiser batch size (mean {histogram['mean']:.2f})"))
    else:
        _no_data(axes, "no denoising steps in /metrics")
        axes.set_title(_title(report, "denoiser batch size"))
    axes.set_xlabel("requests in one denoising step")
    axes.set_ylabel("steps")
    return _save(figure, path)


def plot_load_report(report: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """The three single-run plots, as ``out_dir/<stem>_<plot>.png``."""
    out_dir = Path(out_dir)
    return [
        plot_latency_cdf(report, out_dir / f"{stem}_latency_cdf.png"),
        plot_latency_over_time(report, out_dir / f"{stem}_latency_over_time.png"),
        plot_batch_sizes(report, out_dir / f"{stem}_batch_sizes.png"),
    ]


def plot_offered_load(reports: Sequence[dict[str, Any]], path: Path) -> Path:
    """Completed throughput and p95 latency against offered load, one point per open-loop run."""
    runs = sorted(
        (report["settings"]["rate_per_s"], report["summary"]) for report in reports
        if report["settings"]["mode"] == "open_loop"
    )
    if not runs:
        raise ValueError("reports: need at least one open-loop report (closed-loop runs have no offered rate)")
    plt = _pyplot()
    figure, (throughput_axes, latency_axes) = plt.subplots(1, 2, figsize=(11, 4))
    rates = [rate for rate, _ in runs]
    throughput_axes.plot(rates, [summary["throughput_videos_per_s"] or 0 for _, summary in runs], marker="o",
                         label="completed")
    throughput_axes.plot(rates, rates, linestyle="--", color="grey", label="offered")
    throughput_axes.set_xlabel("offered load (requests/s)")
    throughput_axes.set_ylabel("throughput (videos/s)")
    throughput_axes.set_ylim(bottom=0)
    throughput_axes.legend()
    throughput_axes.grid(alpha=0.3)
    latency_points = [(rate, summary["latency_s"]["p95"]) for rate, summary in runs
                      if summary["latency_s"]["p95"] is not None]
    latency_axes.plot([rate for rate, _ in latency_points], [p95 for _, p95 in latency_points], marker="o",
                      color="tab:red")
    latency_axes.set_xlabel("offered load (requests/s)")
    latency_axes.set_ylabel("p95 end-to-end latency (s)")
    latency_axes.set_ylim(bottom=0)
    latency_axes.grid(alpha=0.3)
    figure.suptitle(f"{reports[0].get('model', {}).get('id', 'videoserve')}: throughput and p95 vs offered load")
    return _save(figure, path)


def _title(report: dict[str, Any], what: str) -> str:
    settings = report.get("settings", {})
    if settings.get("mode") == "closed_loop":
        load = f"{settings.get('concurrency')} clients"
    else:
        load = f"{settings.get('rate_per_s')} req/s"
    return f"{what} ({load})"


def _no_data(axes, message: str) -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)


def _save(figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    figure.clf()
    _pyplot().close(figure)
    return path


def _read(path: Path) -> dict[str, Any]:
    report = json.loads(Path(path).read_text())
    if report.get("kind") != "load":
        raise typer.BadParameter(f"{path} is not a load-generator report (kind={report.get('kind')!r})")
    return report


@app.command()
def load(
    report: Annotated[Path, typer.Argument(help="A load-generator JSON report.")],
    out_dir: Annotated[Path | None, typer.Option(help="Where the PNGs go (default: next to the report).")] = None,
) -> None:
    """Latency CDF, latency over time and batch-size histogram of one run."""
    for path in plot_load_report(_read(report), out_dir or report.parent, report.stem):
        typer.echo(f"wrote {path}")


@app.command()
def sweep(
    reports: Annotated[list[Path], typer.Argument(help="Open-loop load reports at different rates.")],
    output: Annotated[Path, typer.Option(help="PNG file.")] = Path("benchmarks/out/load_sweep.png"),
) -> None:
    """Throughput and p95 latency against offered load across several runs."""
    typer.echo(f"wrote {plot_offered_load([_read(path) for path in reports], output)}")


if __name__ == "__main__":
    app()
