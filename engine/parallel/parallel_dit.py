"""Splitting the DiT across the current rank group, by mode."""

from __future__ import annotations

import importlib

from engine.parallel.communication_log import CommunicationLog

# mode -> (module, function that splits a transformer in place, function that checks a degree)
_MODES = {
    "tensor": ("engine.parallel.tensor_parallel", "shard_transformer", "check_tensor_parallel_degree"),
    "sequence": ("engine.parallel.sequence_parallel", "split_sequence", "check_sequence_parallel_degree"),
}
PARALLEL_MODES = tuple(_MODES)


def needs_deepspeed(mode: str) -> bool:
    """Ulysses runs through DeepSpeed's DistributedAttention, which needs DeepSpeed's comm initialised."""
    return mode == "sequence"


def parallelize_transformer(transformer, mode: str, log: CommunicationLog) -> None:
    """Shard (tensor) or split the token sequence of (sequence) ``transformer`` in place."""
    module, split, _ = _mode(mode)
    getattr(importlib.import_module(module), split)(transformer, log)


def parallelize_denoiser(denoiser, mode: str, log: CommunicationLog) -> None:
    """Split every expert of ``denoiser`` (both of a two-expert model) over the rank group."""
    check_family_supports(denoiser.spec, mode)
    for transformer in denoiser.transformers:
        parallelize_transformer(transformer, mode, log)


def check_family_supports(spec, mode: str) -> None:
    from engine.families import family_of

    _mode(mode)
    family = family_of(spec)
    if mode not in family.parallel_modes:
        supported = ", ".join(family.parallel_modes) or "none"
        raise ValueError(f"parallel.{mode}: {spec.name} is a {family.name} model, whose DiT cannot be split that way "
                         f"(parallel modes for {family.name}: {supported})")


def check_parallel_degree(transformer_config: dict, mode: str, degree: int) -> None:
    """Refuse, before any rank starts, a degree the DiT's heads (and FFN width, for tensor) cannot split."""
    module, _, check = _mode(mode)
    getattr(importlib.import_module(module), check)(transformer_config, degree)


def _mode(mode: str) -> tuple[str, str, str]:
    # The mode's module is imported only when used: DeepSpeed alone takes seconds to import.
    if mode not in _MODES:
        raise ValueError(f"parallel mode must be one of {PARALLEL_MODES}, not {mode!r}")
    return _MODES[mode]
