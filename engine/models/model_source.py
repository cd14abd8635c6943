"""Where a model's files are: a local directory, or the needed components of a hub snapshot.

Below the registry and the families alike: a family's stage loads its components through
here, and the registry names models through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.models.model_spec import ModelSpec


class ModelNotFoundError(ValueError):
    """The model name is unknown, or its files are neither local nor downloadable."""


def local_model_directory(spec: ModelSpec, *components: str) -> str:
    """A local directory holding ``components`` of the model, fetched into the HF cache if needed.

    Loading from a local snapshot is what diffusers' own ``from_pretrained`` does, and
    fetching only the named components means a text-encoder process never downloads the
    14B DiT weights. With ``HF_HUB_OFFLINE=1`` this only looks in the cache.
    """
    if Path(spec.source).is_dir():
        return spec.source
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json", *(f"{component}/*" for component in components if component != "model_index.json")]
    try:
        return snapshot_download(spec.source, allow_patterns=patterns)
    except OSError as error:
        raise ModelNotFoundError(f"{spec.source} ({', '.join(components)}) is not available locally: {error}") from error
