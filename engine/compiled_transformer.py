"""The DiT forward through ``torch.compile`` for the step shapes warmed at start-up (see compiled_for_shapes).

The batch dimension is compiled dynamic, so one graph serves any number of requests in
a step; a one-row step (one request without guidance) runs eagerly, because a batch of
one would specialise the graph and compile it a second time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.compiled_for_shapes import CompiledForShapes

MIN_COMPILED_ROWS = 2


@dataclass(frozen=True)
class StepShape:
    """Everything about one DiT forward's inputs that a compiled graph is specialised on, bar the batch size."""

    hidden_states: tuple[int, ...]  # [channels, frames, height, width] of the latents (+ I2V condition channels)
    encoder_hidden_states: tuple[int, ...]  # [text tokens, text dim]
    image_embeds: tuple[int, ...] | None  # [image tokens, image dim] for image-to-video
    dtype: torch.dtype
    timestep_dtype: torch.dtype  # the scheduler's: integer for UniPC, float for flow-match Euler

    @classmethod
    def of(cls, inputs: dict[str, torch.Tensor | None]) -> StepShape:
        image_embeds = inputs["encoder_hidden_states_image"]
        return cls(
            hidden_states=tuple(inputs["hidden_states"].shape[1:]),
            encoder_hidden_states=tuple(inputs["encoder_hidden_states"].shape[1:]),
            image_embeds=None if image_embeds is None else tuple(image_embeds.shape[1:]),
            dtype=inputs["hidden_states"].dtype,
            timestep_dtype=inputs["timestep"].dtype,
        )


class CompiledTransformer:
    """Calls a ``WanTransformer3DModel`` compiled for the warmed step shapes and eagerly for the rest."""

    def __init__(self, transformer: torch.nn.Module):
        self.transformer = transformer
        self._compiled = torch.compile(transformer)
        self.shapes = CompiledForShapes("DiT forward")

    @property
    def counters(self):
        return self.shapes.counters

    @torch.no_grad()
    def warm_up(self, shape: StepShape) -> None:
        device = next(self.transformer.parameters()).device

        def zeros(row_shape: tuple[int, ...] | None, dtype: torch.dtype) -> torch.Tensor | None:
            return None if row_shape is None else torch.zeros((MIN_COMPILED_ROWS, *row_shape), dtype=dtype,
                                                              device=device)

        inputs = {
            "hidden_states": zeros(shape.hidden_states, shape.dtype),
            "timestep": torch.full((MIN_COMPILED_ROWS,), 999, dtype=shape.timestep_dtype, device=device),
            "encoder_hidden_states": zeros(shape.encoder_hidden_states, shape.dtype),
            "encoder_hidden_states_image": zeros(shape.image_embeds, shape.dtype),
        }
        self.shapes.warm_up(shape, lambda: self._call_compiled(inputs))

    def __call__(self, **inputs: torch.Tensor | None) -> torch.Tensor:
        return self.shapes.run(
            StepShape.of(inputs),
            compiled=lambda: self._call_compiled(inputs),
            eager=lambda: self.transformer(**inputs, return_dict=False)[0],
            eligible=inputs["hidden_states"].shape[0] >= MIN_COMPILED_ROWS,
        )

    def _call_compiled(self, inputs: dict[str, torch.Tensor | None]) -> torch.Tensor:
        for tensor in inputs.values():
            if tensor is not None:
                torch._dynamo.mark_dynamic(tensor, 0)
        return self._compiled(**inputs, return_dict=False)[0]
