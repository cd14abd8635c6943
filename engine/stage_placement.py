"""Where a stage's model runs and in which dtype."""

from __future__ import annotations

from dataclasses import dataclass

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Wan keeps its VAE and CLIP image encoder in float32 on GPUs (as diffusers' Wan examples
# do); the DiT and UMT5 run in bfloat16 there. CPUs run everything in float32.
_GPU_DTYPES = {"transformer": "bfloat16", "text_encoder": "bfloat16", "vae": "float32", "image_encoder": "float32"}


@dataclass(frozen=True)
class StagePlacement:
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self):
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)} (got {self.dtype!r})")

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    @classmethod
    def default_for(cls, component: str, device: str) -> StagePlacement:
        if device.startswith("cuda"):
            return cls(device=device, dtype=_GPU_DTYPES[component])
        return cls(device=device, dtype="float32")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
