"""The whole request in one process, built from the same stage classes the cluster runs.

request -> TextEmbeddings -> (ImageConditioning) -> DenoiseTask (seeded initial latents) ->
one step per call -> Latents -> Frames -> MP4 / .npy
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models.model_spec import ModelSpec, Task
from engine.stage_placement import StagePlacement
from engine.stage_types import DenoiseTask, Frames, GenerationRequest, TextRequest, VideoArtifact
from engine.stages.denoiser import StepCallback
from engine.stages.loading import load_denoiser, load_image_conditioner, load_vae_decoder
from engine.stages.text_encoder import TextEncoder
from engine.video_io import write_mp4, write_npy


@dataclass
class StagedPipeline:
    spec: ModelSpec
    text_encoder: TextEncoder
    image_conditioner: Any | None
    denoiser: Any
    vae_decoder: Any

    @classmethod
    def load(cls, spec: ModelSpec, device: str = "cpu") -> StagedPipeline:
        def placement(component: str) -> StagePlacement:
            return StagePlacement.default_for(component, device)

        return cls(
            spec=spec,
            text_encoder=TextEncoder(spec, placement("text_encoder")),
            image_conditioner=load_image_conditioner(spec, placement("image_encoder")) if spec.is_image_to_video
            else None,
            denoiser=load_denoiser(spec, placement("transformer")),
            vae_decoder=load_vae_decoder(spec, placement("vae")),
        )

    def denoise_task(self, request: GenerationRequest) -> DenoiseTask:
        """Every stage before the denoiser: text, image conditioning, seeded initial latents."""
        image = None
        if request.task is Task.IMAGE_TO_VIDEO:
            image = self.image_conditioner.condition(request)
        return self.denoiser.prepare(request, self.text_encoder.encode(TextRequest.of(request)), image)

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> Frames:
        latents = self.denoiser.denoise(self.denoise_task(request), on_step)
        return self.vae_decoder.decode(latents, fps=request.fps)


def save_frames(request: GenerationRequest, frames: Frames, output: Path) -> VideoArtifact:
    """Write ``output`` as an MP4 or, for a ``.npy`` path, the lossless uint8 frames."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".mp4", ".npy"):
        raise ValueError(f"output must end in .mp4 or .npy (got {output.name})")
    writer = write_npy if suffix == ".npy" else write_mp4
    writer(frames, output)
    num_frames, height, width, _ = frames.frames.shape
    return VideoArtifact(
        request_id=request.request_id,
        video_path=str(output) if suffix == ".mp4" else "",
        frames_path=str(output) if suffix == ".npy" else None,
        num_frames=num_frames,
        width=width,
        height=height,
        fps=frames.fps,
        seed=request.seed,
    )
