"""Splitting the DiT across the current rank group, by mode."""

from __future__ import annotations

from engine.parallel.communication_log import CommunicationLog

PARALLEL_MODES = ("tensor", "sequence")


def needs_deepspeed(mode: str) -> bool:
    """Ulysses runs through DeepSpeed's DistributedAttention, which needs DeepSpeed's comm initialised."""
    return mode == "sequence"


def parallelize_transformer(transformer, mode: str, log: CommunicationLog) -> None:
    """Shard (tensor) or split the token sequence of (sequence) ``transformer`` in place."""
    if mode == "tensor":
        from engine.parallel.tensor_parallel import shard_transformer

        shard_transformer(transformer, log)
    elif mode == "sequence":
        from engine.parallel.sequence_parallel import split_sequence

        split_sequence(transformer, log)
    else:
        raise ValueError(f"parallel mode must be one of {PARALLEL_MODES}, not {mode!r}")


def check_parallel_degree(transformer_config: dict, mode: str, degree: int) -> None:
    """Refuse, before any rank starts, a degree the DiT's heads (and FFN width, for tensor) cannot split."""
    if mode == "tensor":
        from engine.parallel.tensor_parallel import check_tensor_parallel_degree

        check_tensor_parallel_degree(transformer_config, degree)
    elif mode == "sequence":
        from engine.parallel.sequence_parallel import check_sequence_parallel_degree

        check_sequence_parallel_degree(transformer_config, degree)
    else:
        raise ValueError(f"parallel mode must be one of {PARALLEL_MODES}, not {mode!r}")
