"""Quality of a model's outputs over a prompt set: prompt adherence (toy world) and flicker (any model).

Runs the in-process staged pipeline, the same code the served stages run, so a figure here
is what a client would get for the same prompt, seed and settings.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.quality.flicker import flicker_score
from engine.quality.toy_adherence import AdherenceVerdict, judge_clip, summarize
from engine.toy_world.grammar import parse_prompt


@dataclass(frozen=True)
class EvalSettings:
    num_inference_steps: int | None = None  # None: the model's default
    guidance_scale: float | None = None
    seeds: tuple[int, ...] = (0,)
    extra: dict = field(default_factory=dict)  # more request fields (e.g. a step-cache option)


@dataclass(frozen=True)
class EvalResult:
    settings: EvalSettings
    clips: int
    flicker: float  # mean over clips, 0-255 levels
    seconds_per_clip: float
    adherence: dict[str, float] | None  # toy-world prompts only: summarize()'s rates
    failures: tuple[str, ...] = ()  # prompts (and seed) judged wrong on colour and motion


def evaluate(generate: Callable[[dict], np.ndarray], prompts: Sequence[str], settings: EvalSettings) -> EvalResult:
    """``generate(request_fields) -> frames [F, H, W, 3] uint8`` for every prompt and seed.

    Adherence is scored when every prompt is in the toy grammar (the detector knows what to look for).
    """
    scenes = [parse_prompt(prompt) for prompt in prompts]
    judge = all(scene is not None for scene in scenes)
    flickers, verdicts, failures = [], [], []
    started = time.perf_counter()
    for prompt, scene in zip(prompts, scenes):
        for seed in settings.seeds:
            fields = {"prompt": prompt, "seed": seed, **settings.extra}
            if settings.num_inference_steps is not None:
                fields["num_inference_steps"] = settings.num_inference_steps
            if settings.guidance_scale is not None:
                fields["guidance_scale"] = settings.guidance_scale
            frames = generate(fields)
            flickers.append(flicker_score(frames))
            if judge:
                verdict: AdherenceVerdict = judge_clip(frames, scene)
                verdicts.append(verdict)
                if not verdict.colour_and_motion:
                    failures.append(f"{prompt} (seed {seed})")
    clips = len(flickers)
    return EvalResult(settings=settings, clips=clips, flicker=round(statistics.fmean(flickers), 3),
                      seconds_per_clip=round((time.perf_counter() - started) / max(1, clips), 3),
                      adherence=summarize(verdicts) if judge else None, failures=tuple(failures))


def pipeline_generator(pipeline) -> Callable[[dict], np.ndarray]:
    """``generate`` for ``evaluate`` over a StagedPipeline, requests validated as the API validates them."""
    from engine.request_validation import validate_generation

    def generate(fields: dict) -> np.ndarray:
        request = validate_generation(fields, pipeline.spec)
        frames = pipeline.generate(request).frames
        return frames.numpy() if hasattr(frames, "numpy") else np.asarray(frames)

    return generate
