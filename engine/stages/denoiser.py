"""The DiT denoiser's step protocol, shared by every model family.

The protocol is split so that a scheduler outside can interleave requests:
``prepare`` (seeded initial latents and everything else a request needs), ``start``
(its own diffusers scheduler), ``step`` (one denoising step for a batch of started
requests whose tensors share a shape), ``finish`` (final latents). ``denoise`` runs one
request from first step to last on the same calls, so the whole-request path and the
step-by-step path cannot drift apart.

``BatchedDenoiser`` does what is the same for every family: one forward per step with
every request's conditional row and then the unconditional rows of those that use
classifier-free guidance, each request's own scheduler (different step counts, shifts
and guidance scales share a batch), and two-expert models (Wan 2.2 A14B), where each
request's expert at each step follows from its own timesteps. A family says only how
one request's rows look to its transformer, how a prediction advances its latents, and
how to prepare and finish a request.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from engine.compiling.compiled_transformer import CompiledTransformer, StepShape
from engine.models.model_spec import ModelSpec, Task
from engine.stage_placement import StagePlacement
from engine.stage_types import DenoiseTask, GenerationRequest, ImageConditioning, Latents, TextEmbeddings
from engine.step_cache.caching_blocks import CachingRow, StepCachingBlocks, install_step_caching
from engine.step_cache.row_cache import RowCache


class GenerationCancelled(RuntimeError):
    """Raised when a step callback asks to stop."""


@dataclass(frozen=True)
class StepProgress:
    request_id: str
    step: int  # steps completed so far, 1..total_steps
    total_steps: int


# Called after every step; returning False cancels the request.
StepCallback = Callable[[StepProgress], bool | None]

HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT = 0, 1


class RowSplit(Protocol):
    """Runs a step's batched forward with the rows shared out over ranks, and gives every rank all rows' output."""

    def forward(self, run: Callable[[dict[str, Any], list[CachingRow] | None], torch.Tensor], inputs: dict[str, Any],
                caching: list[CachingRow] | None, conditional: Sequence[bool]) -> torch.Tensor:
        """``run(inputs, caching)`` is the transformer on some rows; ``conditional[i]``: row i is a conditional row."""


class DenoiseState:
    """One started request inside the denoiser: its own scheduler instance and latents.

    ``experts[i]`` is the transformer that runs step i (always 0 on one-expert models);
    ``inputs`` holds the family's per-request constants (masks, ...), built once at start.
    """

    def __init__(self, task: DenoiseTask, scheduler, latents: torch.Tensor, experts: tuple[int, ...]):
        self.task = task
        self.scheduler = scheduler
        self.latents = latents
        self.experts = experts
        self.steps_done = 0
        self.inputs: dict[str, Any] = {}
        # Step caching: one cache per row (conditional, unconditional); None without it.
        self.row_caches: dict[bool, RowCache] | None = None

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
    def expert(self) -> int:
        return self.experts[self.steps_done]

    @property
    def guidance_scale(self) -> float:
        """This step's guidance: the low-noise expert has its own (guidance_scale_2), as in diffusers."""
        if self.expert == LOW_NOISE_EXPERT and self.task.guidance_scale_2 is not None:
            return self.task.guidance_scale_2
        return self.task.guidance_scale

    @property
    def uses_classifier_free_guidance(self) -> bool:
        return self.task.text.negative_prompt_embeds is not None


