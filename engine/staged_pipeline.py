"""The whole request in one process, built from the same stage classes the cluster runs.

request -> TextEmbeddings -> (ImageConditioning) -> initial latents -> DenoiseTask ->
one step per call -> Latents -> Frames -> MP4 / .npy
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.initial_noise import initial_latents
from engine.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stage_types import DenoiseTask, Frames, GenerationRequest, VideoArtifact
from engine.stages.denoiser import StepCallback, WanDenoiser
from engine.stages.image_conditioner import ImageConditioner
from engine.stages.text_encoder import TextEncoder
from engine.stages.vae_decoder import VaeDecoder
from engine.video_io import write_mp4, write_npy


@dataclass
class StagedPipeline:
    spec: ModelSpec
    text_encoder: TextEncoder
    image_conditioner: ImageConditioner | None
    denoiser: WanDenoiser
    vae_decoder: VaeDecoder

    @classmethod
    def load(cls, spec: ModelSpec, device: str = "cpu") -> StagedPipeline:
        def placement(component: str) -> StagePlacement:
            return StagePlacement.default_for(component, device)

        return cls(
            spec=spec,
            text_encoder=TextEncoder(spec, placement("text_encoder")),
            image_conditioner=ImageConditioner(spec, placement("image_encoder")) if spec.is_image_to_video else None,
            denoiser=WanDenoiser(spec, placement("transformer")),
            vae_decoder=VaeDecoder(spec, placement("vae")),
        )

    def denoise_task(self, request: GenerationRequest) -> DenoiseTask:
        """Every stage before the denoiser: text, image conditioning, seeded noise."""
        image = None
        if self.spec.is_image_to_video:
            image = self.image_conditioner.condition(request)
        return DenoiseTask(
            request_id=request.request_id,
            initial_latents=initial_latents(request, self.spec.geometry),
            text=self.text_encoder.encode(request),
            image=image,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            flow_shift=request.flow_shift,
        )

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
