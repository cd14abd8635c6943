"""Which ranks of a Denoiser gang do what: the parallel layout and each rank's place in it.

A gang of ``cfg x sequence x tensor`` ranks. CFG parallelism is the outer split: ranks
``[c * inner, (c + 1) * inner)`` (``inner = sequence x tensor``) form cfg index ``c`` — 0
runs every step's conditional rows, 1 the unconditional rows — and inside each cfg index
the DiT itself is split (Ulysses or tensor) over its ``inner`` ranks. So

    rank = cfg_index * inner + inner_index

and the ranks with the same inner index (one per cfg index) form a cfg group, across which
each step's output rows are gathered. Rank 0 (the replica, which owns the engine) is cfg
index 0, inner index 0.

A mode string names the modes above one joined by "+", e.g. "cfg+sequence"; with a total
degree it gives the layout back (cfg, when named, always stands for 2: a conditional and
an unconditional side), which is how ``ParallelConfig.mode`` / ``.degree`` reach
engine/parallel without serve/ being imported here.
"""

from __future__ import annotations

from dataclasses import dataclass

# In rank order, outermost first.
MODE_NAMES = ("cfg", "sequence", "tensor")
CFG_DEGREES = (1, 2)


@dataclass(frozen=True)
class ParallelLayout:
    cfg: int = 1
    sequence: int = 1
    tensor: int = 1

    def __post_init__(self):
        for name in MODE_NAMES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"parallel.{name} must be a whole number of ranks of at least 1 (got {value!r})")
        if self.cfg not in CFG_DEGREES:
            raise ValueError(f"parallel.cfg must be 1 or 2 (one conditional and one unconditional side), not {self.cfg}")
        if self.tensor > 1 and self.sequence > 1:
            raise ValueError("parallel: set tensor or sequence above 1, not both")
        if self.cfg > 1 and self.tensor > 1:
            raise ValueError("parallel: cfg 2 combines with sequence, not with tensor; set tensor to 1 (and use "
                             "sequence) or cfg to 1")

    @classmethod
    def from_mode(cls, mode: str | None, degree: int) -> ParallelLayout:
        """The layout a mode string ("sequence", "cfg", "cfg+sequence", ...) names for ``degree`` ranks."""
        if not mode:
            if degree != 1:
                raise ValueError(f"parallel: {degree} ranks need a parallel mode")
            return cls()
        names = mode.split("+")
        unknown = [name for name in names if name not in MODE_NAMES]
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"parallel mode must be one of {MODE_NAMES} or cfg+<one of them>, not {mode!r}")
        cfg = 2 if "cfg" in names else 1
        split = [name for name in names if name != "cfg"]
        if degree % cfg:
            raise ValueError(f"parallel.cfg 2 needs an even number of ranks, not {degree}")
        inner = degree // cfg
        if not split:
            if inner != 1:
                raise ValueError(f"parallel: cfg alone splits over 2 ranks, not {degree}")
            return cls(cfg=cfg)
        if len(split) > 1:
            raise ValueError("parallel: set tensor or sequence above 1, not both")
        return cls(cfg=cfg, **{split[0]: inner})

    @property
    def degree(self) -> int:
        """Ranks in the gang: one placement-group bundle (one accelerator) each."""
        return self.cfg * self.inner

    @property
    def inner(self) -> int:
        """Ranks that split the DiT itself (Ulysses or tensor) inside one cfg index."""
        return self.sequence * self.tensor

    @property
    def modes(self) -> dict[str, int]:
        """The modes above one rank and their degrees, outermost first (e.g. {"cfg": 2, "sequence": 2})."""
        return {name: getattr(self, name) for name in MODE_NAMES if getattr(self, name) > 1}

    @property
    def mode(self) -> str | None:
        """The mode string ("cfg+sequence"); None on one rank."""
        return "+".join(self.modes) or None

    def cfg_index(self, rank: int) -> int:
        return rank // self.inner

    def inner_index(self, rank: int) -> int:
        return rank % self.inner

    def inner_groups(self) -> list[list[int]]:
        """The ranks of each cfg index, which split the DiT among themselves (cfg index order)."""
        return [[index * self.inner + position for position in range(self.inner)] for index in range(self.cfg)]

    def cfg_groups(self) -> list[list[int]]:
        """The ranks, one per cfg index, that gather a step's rows among themselves (inner index order)."""
        return [[index * self.inner + position for index in range(self.cfg)] for position in range(self.inner)]