class BatchedDenoiser:
    """The family-independent half of a Denoiser; subclasses fill in the hooks at the bottom."""

    # The attribute of the family's transformer that holds its list of blocks (step caching).
    blocks_attribute = "blocks"

    def __init__(self, spec: ModelSpec, placement: StagePlacement | None, transformers: Sequence[torch.nn.Module],
                 compile_transformer: bool = False):
        if len(transformers) != spec.experts:
            raise ValueError(f"{spec.name} has {spec.experts} expert(s) but {len(transformers)} transformer(s) were given")
        self.spec = spec
        self.placement = placement or StagePlacement()
        self.transformers = list(transformers)
        for transformer in self.transformers:
            transformer.to(self.placement.device).eval()
        # Set by a CFG-parallel gang (engine/parallel/cfg_parallel.py): which rows of a step this rank runs.
        self.row_split: RowSplit | None = None
        # Without step-cached rows in a step, these iterate as the model's own blocks (same forward).
        self.caching_blocks: list[StepCachingBlocks] = [install_step_caching(t, self.blocks_attribute)
                                                        for t in self.transformers]
        # Compiled only for the shapes warm_up_compiled() prepares; everything else runs eagerly.
        self.compiled = [CompiledTransformer(t) for t in self.transformers] if compile_transformer else None

    @property
    def transformer(self) -> torch.nn.Module:
        """The (high-noise) transformer; the only one on one-expert models."""
        return self.transformers[0]

    @property
    def device(self) -> torch.device:
        return torch.device(self.placement.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    # -- the step protocol -------------------------------------------------------------

    def start(self, task: DenoiseTask) -> DenoiseState:
        scheduler = self._new_scheduler(task)
        state = DenoiseState(task, scheduler, task.initial_latents.to(self.device, dtype=torch.float32),
                             self._expert_schedule(scheduler))
        state.inputs = self._request_inputs(state)
        if task.step_cache is not None:
            state.row_caches = {True: RowCache(task.step_cache), False: RowCache(task.step_cache)}
        return state

    @torch.no_grad()
    def step(self, states: Sequence[DenoiseState]) -> None:
        """Advance every state by one step: one batched forward, then each request's own scheduler."""
        if any(state.finished for state in states):
            raise ValueError("step() got a request that has already finished")
        experts = {state.expert for state in states}
        if len(experts) != 1:
            raise ValueError(f"one step runs one expert, but this batch needs experts {sorted(experts)}")
        predictions = self._predict_noise(states, experts.pop())
        for state, prediction in zip(states, predictions):
            self._advance(state, prediction)
            state.steps_done += 1

    def finish(self, state: DenoiseState) -> Latents:
        if not state.finished:
            raise ValueError(f"request {state.task.request_id} has {state.total_steps - state.steps_done} steps left")
        reused = None if state.row_caches is None else state.row_caches[True].reused_steps
        return Latents(request_id=state.task.request_id, latents=self._final_latents(state),
                       generator_state=state.task.generator_state, reused_steps=reused)

    def denoise(self, task: DenoiseTask, on_step: StepCallback | None = None) -> Latents:
        state = self.start(task)
        while not state.finished:
            self.step([state])
            if on_step is not None:
                progress = StepProgress(task.request_id, state.steps_done, state.total_steps)
                if on_step(progress) is False:
                    raise GenerationCancelled(f"request {task.request_id} cancelled after step {state.steps_done}")
        return self.finish(state)

    def batch_key(self, task: DenoiseTask) -> Hashable:
        """Everything that changes a step's tensor shapes or call arguments: equal keys can share a forward.

        The expert is not in it: it changes from step to step (DenoiseState.experts), and
        the engine keys each step on it.
        """
        text, image = task.text, task.image
        return (
            tuple(task.initial_latents.shape),
            tuple(text.prompt_embeds.shape),
            None if text.prompt_attention_mask is None else tuple(text.prompt_attention_mask.shape),
            None if image is None else tuple(image.condition.shape),
            None if image is None or image.image_embeds is None else tuple(image.image_embeds.shape),
            self._batch_key_extra(task),
        )

    def step_tokens(self, task: DenoiseTask) -> int:
        """Transformer tokens this request adds to one step's forward (CFG doubles them)."""
        tokens = self.spec.geometry.tokens(*task.video_size)
        return tokens * (2 if task.text.negative_prompt_embeds is not None else 1)

    # -- compile -----------------------------------------------------------------------

    @torch.no_grad()
    def warm_up_compiled(self, width: int, height: int, num_frames: int) -> list[StepShape]:
        """Compile every expert's forward for requests of this size, for each task the model runs.

        Slow: call it before serving. The inputs are built by the same code as a served
        step's, from a stand-in request, so their shapes are exactly those a request of
        this size brings.
        """
        if self.compiled is None:
            raise ValueError("warm_up_compiled() needs compile_transformer=True")
        shapes = []
        for task in sorted(self.spec.tasks, key=lambda task: task.value):
            request = GenerationRequest(
                request_id="compile-warm-up", model=self.spec.name, task=task, prompt="", negative_prompt="",
                width=width, height=height, num_frames=num_frames, num_inference_steps=2, guidance_scale=1.0,
                flow_shift=self.spec.defaults.flow_shift, seed=0, fps=self.spec.defaults.fps,
            )
            image = self._example_image_conditioning(request) if task is Task.IMAGE_TO_VIDEO else None
            prepared = self.prepare(request, self._example_text(), image)
            states = [self.start(prepared) for _ in range(2)]
            inputs = self._batched_inputs(states, guided=[])
            for compiled in self.compiled:
                compiled.warm_up(inputs)
            shapes.append(StepShape.of(inputs))
        return shapes

    # -- the batched forward -------------------------------------------------------------

    def _predict_noise(self, states: Sequence[DenoiseState], expert: int) -> list[torch.Tensor]:
        """One forward for the whole step: every request's conditional row, then the
        unconditional rows of those that use classifier-free guidance."""
        guided = [index for index, state in enumerate(states) if state.uses_classifier_free_guidance]
        rows = [(state, True) for state in states] + [(states[index], False) for index in guided]
        inputs, caching = self._batched_inputs(states, guided), self._caching_rows(rows, expert)
        if self.row_split is not None:  # CFG-parallel: this rank runs its share of the rows
            output = self.row_split.forward(lambda part, part_caching: self._forward(expert, part, part_caching),
                                            inputs, caching, [conditional for _, conditional in rows])
        else:
            output = self._forward(expert, inputs, caching)
        predictions = [self._prediction(output[index : index + 1]) for index in range(len(states))]
        for row, index in enumerate(guided, start=len(states)):
            noise_uncond = self._prediction(output[row : row + 1])
            scale = states[index].guidance_scale
            # Same expression, same order of operations as diffusers' Wan and LTX pipelines.
            predictions[index] = noise_uncond + scale * (predictions[index] - noise_uncond)
        return predictions

    def _batched_inputs(self, states: Sequence[DenoiseState], guided: Sequence[int]) -> dict[str, Any]:
        rows = [self._row_inputs(state, conditional=True) for state in states]
        rows += [self._row_inputs(states[index], conditional=False) for index in guided]
        inputs: dict[str, Any] = {}
        for name in rows[0]:
            values = [row[name] for row in rows]
            inputs[name] = None if values[0] is None else torch.cat(values)
        return {**inputs, **self._shared_inputs(states)}

    def _forward(self, expert: int, inputs: dict[str, Any], caching: list[CachingRow] | None = None) -> torch.Tensor:
        if caching is not None:  # eager: which rows run the later blocks changes from step to step
            with self.caching_blocks[expert].caching_rows(caching):
                return self.transformers[expert](**inputs, return_dict=False)[0]
        if self.compiled is not None:
            return self.compiled[expert](**inputs)
        return self.transformers[expert](**inputs, return_dict=False)[0]

    @staticmethod
    def _caching_rows(rows: Sequence[tuple[DenoiseState, bool]], expert: int) -> list[CachingRow] | None:
        """The step's rows as step caching sees them; None when no row of the step caches."""
        if all(state.row_caches is None for state, _ in rows):
            return None
        return [CachingRow(None if state.row_caches is None else state.row_caches[conditional], state.steps_done,
                           state.total_steps, expert) for state, conditional in rows]

    def _expert_schedule(self, scheduler) -> tuple[int, ...]:
        timesteps = scheduler.timesteps
        if self.spec.boundary_ratio is None:
            return (HIGH_NOISE_EXPERT,) * len(timesteps)
        boundary = self.spec.boundary_ratio * scheduler.config.num_train_timesteps
        # The comparison diffusers makes (a tensor against a float), so the switch falls on the same step.
        return tuple(HIGH_NOISE_EXPERT if bool(t >= boundary) else LOW_NOISE_EXPERT for t in timesteps)

    # -- for the families ------------------------------------------------------------------

    def _task(self, request: GenerationRequest, text: TextEmbeddings, image: ImageConditioning | None,
              initial_latents: torch.Tensor, generator_state: torch.Tensor | None = None) -> DenoiseTask:
        return DenoiseTask(
            request_id=request.request_id,
            initial_latents=initial_latents,
            text=text,
            image=image,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            guidance_scale_2=request.guidance_scale_2,
            flow_shift=request.flow_shift,
            video_size=(request.num_frames, request.height, request.width),
            fps=request.fps,
            generator_state=generator_state,
            step_cache=request.step_cache,
        )

    def _scheduler_with_shift(self, scheduler_config: dict, task: DenoiseTask):
        """A fresh scheduler of the checkpoint's config, with the request's flow shift where it sets one."""
        from engine.families.config_reading import shift_key

        overrides = {}
        key = shift_key(scheduler_config)
        if task.flow_shift is not None and task.flow_shift != scheduler_config.get(key):
            if key is None:
                raise ValueError(f"{scheduler_config['_class_name']} has no static flow shift to override")
            overrides[key] = task.flow_shift
        return new_scheduler_from_config(scheduler_config, overrides)

    # -- family hooks --------------------------------------------------------------------

    def prepare(self, request: GenerationRequest, text: TextEmbeddings,
                image: ImageConditioning | None) -> DenoiseTask:
        """The request's DenoiseTask, its initial latents drawn from its seed as the family's pipeline draws them."""
        raise NotImplementedError

    def _new_scheduler(self, task: DenoiseTask):
        """A fresh diffusers scheduler with the request's timesteps set, as the pipeline sets them."""
        raise NotImplementedError

    def _request_inputs(self, state: DenoiseState) -> dict[str, Any]:
        """Per-request constants the rows are built from (masks, ...)."""
        return {}

    def _row_inputs(self, state: DenoiseState, conditional: bool) -> dict[str, torch.Tensor | None]:
        """One request's row of every batched transformer input (batch dimension 1)."""
        raise NotImplementedError

    def _shared_inputs(self, states: Sequence[DenoiseState]) -> dict[str, Any]:
        """Transformer arguments that are one value for the whole batch (equal batch keys make them equal)."""
        return {}

    def _prediction(self, output_row: torch.Tensor) -> torch.Tensor:
        return output_row

    def _advance(self, state: DenoiseState, noise_pred: torch.Tensor) -> None:
        state.latents = state.scheduler.step(noise_pred, state.timestep, state.latents, return_dict=False)[0]

    def _final_latents(self, state: DenoiseState) -> torch.Tensor:
        """The finished request's latents as the VAE takes them: [1, C, T, h, w]."""
        return state.latents

    def _batch_key_extra(self, task: DenoiseTask) -> Hashable:
        return None

    def _example_text(self) -> TextEmbeddings:
        """Zero text embeddings of the shape the text encoder gives (for compile warm-up)."""
        raise NotImplementedError

    def _example_image_conditioning(self, request: GenerationRequest) -> ImageConditioning:
        """Zero image conditioning of the shape the image conditioner gives for ``request``."""
        raise NotImplementedError


def new_scheduler_from_config(config: dict, overrides: dict | None = None):
    """Any scheduler config file reads the same; the class named inside it is the one built."""
    import diffusers

    return getattr(diffusers, config["_class_name"]).from_config(config, **(overrides or {}))
