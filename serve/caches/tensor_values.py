"""Walking cached values: their tensor bytes, and copies of their tensors."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch


def tensor_nbytes(value: Any) -> int:
    """Bytes of every torch tensor and numpy array in ``value``.

    Looks inside dataclasses, tuples, lists and dicts (values); anything else counts 0.
    An object reached twice counts once, as pickling stores it once.
    """
    seen: set[int] = set()
    total = 0
    for item in _walk(value):
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, np.ndarray):
            total += item.nbytes
    return total


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, torch.Tensor | np.ndarray):
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _walk(getattr(value, field.name))
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)


def map_tensors(value: Any, transform: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` rebuilt with ``transform`` applied to each torch tensor (same containers)."""
    if isinstance(value, torch.Tensor):
        return transform(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            field.name: map_tensors(getattr(value, field.name), transform)
            for field in dataclasses.fields(value)
            if field.init
        }
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(map_tensors(item, transform) for item in value))
    if isinstance(value, tuple | list):
        return type(value)(map_tensors(item, transform) for item in value)
    if isinstance(value, dict):
        return type(value)((key, map_tensors(item, transform)) for key, item in value.items())
    return value


def standalone_cpu_tensor(tensor: torch.Tensor) -> torch.Tensor:
    # Pickling a view ships its whole base storage; copying it out keeps what is stored
    # to the bytes tensor_nbytes charged for it.
    tensor = tensor.detach().to("cpu")
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor
