"""Frames of the shipped toy model for a few prompts, as one PNG: the README's picture.

    python -m benchmarks.toy_samples [--output benchmarks/plots/toy_world_samples.png]

Each row is one prompt (seed 0, the model's default settings), every fourth frame from
left to right, with the prompt written above it. Held-out prompts (combinations the model
never saw in training) are marked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

DEFAULT_PROMPTS = (
    "a red circle moves to the right on a black background",
    "a yellow triangle grows on a gray background",
    "a blue square moves to the left on a black background",  # held out
    "a white triangle moves to the right on a gray background",  # held out
    "a green square moves up and a red circle moves down on a black background",
)
SCALE = 3  # pixels per model pixel in the picture
LABEL_HEIGHT = 18


def main(
    model: Annotated[str, typer.Option()] = "toy",
    prompt: Annotated[list[str] | None, typer.Option(help="Prompts, one row each (default: five of the grammar).")]
    = None,
    seed: Annotated[int, typer.Option()] = 0,
    output: Annotated[Path, typer.Option()] = Path("benchmarks/plots/toy_world_samples.png"),
    cache_dir: Annotated[Path, typer.Option(envvar="VIDEOSERVE_CACHE_DIR")] = Path.home() / ".cache" / "videoserve",
) -> None:
    from PIL import Image, ImageDraw

    from engine.models.model_registry import resolve_model
    from engine.request_validation import validate_generation
    from engine.staged_pipeline import StagedPipeline
    from engine.toy_world.grammar import is_held_out, parse_prompt

    spec = resolve_model(model, cache_dir)
    pipeline = StagedPipeline.load(spec)
    rows = []
    for text in prompt or DEFAULT_PROMPTS:
        frames = np.asarray(pipeline.generate(validate_generation({"prompt": text, "seed": seed}, spec)).frames)
        strip = np.concatenate(list(frames[::4]), axis=1)
        strip = np.kron(strip, np.ones((SCALE, SCALE, 1), dtype=np.uint8))
        scene = parse_prompt(text)
        held_out = scene is not None and any(is_held_out(obj) for obj in scene.objects)
        label = Image.new("RGB", (strip.shape[1], LABEL_HEIGHT), (255, 255, 255))
        ImageDraw.Draw(label).text((4, 3), text + ("   (held out: never seen in training)" if held_out else ""),
                                   fill=(0, 0, 0))
        rows += [np.asarray(label), strip]
    output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(output, optimize=True)
    typer.echo(f"wrote {output}: {len(rows) // 2} prompts, every 4th of {spec.defaults.num_frames} frames, seed {seed}")


if __name__ == "__main__":
    typer.run(main)
