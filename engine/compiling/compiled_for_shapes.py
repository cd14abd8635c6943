"""``torch.compile`` for the input shapes compiled at start-up only; eager for every other shape.

Inductor fuses the models' elementwise work (the DiT's fp32 layer norms, AdaLN
modulation, GELU and rotary embeddings; the VAE decoder's norms, SiLUs and causal-conv
padding) into few kernels. Matmuls, convolutions and attention stay what they were, and
outputs stay within float rounding of the eager module (tests/test_compiled_models.py).

Compiling a shape takes tens of seconds (over a minute for the ``bench`` preset's VAE
decoder on a 2-core CPU), and a replica's model thread does nothing else meanwhile:
every request in the Denoiser's running batch would wait. So a stage compiles its
shapes once, in ``warm_up`` when the replica starts; at serving time a shape that was
not warmed runs the eager module, and a warmed shape whose guards still ask for a
recompile (one we did not foresee) falls back to eager from then on. Serving never
stalls on the compiler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

import torch

logger = logging.getLogger("videoserve.engine")

T = TypeVar("T")


@dataclass
class CompileCounters:
    compiled_calls: int = 0
    eager_calls: int = 0
    # Calls of a warmed shape that still asked for a recompile; that shape runs eagerly since.
    recompile_fallbacks: int = 0


class CompiledForShapes:
    """Chooses, per call, between a compiled and an eager way of computing the same thing."""

    def __init__(self, what: str):
        self.what = what  # for log lines: "DiT forward", "VAE decode"
        self._warm: set[Hashable] = set()
        self._reported_eager: set[Hashable] = set()
        self.counters = CompileCounters()

    @property
    def warmed_shapes(self) -> frozenset:
        return frozenset(self._warm)

    def warm_up(self, shape: Hashable, compiled: Callable[[], T]) -> T:
        """Run (and so compile) ``compiled`` for ``shape`` now; later calls of that shape reuse it."""
        result = compiled()
        self._warm.add(shape)
        return result

    def run(self, shape: Hashable, compiled: Callable[[], T], eager: Callable[[], T], eligible: bool = True) -> T:
        """``compiled()`` when ``shape`` was warmed (and the caller calls it ``eligible``), else ``eager()``."""
        if eligible and shape in self._warm:
            try:
                with torch.compiler.set_stance("fail_on_recompile"):
                    result = compiled()
                self.counters.compiled_calls += 1
                return result
            except (torch._dynamo.exc.RecompileError, RuntimeError) as error:
                # The stance refuses before any compiled code runs, so nothing is half done.
                if not _is_recompile_refusal(error):
                    raise
                self._warm.discard(shape)
                self._reported_eager.add(shape)
                self.counters.recompile_fallbacks += 1
                logger.warning("compiled %s would recompile for %s (%s); that shape runs eagerly from now on",
                               self.what, shape, error)
        if eligible and shape not in self._warm and shape not in self._reported_eager:
            self._reported_eager.add(shape)
            logger.warning("%s runs eagerly for %s: that shape was not compiled at start-up", self.what, shape)
        self.counters.eager_calls += 1
        return eager()


def _is_recompile_refusal(error: Exception) -> bool:
    # torch raises a plain RuntimeError for the fail_on_recompile stance.
    return isinstance(error, torch._dynamo.exc.RecompileError) or str(error).startswith("Detected recompile")
