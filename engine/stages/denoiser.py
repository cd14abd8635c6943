"""The Wan DiT denoiser and its step protocol.

The protocol is split so that a scheduler outside can interleave requests:
``start`` (prepare one request), ``step`` (one denoising step for a batch of started
requests whose tensors share a shape), ``finish`` (final latents). ``denoise`` runs one
request from first step to last on the same three calls, so the whole-request path and
the step-by-step path cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.compiled_transformer import CompiledTransformer, StepShape
from engine.model_registry import local_model_directory
from engine.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stage_types import DenoiseTask, Latents


class GenerationCancelled(RuntimeError):
    """Raised when a step callback asks to stop."""


@dataclass(frozen=True)
class StepProgress:
    request_id: str
    step: int  # steps completed so far, 1..total_steps
    total_steps: int


# Called after every step; returning False cancels the request.
StepCallback = Callable[[StepProgress], bool | None]


class DenoiseState:
    """One started request inside the denoiser: its own scheduler instance and latents.

    Each request owns a diffusers scheduler, so requests with different step counts,
    shifts and guidance scales can later share one batched forward.
    """

    def __init__(self, task: DenoiseTask, scheduler, latents: torch.Tensor):
        self.task = task
        self.scheduler = scheduler
        self.latents = latents
        self.steps_done = 0

    @property
    def total_steps(self) -> int:
        return len(self.scheduler.timesteps)

    @property
    def finished(self) -> bool:
        return self.steps_done >= self.total_steps

    @property
    def timestep(self) -> torch.Tensor:
        return self.scheduler.timesteps[self.steps_done]

    @property
    def uses_classifier_free_guidance(self) -> bool:
        return self.task.text.negative_prompt_embeds is not None


class WanDenoiser:
    def __init__(self, spec: ModelSpec, placement: StagePlacement | None = None, compile_transformer: bool = False):
        import diffusers
        from diffusers import WanTransformer3DModel

        self.spec = spec
        self.placement = placement or StagePlacement()
        root = local_model_directory(spec, "transformer", "scheduler")
        self.transformer = WanTransformer3DModel.from_pretrained(
            root, subfolder="transformer", torch_dtype=self.placement.torch_dtype
        )
        self.transformer.to(self.placement.device).eval()
        # Compiled only for the shapes warm_up_compiled() prepares; everything else runs eagerly.
        self.compiled = CompiledTransformer(self.transformer) if compile_transformer else None
        self._scheduler_config = diffusers.UniPCMultistepScheduler.load_config(root, subfolder="scheduler")
        # Any scheduler config file reads the same; the class named inside it is the one built.
        self._scheduler_class = getattr(diffusers, self._scheduler_config["_class_name"])

    @property
    def device(self) -> torch.device:
        return torch.device(self.placement.device)

    def warm_up_compiled(self, width: int, height: int, num_frames: int, image_tokens: int | None = None) -> StepShape:
        """Compile the forward for requests of this size (slow: call it before serving)."""
        if self.compiled is None:
            raise ValueError("warm_up_compiled() needs WanDenoiser(compile_transformer=True)")
        config = self.transformer.config
        _, _, frames, latent_height, latent_width = self.spec.geometry.latent_shape(num_frames, height, width)
        image_dim = config.get("image_dim") if self.spec.is_image_to_video else None
        if image_dim is not None and image_tokens is None:
            raise ValueError(f"{self.spec.name} conditions on image embeds: warm_up_compiled() needs image_tokens")
        shape = StepShape(
            hidden_states=(config.in_channels, frames, latent_height, latent_width),
            encoder_hidden_states=(self.spec.geometry.text_max_length, config.text_dim),
            image_embeds=None if image_dim is None else (image_tokens, image_dim),
            dtype=self.transformer.dtype,
            timestep_dtype=self._new_scheduler({}).timesteps.dtype,
        )
        self.compiled.warm_up(shape)
        return shape

    def start(self, task: DenoiseTask) -> DenoiseState:
        overrides = {}
        if task.flow_shift != self._scheduler_config.get("flow_shift", task.flow_shift):
            if "flow_shift" not in self._scheduler_config:
                raise ValueError(f"{self._scheduler_class.__name__} has no flow_shift to override")
            overrides["flow_shift"] = task.flow_shift
        scheduler = self._new_scheduler(overrides, task.num_inference_steps)
        return DenoiseState(task, scheduler, task.initial_latents.to(self.device, dtype=torch.float32))

    def _new_scheduler(self, overrides: dict, num_inference_steps: int = 2):
        scheduler = self._scheduler_class.from_config(self._scheduler_config, **overrides)
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        scheduler.set_begin_index(0)
        return scheduler

    @torch.no_grad()
    def step(self, states: Sequence[DenoiseState]) -> None:
        """Advance every state by one step: one batched forward, then each request's own scheduler."""
        if any(state.finished for state in states):
            raise ValueError("step() got a request that has already finished")
        noise_predictions = self._predict_noise(states)
        for state, noise_pred in zip(states, noise_predictions):
            state.latents = state.scheduler.step(noise_pred, state.timestep, state.latents, return_dict=False)[0]
            state.steps_done += 1

    def finish(self, state: DenoiseState) -> Latents:
        if not state.finished:
            raise ValueError(f"request {state.task.request_id} has {state.total_steps - state.steps_done} steps left")
        return Latents(request_id=state.task.request_id, latents=state.latents)

    def denoise(self, task: DenoiseTask, on_step: StepCallback | None = None) -> Latents:
        state = self.start(task)
        while not state.finished:
            self.step([state])
            if on_step is not None:
                progress = StepProgress(task.request_id, state.steps_done, state.total_steps)
                if on_step(progress) is False:
                    raise GenerationCancelled(f"request {task.request_id} cancelled after step {state.steps_done}")
        return self.finish(state)

    def _predict_noise(self, states: Sequence[DenoiseState]) -> list[torch.Tensor]:
        """One forward for the whole step: every request's conditional row, then the
        unconditional rows of those that use classifier-free guidance."""
        dtype = self.transformer.dtype
        model_input = torch.cat([self._model_input(state) for state in states]).to(dtype)
        timestep = torch.stack([state.timestep for state in states])
        image_embeds = self._image_embeds(states)
        guided = [index for index, state in enumerate(states) if state.uses_classifier_free_guidance]
        text = [state.task.text.prompt_embeds for state in states]
        text += [states[index].task.text.negative_prompt_embeds for index in guided]
        if guided:
            model_input = torch.cat([model_input, model_input[guided]])
            timestep = torch.cat([timestep, timestep[guided]])
            if image_embeds is not None:
                image_embeds = torch.cat([image_embeds, image_embeds[guided]])
        output = self._forward(model_input, timestep, torch.cat(text), image_embeds)
        predictions = [output[index : index + 1] for index in range(len(states))]
        for row, index in enumerate(guided, start=len(states)):
            noise_uncond = output[row : row + 1]
            scale = states[index].task.guidance_scale
            # Same expression, same order of operations as WanPipeline.
            predictions[index] = noise_uncond + scale * (predictions[index] - noise_uncond)
        return predictions

    def _forward(self, hidden_states, timestep, encoder_hidden_states, image_embeds) -> torch.Tensor:
        encoder_hidden_states = encoder_hidden_states.to(self.device, self.transformer.dtype)
        inputs = {"hidden_states": hidden_states, "timestep": timestep, "encoder_hidden_states": encoder_hidden_states,
                  "encoder_hidden_states_image": image_embeds}
        if self.compiled is not None:
            return self.compiled(**inputs)
        return self.transformer(**inputs, return_dict=False)[0]

    def _model_input(self, state: DenoiseState) -> torch.Tensor:
        if state.task.image is None:
            return state.latents
        # Image-to-video: the first-frame mask and latents ride along as extra channels.
        return torch.cat([state.latents, state.task.image.condition.to(self.device)], dim=1)

    def _image_embeds(self, states: Sequence[DenoiseState]) -> torch.Tensor | None:
        embeds = [state.task.image.image_embeds for state in states if state.task.image is not None]
        if not embeds or embeds[0] is None:
            return None
        return torch.cat(embeds).to(self.device, self.transformer.dtype)
