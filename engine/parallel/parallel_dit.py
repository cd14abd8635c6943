"""Splitting the DiT across the current rank group, by mode or by a combination of modes.

A mode is "tensor", "sequence" or "cfg", or cfg with one of the others ("cfg+sequence");
engine/parallel/parallel_layout.py says which rank does what. Tensor and Ulysses split the
transformer itself (over the ranks of one cfg index); cfg shares each step's rows out
between the cfg indices, through the denoiser's ``row_split``, and leaves the transformer
as it is (so every family supports it).
"""

from __future__ import annotations

import importlib

from engine.parallel.communication_log import CommunicationLog
from engine.parallel.parallel_layout import ParallelLayout

# mode -> (module, function that checks a degree against a DiT config)
_CHECKS = {
    "tensor": ("engine.parallel.tensor_parallel", "check_tensor_parallel_degree"),
    "sequence": ("engine.parallel.sequence_parallel", "check_sequence_parallel_degree"),
    "cfg": ("engine.parallel.cfg_parallel", "check_cfg_parallel_degree"),
}
# modes that split the transformer in place -> (module, function)
_TRANSFORMER_SPLITS = {
    "tensor": ("engine.parallel.tensor_parallel", "shard_transformer"),
    "sequence": ("engine.parallel.sequence_parallel", "split_sequence"),
}
PARALLEL_MODES = tuple(_CHECKS)


def layout_of(mode: str | ParallelLayout, degree: int) -> ParallelLayout:
    """The layout a mode string names for ``degree`` ranks (a layout is taken as it is)."""
    if isinstance(mode, ParallelLayout):
        if mode.degree != degree:
            raise ValueError(f"parallel: {mode.mode} is {mode.degree} ranks, not {degree}")
        return mode
    return ParallelLayout.from_mode(mode, degree)


def needs_deepspeed(mode: str | ParallelLayout) -> bool:
    """Ulysses runs through DeepSpeed's DistributedAttention, which needs DeepSpeed's comm initialised."""
    modes = mode.modes if isinstance(mode, ParallelLayout) else (mode or "").split("+")
    return "sequence" in modes


def parallelize_transformers(transformers, mode: str | ParallelLayout, log: CommunicationLog):
    """Split ``transformers`` (every expert of one model) over the joined rank group, in place.

    Creates the layout's subgroups (a collective: every rank calls this with the same
    layout). Returns the denoiser's ``row_split`` for a layout with cfg parallelism, else None.
    """
    import torch.distributed as dist

    from engine.parallel.process_group import join_layout_groups

    layout = layout_of(mode, dist.get_world_size())
    groups = join_layout_groups(layout)
    for transformer in transformers:
        if layout.tensor > 1:
            _split("tensor")(transformer, log)
        if layout.sequence > 1:
            _split("sequence")(transformer, log, group=groups.inner)
    if layout.cfg == 1:
        return None
    from engine.parallel.cfg_parallel import CfgRowSplit

    return CfgRowSplit(groups.cfg, groups.cfg_index, log)


def parallelize_transformer(transformer, mode: str | ParallelLayout, log: CommunicationLog):
    """One transformer's split (see ``parallelize_transformers``); returns the row split for cfg, else None."""
    return parallelize_transformers([transformer], mode, log)


def parallelize_denoiser(denoiser, mode: str | ParallelLayout, log: CommunicationLog) -> None:
    """Split every expert of ``denoiser`` (both of a two-expert model) over the rank group, and its rows for cfg."""
    check_family_supports(denoiser.spec, mode)
    denoiser.row_split = parallelize_transformers(denoiser.transformers, mode, log)


def check_family_supports(spec, mode: str | ParallelLayout) -> None:
    from engine.families import family_of

    family = family_of(spec)
    for name in _mode_names(mode):
        if name not in family.parallel_modes:
            supported = ", ".join(family.parallel_modes) or "none"
            raise ValueError(f"parallel.{name}: {spec.name} is a {family.name} model, whose DiT cannot be split "
                             f"that way (parallel modes for {family.name}: {supported})")


def check_parallel_degree(transformer_config: dict, mode: str | ParallelLayout, degree: int) -> None:
    """Refuse, before any rank starts, a degree the DiT's heads (and FFN width, for tensor) cannot split."""
    layout = layout_of(mode, degree)
    for name, mode_degree in layout.modes.items():
        module, check = _CHECKS[name]
        getattr(importlib.import_module(module), check)(transformer_config, mode_degree)


def _mode_names(mode: str | ParallelLayout) -> list[str]:
    names = list(mode.modes) if isinstance(mode, ParallelLayout) else (mode or "").split("+")
    unknown = [name for name in names if name not in _CHECKS]
    if unknown:
        raise ValueError(f"parallel mode must be one of {PARALLEL_MODES} or cfg+<one of them>, not {mode!r}")
    return names


def _split(mode: str):
    # The mode's module is imported only when used: DeepSpeed alone takes seconds to import.
    module, split = _TRANSFORMER_SPLITS[mode]
    return getattr(importlib.import_module(module), split)
