"""``videoserve-train``: reproduce the shipped toy world model on a CPU.

    videoserve-train toy --output engine/models/shipped/toy

Seeded end to end: the same command, torch version and thread count give the same weights.
Progress bars for each phase; every step's losses go to ``<log-dir>/toy-training.jsonl``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from training.toy_world.dit_training import DitTrainingSettings
from training.toy_world.vae_training import VaeTrainingSettings

app = typer.Typer(help="Train videoserve's built-in models.", no_args_is_help=True)
console = Console(stderr=True)

_VAE = VaeTrainingSettings()
_DIT = DitTrainingSettings()
SHIPPED_TOY_DIR = Path(__file__).resolve().parents[1] / "engine" / "models" / "shipped" / "toy"


@app.callback()
def main() -> None:
    """Train videoserve's built-in models."""


@app.command()
def toy(
    output: Annotated[Path, typer.Option(help="Where the diffusers-format checkpoint goes.")] = SHIPPED_TOY_DIR,
    log_dir: Annotated[Path, typer.Option(help="Where the loss log goes.")] = Path("outputs/toy-training"),
    vae_image_steps: Annotated[int, typer.Option(help="VAE steps on single frames.")] = _VAE.phases[0].steps,
    vae_clip_steps: Annotated[int, typer.Option(help="VAE steps on whole clips.")] = _VAE.phases[1].steps,
    clips: Annotated[int, typer.Option(help="Training clips encoded for the DiT.")] = 8000,
    dit_steps: Annotated[int, typer.Option(help="DiT optimiser steps.")] = _DIT.steps,
    threads: Annotated[int, typer.Option(help="torch threads (the shipped weights: 2).")] = 2,
) -> None:
    """Train the toy world model: its VAE, then its DiT on the VAE's latents, and save both
    with the frozen text encoder as one Wan 2.2 TI2V-layout checkpoint (text- and image-to-video)."""
    import dataclasses

    import torch

    from training.toy_world.architecture import ToyArchitecture, build_text_encoder, build_tokenizer
    from training.toy_world.dit_training import train_dit
    from training.toy_world.export import save_toy_checkpoint
    from training.toy_world.latent_dataset import encode_clips
    from training.toy_world.prompt_embeddings import PromptEmbeddings
    from training.toy_world.vae_training import train_vae

    torch.set_num_threads(threads)
    # Tiny gradients and moments turn denormal and slow every CPU op on them by orders of
    # magnitude (a run here went from 0.6 s a step to minutes); flushing them changes nothing else.
    torch.set_flush_denormal(True)
    arch = ToyArchitecture()
    vae_settings = dataclasses.replace(_VAE, phases=(
        dataclasses.replace(_VAE.phases[0], steps=vae_image_steps),
        dataclasses.replace(_VAE.phases[1], steps=vae_clip_steps)))
    dit_settings = dataclasses.replace(_DIT, steps=dit_steps)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "toy-training.jsonl"
    started = time.monotonic()
    summary: dict[str, dict] = {}
    with log_path.open("w", buffering=1) as log, _progress() as progress:  # line-buffered: follow it with tail -f
        def logger(phase: str, task, every: int = 1):
            def on_step(step: int, losses: dict[str, float]) -> None:
                log.write(json.dumps({"phase": phase, "step": step, "seconds": round(time.monotonic() - started, 2),
                                      **losses}) + "\n")
                summary[phase] = {"step": step, **losses}
                progress.update(task, completed=step + 1,
                                description=f"{phase} " + " ".join(f"{k} {v:.4f}" for k, v in losses.items()
                                                                   if k in ("l1", "object_l1", "loss")))
            return on_step

        vae_total = sum(phase.steps for phase in vae_settings.phases)
        vae = train_vae(arch, vae_settings, logger("vae", progress.add_task("vae", total=vae_total)))
        encoding = progress.add_task("encoding clips", total=clips)
        data = encode_clips(vae, arch, clips, dit_settings.seed + 1,
                            on_batch=lambda done: progress.update(encoding, completed=done))
        tokenizer, text_encoder = build_tokenizer(arch), build_text_encoder(arch)
        transformer = train_dit(arch, data, PromptEmbeddings(tokenizer, text_encoder), dit_settings,
                                logger("dit", progress.add_task("dit", total=dit_settings.steps)))
    minutes = (time.monotonic() - started) / 60
    training = {"minutes": round(minutes, 1), "threads": threads, "torch": torch.__version__, "clips": clips,
                "vae": dataclasses.asdict(vae_settings), "dit": dataclasses.asdict(dit_settings),
                "final": summary}
    save_toy_checkpoint(output, arch, tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer,
                        vae=vae, description="the toy world: coloured shapes that move as the prompt says, trained "
                        "here on a CPU (training/toy_world)", training=training)
    console.print(f"saved {output} in {minutes:.1f} min; losses in {log_path}")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


if __name__ == "__main__":
    app()

