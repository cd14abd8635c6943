"""The DiT forward through ``torch.compile`` for the step shapes warmed at start-up (see compiled_for_shapes).

The batch dimension is compiled dynamic, so one graph serves any number of requests in
a step; a one-row step (one request without guidance) runs eagerly, because a batch of
one would specialise the graph and compile it a second time. Works for any family's
transformer: a step's shape is read from whatever inputs its family passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from engine.compiling.compiled_for_shapes import CompiledForShapes

MIN_COMPILED_ROWS = 2


@dataclass(frozen=True)
class StepShape:
    """Everything about one DiT forward's inputs that a compiled graph is specialised on, bar the batch size.

    Per tensor argument its shape without the batch dimension and its dtype; every other
    argument (LTX's latent sizes and rotary scale) by value.
    """

    arguments: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, inputs: dict[str, Any]) -> StepShape:
        described = []
        for name in sorted(inputs):
            value = inputs[name]
            if isinstance(value, torch.Tensor):
                described.append((name, (tuple(value.shape[1:]), value.dtype)))
            else:
                described.append((name, value))
        return cls(tuple(described))


def rows_of(inputs: dict[str, Any]) -> int:
    return inputs["hidden_states"].shape[0]


class CompiledTransformer:
    """Calls a diffusers transformer compiled for the warmed step shapes and eagerly for the rest."""

    def __init__(self, transformer: torch.nn.Module):
        self.transformer = transformer
        self._compiled = torch.compile(transformer)
        self.shapes = CompiledForShapes("DiT forward")

    @property
    def counters(self):
        return self.shapes.counters

    @torch.no_grad()
    def warm_up(self, inputs: dict[str, Any]) -> None:
        """Compile for the shape of ``inputs`` (a batch of MIN_COMPILED_ROWS or more rows)."""
        if rows_of(inputs) < MIN_COMPILED_ROWS:
            raise ValueError(f"warm up with at least {MIN_COMPILED_ROWS} rows (got {rows_of(inputs)})")
        self.shapes.warm_up(StepShape.of(inputs), lambda: self._call_compiled(inputs))

    def __call__(self, **inputs: Any) -> torch.Tensor:
        return self.shapes.run(
            StepShape.of(inputs),
            compiled=lambda: self._call_compiled(inputs),
            eager=lambda: self.transformer(**inputs, return_dict=False)[0],
            eligible=rows_of(inputs) >= MIN_COMPILED_ROWS,
        )

    def _call_compiled(self, inputs: dict[str, Any]) -> torch.Tensor:
        for value in inputs.values():
            if isinstance(value, torch.Tensor):
                torch._dynamo.mark_dynamic(value, 0)
        return self._compiled(**inputs, return_dict=False)[0]
