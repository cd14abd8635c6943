"""The Wan DiT on the batched step protocol: Wan 2.1, Wan 2.2 A14B (two experts) and TI2V-5B.

One request's row, as WanPipeline / WanImageToVideoPipeline build it:
- text-to-video: the latents;
- Wan 2.1 / A14B image-to-video: the latents with the first-frame mask and latents as
  extra channels, and (2.1) CLIP image embeds beside the text;
- TI2V (``expand_timesteps``): one timestep per token; for image-to-video the first
  latent frame is the image's latents at every step, and its tokens get timestep 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from engine.families.wan.compact_text_attention import KEY_BIAS_INPUT, compact_padded_text, install, real_text_length
from engine.families.wan.distinct_timestep_embedding import install as install_distinct_timesteps
from engine.initial_noise import initial_latents
from engine.models.model_source import local_model_directory
from engine.models.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stage_types import DenoiseTask, GenerationRequest, ImageConditioning, TextEmbeddings
from engine.stages.denoiser import BatchedDenoiser, DenoiseState
from engine.step_cache.caching_blocks import CachingRow

EXPERT_FOLDERS = ("transformer", "transformer_2")


class WanDenoiser(BatchedDenoiser):
    def __init__(self, spec: ModelSpec, placement: StagePlacement | None = None, compile_transformer: bool = False,
                 compact_text: bool = True, distinct_timesteps: bool = True):
        from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

        placement = placement or StagePlacement()
        folders = EXPERT_FOLDERS[: spec.experts]
        root = local_model_directory(spec, *folders, "scheduler")
        transformers = [
            WanTransformer3DModel.from_pretrained(root, subfolder=folder, torch_dtype=placement.torch_dtype)
            for folder in folders
        ]
        super().__init__(spec, placement, transformers, compile_transformer)
        # Cross-attention over each row's real text positions plus one for the padding: exact
        # (engine/families/wan/compact_text_attention.py). Not where the cross-attention also
        # holds image tokens (Wan 2.1 image-to-video: diffusers splits them off by the count of
        # 512 text positions), not for a compiled forward (fixed shapes), and float32 only: in
        # half precision the padding's log-count bias would itself be rounded. compact_text=False:
        # diffusers' forward over all 512 (what a compiled denoiser's eager fallback runs);
        # distinct_timesteps=False: its per-token timestep embedding, every token on its own.
        self._text_processors = None
        if (compact_text and self.transformer.config.added_kv_proj_dim is None and not compile_transformer
                and self.dtype == torch.float32):
            self._text_processors = [install(transformer, rows=lambda blocks=blocks: blocks.running_rows)
                                     for transformer, blocks in zip(self.transformers, self.caching_blocks)]
        self._expand_timesteps = bool(WanPipeline.load_config(root).get("expand_timesteps"))
        if self._expand_timesteps and distinct_timesteps and not compile_transformer:
            # Per-token timestep embeddings once per distinct timestep (distinct_timestep_embedding.py).
            for transformer in self.transformers:
                install_distinct_timesteps(transformer)
        self._scheduler_config = UniPCMultistepScheduler.load_config(root, subfolder="scheduler")

    def prepare(self, request: GenerationRequest, text: TextEmbeddings,
                image: ImageConditioning | None) -> DenoiseTask:
        return self._task(request, text, image, initial_latents(request, self.spec.geometry))

    def _new_scheduler(self, task: DenoiseTask):
        scheduler = self._scheduler_with_shift(self._scheduler_config, task)
        scheduler.set_timesteps(task.num_inference_steps, device=self.device)
        scheduler.set_begin_index(0)
        return scheduler

    def _request_inputs(self, state: DenoiseState) -> dict[str, Any]:
        image = state.task.image
        inputs: dict[str, Any] = {}
        if image is not None:
            inputs["condition"] = image.condition.to(self.device)
            if image.image_embeds is not None:
                inputs["image_embeds"] = image.image_embeds.to(self.device, self.dtype)
        if self._text_processors is not None:  # measured once a request, not every step
            text = state.task.text
            inputs["text_lengths"] = {
                conditional: real_text_length(embeds) for conditional, embeds in
                ((True, text.prompt_embeds), (False, text.negative_prompt_embeds)) if embeds is not None}
        if self._expand_timesteps:
            if image is None:
                mask = torch.ones(state.latents.shape, dtype=torch.float32, device=self.device)
            else:
                # The first latent frame is the image: it stays as given and is "already denoised".
                _, _, frames, height, width = state.latents.shape
                mask = torch.ones(1, 1, frames, height, width, dtype=torch.float32, device=self.device)
                mask[:, :, 0] = 0
                inputs["first_frame_mask"] = mask
            _, p_h, p_w = self.spec.geometry.patch_size
            # One timestep per token, as WanPipeline lays them out (its [:, ::2, ::2] with the 2x2 patch).
            inputs["token_mask"] = mask[0][0][:, ::p_h, ::p_w].flatten()
        return inputs

    def _model_input(self, state: DenoiseState) -> torch.Tensor:
        inputs = state.inputs
        if "first_frame_mask" in inputs:
            mask = inputs["first_frame_mask"]
            return (1 - mask) * inputs["condition"] + mask * state.latents
        if "condition" in inputs:
            return torch.cat([state.latents, inputs["condition"]], dim=1)
        return state.latents

    def _row_inputs(self, state: DenoiseState, conditional: bool) -> dict[str, torch.Tensor | None]:
        text = state.task.text
        embeds = text.prompt_embeds if conditional else text.negative_prompt_embeds
        if self._expand_timesteps:
            timestep = (state.inputs["token_mask"] * state.timestep).unsqueeze(0)
        else:
            timestep = state.timestep.expand(1)
        return {
            "hidden_states": self._model_input(state).to(self.dtype),
            "timestep": timestep,
            "encoder_hidden_states": embeds.to(self.device, self.dtype),
            "encoder_hidden_states_image": state.inputs.get("image_embeds"),
        }

    def _batched_inputs(self, states: Sequence[DenoiseState], guided: Sequence[int]) -> dict[str, Any]:
        inputs = super()._batched_inputs(states, guided)
        if self._text_processors is not None:
            # Row order as the base class lays the rows out: every conditional row, then the unconditional ones.
            lengths = [state.inputs["text_lengths"][True] for state in states]
            lengths += [states[index].inputs["text_lengths"][False] for index in guided]
            inputs["encoder_hidden_states"], inputs[KEY_BIAS_INPUT] = compact_padded_text(
                inputs["encoder_hidden_states"], lengths)
        return inputs

    def _forward(self, expert: int, inputs: dict[str, Any], caching: list[CachingRow] | None = None) -> torch.Tensor:
        if KEY_BIAS_INPUT not in inputs:
            return super()._forward(expert, inputs, caching)
        inputs = dict(inputs)
        bias = inputs.pop(KEY_BIAS_INPUT)
        processors = self._text_processors[expert]
        for processor in processors:
            processor.key_bias = bias
        try:
            return super()._forward(expert, inputs, caching)
        finally:
            for processor in processors:
                processor.key_bias = None

    def _final_latents(self, state: DenoiseState) -> torch.Tensor:
        if "first_frame_mask" in state.inputs:
            mask = state.inputs["first_frame_mask"]
            return (1 - mask) * state.inputs["condition"] + mask * state.latents
        return state.latents

    def _example_text(self) -> TextEmbeddings:
        config = self.transformer.config
        return TextEmbeddings(prompt_embeds=torch.zeros(1, self.spec.geometry.text_max_length, config.text_dim),
                              negative_prompt_embeds=None)

    def _example_image_conditioning(self, request: GenerationRequest) -> ImageConditioning:
        from engine.families.wan.image_conditioner import image_embed_tokens

        geometry, config = self.spec.geometry, self.transformer.config
        _, channels, frames, height, width = geometry.latent_shape(request.num_frames, request.height, request.width)
        if self._expand_timesteps:
            return ImageConditioning(image_embeds=None, condition=torch.zeros(1, channels, 1, height, width))
        tokens = image_embed_tokens(self.spec)
        image_embeds = None if config.image_dim is None else torch.zeros(1, tokens, config.image_dim)
        condition = torch.zeros(1, config.in_channels - channels, frames, height, width)
        return ImageConditioning(image_embeds=image_embeds, condition=condition)

