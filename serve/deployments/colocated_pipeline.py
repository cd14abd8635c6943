"""The colocated layout: every model stage of one model in one replica, on one device.

On a node with one accelerator (or a CPU box) separate stage processes time-slice the one
device and each holds its own copy of the runtime (a CUDA context, OpenMP threads that
compete for the same cores). Here the text encoder, the image conditioner, the
continuous-batching DiT engine and the VAE decoder live in one replica. Text encoding and
image conditioning run on the engine's step thread, taking turns with denoising steps;
VAE decodes do too on a GPU, and on a CPU run on a thread of their own beside the steps
(``vae_decoder.colocated_thread``), because the DiT's small ops leave cores idle that a
concurrent decode fills. The replica answers the same calls as the separate stage
deployments (``encode``, ``condition``, ``denoise``, ``decode``), so the job runner, the
conditioning caches, the metrics and autoscaling (of whole replicas) are the same for both
layouts.
"""

from __future__ import annotations

from engine.stage_placement import StagePlacement
from engine.stage_types import EncodedText, Frames, GenerationRequest, ImageConditioning, Latents, TextEmbeddings, TextRequest
from engine.stages.loading import load_image_conditioner, load_vae_decoder
from engine.stages.text_encoder import TextEncoder
from serve.app_config import AppConfig
from serve.deployments.cached_conditioning import CachedImageConditioning, CachedTextEncoding
from serve.deployments.decode_batching import DecodeBatcher
from serve.deployments.denoiser import DenoiserDeployment
from serve.deployments.model_stage import ModelThread
from serve.deployments.stage_caches import FIRST_FRAME_CACHE, TEXT_CACHE, model_identity, open_stage_cache


class ColocatedPipelineDeployment(DenoiserDeployment):
    """A Denoiser replica that also encodes, conditions and decodes for its model."""

    def __init__(self, config: AppConfig, model: str | None = None):
        super().__init__(config, model)
        device = config.resolved_device()
        spec, run = self.spec, self.engine.run

        def placement(component: str) -> StagePlacement:
            return StagePlacement.default_for(component, device)

        self.text = CachedTextEncoding(TextEncoder(spec, placement("text_encoder")), open_stage_cache(config, TEXT_CACHE),
                                       model_identity(spec, placement("text_encoder"), "TextEncoder"),
                                       spec.geometry.text_max_length, run)
        self.image = None
        if spec.is_image_to_video:
            self.image = CachedImageConditioning(load_image_conditioner(spec, placement("image_encoder")),
                                                 open_stage_cache(config, FIRST_FRAME_CACHE),
                                                 model_identity(spec, placement("image_encoder"), "ImageConditioner"),
                                                 run)
        self.vae_decoder = load_vae_decoder(spec, placement("vae"), compile_decoder=config.vae_decoder.compile)
        # Decodes take turns with the DiT's steps on the engine's thread, or run beside them on their own.
        # One torch thread: a second multi-threaded team in this process would make libgomp
        # throttle the engine's spin-waits (serve/deployments/model_stage.py).
        self.decode_thread = ModelThread(1) if decodes_on_own_thread(config) else None
        if config.vae_decoder.compile:  # on the decoding thread: inductor's kernels take its thread count
            run_blocking = self.decode_thread.run_blocking if self.decode_thread else self.engine.run_blocking
            run_blocking(self.vae_decoder.warm_up_compiled, spec.defaults.width, spec.defaults.height,
                         spec.defaults.num_frames)
        self.decodes = DecodeBatcher(self.vae_decoder.decode_many,
                                     self.decode_thread.run if self.decode_thread is not None else self.engine.run,
                                     config.vae_decoder.resolved_max_batch_size(device))

    async def encode(self, request: TextRequest) -> TextEmbeddings:
        return await self.text.encode(request)

    async def embed(self, text: str) -> EncodedText:
        return await self.text.embed(text)

    async def condition(self, request: GenerationRequest) -> ImageConditioning:
        if self.image is None:
            raise ValueError(f"{self.spec.name} is a text-to-video model; it has no image conditioning")
        return await self.image.condition(request)

    async def decode(self, latents: Latents, fps: int) -> Frames:
        return await self.decodes.decode(latents, fps)


def decodes_on_own_thread(config: AppConfig) -> bool:
    """``vae_decoder.colocated_thread``, with auto resolved: a thread of their own on a CPU, where the
    DiT's small ops leave cores idle that a concurrent decode fills; the engine's thread on a GPU."""
    setting = config.vae_decoder.colocated_thread
    if setting == "auto":
        return config.resolved_device() == "cpu"
    return setting == "own"
