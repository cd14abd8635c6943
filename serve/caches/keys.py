"""Content keys of cached conditioning: what a value was computed from, hashed."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Part of every key: a cache outlives deployments, so a change to how a value is computed
# must change the keys (see the package docstring).
KEY_SCHEMA = "videoserve-conditioning/2"


def text_embedding_key(model_id: str, text: str, max_length: int) -> str:
    """Key of one text's embeddings.

    - ``model_id``: other weights give other embeddings. Pass whatever names the weights
      as loaded (a checkpoint path or preset name; add the dtype if replicas of one cache
      could load the encoder in different precisions).
    - ``text``: exactly as given; no normalisation, since the tokenizer sees every byte.
    - ``max_length``: embeddings are padded to it and texts truncated at it.
    """
    return _digest(
        "text-embedding",
        _nonempty_str("model_id", model_id),
        _str("text", text),
        _positive_int("max_length", max_length),
    )


def first_frame_key(model_id: str, image_bytes: bytes, width: int, height: int, num_frames: int) -> str:
    """Key of image-to-video conditioning for one first frame.

    - ``model_id``: the CLIP image encoder and the VAE that encode the frame.
    - ``image_bytes``: the uploaded file as sent (hashed); the same picture encoded
      differently is a miss, never a wrong hit.
    - ``width``, ``height``: the frame is resized to them before it is encoded.
    - ``num_frames``: sets the condition's latent time axis and its first-frame mask.
    """
    if not isinstance(image_bytes, (bytes, bytearray)) or not image_bytes:
        raise ValueError(f"image_bytes: must be non-empty bytes (got {type(image_bytes).__name__})")
    return _digest(
        "first-frame",
        _nonempty_str("model_id", model_id),
        hashlib.sha256(image_bytes).hexdigest(),
        _positive_int("width", width),
        _positive_int("height", height),
        _positive_int("num_frames", num_frames),
    )


def _digest(kind: str, *parts: str | int) -> str:
    # JSON of a flat list of strings and ints is unambiguous (quoted, escaped, ordered) and
    # the same on every Python; ASCII-only so lone surrogates in a text still encode.
    canonical = json.dumps([KEY_SCHEMA, kind, *parts], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _str(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{field}: must be a string (got {type(value).__name__})")
    return value


def _nonempty_str(field: str, value: Any) -> str:
    if not _str(field, value):
        raise ValueError(f"{field}: must not be empty")
    return value


def _positive_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field}: must be a positive integer (got {value!r})")
    return value
