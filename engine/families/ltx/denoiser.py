"""The LTX-Video DiT on the batched step protocol, as LTXPipeline / LTXImageToVideoPipeline run it.

LTX denoises *packed* latents ([1, tokens, C]) with a flow-match scheduler whose shift
follows the video's token count (``mu``), and passes the latent size and a rotary scale
that depends on the frame rate to every forward: requests of one batch key share them.
Image-to-video keeps the first latent frame as the sampled image latents: its tokens
get timestep 0 and the scheduler steps only the frames after it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from engine.models.model_source import local_model_directory
from engine.models.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stage_types import DenoiseTask, GenerationRequest, ImageConditioning, TextEmbeddings
from engine.stages.denoiser import BatchedDenoiser, DenoiseState


class LTXDenoiser(BatchedDenoiser):
    blocks_attribute = "transformer_blocks"

    def __init__(self, spec: ModelSpec, placement: StagePlacement | None = None, compile_transformer: bool = False):
        from diffusers import FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

        placement = placement or StagePlacement()
        root = local_model_directory(spec, "transformer", "scheduler")
        transformer = LTXVideoTransformer3DModel.from_pretrained(root, subfolder="transformer",
                                                                 torch_dtype=placement.torch_dtype)
        super().__init__(spec, placement, [transformer], compile_transformer)
        self._scheduler_config = FlowMatchEulerDiscreteScheduler.load_config(root, subfolder="scheduler")
        self._patch_t, self._patch, _ = spec.geometry.patch_size

    # -- prepare: the seeded draws, in LTX's order ---------------------------------------

    def prepare(self, request: GenerationRequest, text: TextEmbeddings,
                image: ImageConditioning | None) -> DenoiseTask:
        from diffusers import LTXImageToVideoPipeline, LTXPipeline
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
        from diffusers.utils.torch_utils import randn_tensor

        # One CPU generator for every draw of the request, as the pipeline uses one generator:
        # the image latents' sample (image-to-video), the noise, and later the VAE's decode noise.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        shape = self.spec.geometry.latent_shape(request.num_frames, request.height, request.width)
        if image is None:
            latents = randn_tensor(shape, generator=generator, dtype=torch.float32)
        else:
            # On the CPU, like the noise: a seed then means the same video on every device.
            sample = DiagonalGaussianDistribution(image.condition.cpu()).sample(generator).to(torch.float32)
            first = LTXImageToVideoPipeline._normalize_latents(sample, image.latents_mean.cpu(), image.latents_std.cpu())
            first = first.repeat(1, 1, shape[2], 1, 1)
            mask = _first_frame_mask(shape)
            noise = randn_tensor(shape, generator=generator, dtype=torch.float32)
            latents = first * mask + noise * (1 - mask)
        return self._task(request, text, image, LTXPipeline._pack_latents(latents, self._patch, self._patch_t),
                          generator_state=generator.get_state())

    def _new_scheduler(self, task: DenoiseTask):
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift, retrieve_timesteps

        scheduler = self._scheduler_with_shift(self._scheduler_config, task)
        steps = task.num_inference_steps
        _, _, frames, height, width = self._latent_shape(task)
        config = scheduler.config
        mu = calculate_shift(frames * height * width, config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        retrieve_timesteps(scheduler, steps, self.device, None, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        return scheduler

    # -- the step ------------------------------------------------------------------------

    def _request_inputs(self, state: DenoiseState) -> dict[str, Any]:
        from diffusers import LTXPipeline

        if state.task.image is None:
            return {}
        mask = _first_frame_mask(self._latent_shape(state.task)).to(self.device)
        return {"conditioning_mask": LTXPipeline._pack_latents(mask, self._patch, self._patch_t).squeeze(-1)}

    def _row_inputs(self, state: DenoiseState, conditional: bool) -> dict[str, torch.Tensor | None]:
        text = state.task.text
        embeds = text.prompt_embeds if conditional else text.negative_prompt_embeds
        mask = text.prompt_attention_mask if conditional else text.negative_prompt_attention_mask
        timestep = state.timestep.expand(1)
        if "conditioning_mask" in state.inputs:
            timestep = timestep.unsqueeze(-1) * (1 - state.inputs["conditioning_mask"])
        return {
            "hidden_states": state.latents.to(self.dtype),
            "encoder_hidden_states": embeds.to(self.device, self.dtype),
            "timestep": timestep,
            "encoder_attention_mask": mask.to(self.device),
        }

    def _shared_inputs(self, states: Sequence[DenoiseState]) -> dict[str, Any]:
        task = states[0].task
        _, _, frames, height, width = self._latent_shape(task)
        geometry = self.spec.geometry
        return {
            "num_frames": frames,
            "height": height,
            "width": width,
            "rope_interpolation_scale": (geometry.temporal_factor / task.fps, geometry.spatial_factor,
                                         geometry.spatial_factor),
        }

    def _prediction(self, output_row: torch.Tensor) -> torch.Tensor:
        return output_row.float()

    def _advance(self, state: DenoiseState, noise_pred: torch.Tensor) -> None:
        if "conditioning_mask" not in state.inputs:
            super()._advance(state, noise_pred)
            return
        # Image-to-video: the first latent frame stays the image's; the scheduler steps the rest.
        noise_pred, latents = self._unpack(noise_pred, state.task), self._unpack(state.latents, state.task)
        stepped = state.scheduler.step(noise_pred[:, :, 1:], state.timestep, latents[:, :, 1:], return_dict=False)[0]
        state.latents = self._pack(torch.cat([latents[:, :, :1], stepped], dim=2))

    def _final_latents(self, state: DenoiseState) -> torch.Tensor:
        return self._unpack(state.latents, state.task)

    def _batch_key_extra(self, task: DenoiseTask) -> Hashable:
        # The rotary scale depends on the frame rate, and text-to-video rows take one
        # timestep where image-to-video rows take one per token. Packed latents of different
        # videos can have one shape (32x32x9 and 96x32x1 both pack to 192 tokens), but the
        # rotary grid is the video's: the size is part of the key.
        return ("fps", task.fps, "image", task.image is not None, "video_size", task.video_size)

    # -- shapes --------------------------------------------------------------------------

    def _latent_shape(self, task: DenoiseTask) -> tuple[int, int, int, int, int]:
        return self.spec.geometry.latent_shape(*task.video_size)

    def _pack(self, latents: torch.Tensor) -> torch.Tensor:
        from diffusers import LTXPipeline

        return LTXPipeline._pack_latents(latents, self._patch, self._patch_t)

    def _unpack(self, latents: torch.Tensor, task: DenoiseTask) -> torch.Tensor:
        from diffusers import LTXPipeline

        _, _, frames, height, width = self._latent_shape(task)
        return LTXPipeline._unpack_latents(latents, frames, height, width, self._patch, self._patch_t)

    def _example_text(self) -> TextEmbeddings:
        length, channels = self.spec.geometry.text_max_length, self.transformer.config.caption_channels
        return TextEmbeddings(prompt_embeds=torch.zeros(1, length, channels), negative_prompt_embeds=None,
                              prompt_attention_mask=torch.ones(1, length, dtype=torch.bool))

    def _example_image_conditioning(self, request: GenerationRequest) -> ImageConditioning:
        _, channels, _, height, width = self.spec.geometry.latent_shape(request.num_frames, request.height,
                                                                         request.width)
        return ImageConditioning(image_embeds=None, condition=torch.zeros(1, 2 * channels, 1, height, width),
                                 latents_mean=torch.zeros(channels), latents_std=torch.ones(channels))


def _first_frame_mask(latent_shape: tuple[int, ...]) -> torch.Tensor:
    _, _, frames, height, width = latent_shape
    mask = torch.zeros(1, 1, frames, height, width)
    mask[:, :, 0] = 1.0
    return mask
