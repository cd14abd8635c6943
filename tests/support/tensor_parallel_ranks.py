"""Rank processes for the tensor-parallel tests.

Each rank joins a real gloo group on 127.0.0.1, loads the transformer, shards it with
``shard_transformer`` and saves what it saw (its output, its communication log, the
collectives the dispatcher really received, its weight shards) for the test process to
check. Rank 0 also runs an unsharded copy of the same transformer on the same inputs:
the single-rank reference.

Ranks are forked from a forkserver that has imported diffusers once, so a group starts
in about a second instead of every rank paying diffusers' import (~7 s on 2 cores).
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.support.rank_processes import run_cases_on_ranks

# One denoising step's batch as WanDenoiser builds it for two requests, the first with
# classifier-free guidance: [conditional A, conditional B, unconditional A].
TIMESTEPS = (999.0, 666.0, 999.0)
BATCH_ROWS = len(TIMESTEPS)
TEXT_TOKENS = 512  # the text encoder pads to Wan's max length; WanAttnProcessor relies on 512
LATENT_FRAMES_HEIGHT_WIDTH = (3, 4, 4)  # the tiny presets' default 9 frames at 32x32
IMAGE_TOKENS = 1025  # tiny-i2v's CLIP: 32x32 patches of 1 pixel plus the class token

# Parameters whose local shards the test checks, per block 0 and the replicated head.
CHECKED_PARAMETERS = (
    "blocks.0.attn1.to_q.weight",
    "blocks.0.attn1.to_q.bias",
    "blocks.0.attn1.to_out.0.weight",
    "blocks.0.attn1.to_out.0.bias",
    "blocks.0.attn1.norm_q.weight",
    "blocks.0.attn2.to_k.weight",
    "blocks.0.attn2.norm_k.weight",
    "blocks.0.ffn.net.0.proj.weight",
    "blocks.0.ffn.net.2.weight",
    "proj_out.weight",
)
CHECKED_ADDED_KV_PARAMETERS = ("blocks.0.attn2.add_k_proj.weight", "blocks.0.attn2.norm_added_k.weight")


@dataclass(frozen=True)
class ModelCase:
    """A transformer to shard: a preset's own, or one built from its config with changes.

    ``config_changes`` build a seeded random model (the same on every rank) from the
    preset's transformer config, e.g. Wan 2.1 I2V's added k/v projections, which the
    tiny-i2v preset lacks, or an FFN width no degree divides.
    """

    name: str
    spec: Any  # engine.models.model_spec.ModelSpec
    config_changes: dict[str, Any] = field(default_factory=dict)
    with_image: bool = False
    dtype: str = "float32"  # the DiT's dtype, as StagePlacement names it


def run_ranks(world_size: int, cases: list[ModelCase], out_dir: Path) -> None:
    """Run every case on a fresh group of ``world_size`` ranks; results land in ``out_dir``."""
    run_cases_on_ranks(_run_case, world_size, cases, out_dir)


def _load_transformer(case: ModelCase):
    from diffusers import WanTransformer3DModel

    from engine.stage_placement import StagePlacement
    from engine.stages.loading import load_denoiser

    transformer = load_denoiser(case.spec, StagePlacement(dtype=case.dtype)).transformer
    if case.config_changes:
        torch.manual_seed(0)
        transformer = WanTransformer3DModel.from_config({**transformer.config, **case.config_changes}).eval()
    return transformer


def _inputs(config, with_image: bool, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # As WanDenoiser hands them over: model input and conditioning in the DiT's dtype,
    # timesteps as the scheduler makes them.
    generator = torch.Generator().manual_seed(7)
    inputs = {
        "hidden_states": torch.randn(BATCH_ROWS, config.in_channels, *LATENT_FRAMES_HEIGHT_WIDTH, generator=generator),
        "timestep": torch.tensor(TIMESTEPS),
        "encoder_hidden_states": torch.randn(BATCH_ROWS, TEXT_TOKENS, config.text_dim, generator=generator),
    }
    if with_image:
        inputs["encoder_hidden_states_image"] = torch.randn(BATCH_ROWS, IMAGE_TOKENS, config.image_dim,
                                                            generator=generator)
    return {name: tensor if name == "timestep" else tensor.to(dtype) for name, tensor in inputs.items()}


def _run_case(rank: int, case: ModelCase) -> dict[str, Any]:
    from torch.distributed.tensor import DTensor

    from engine.parallel.communication_log import CommunicationLog
    from engine.parallel.tensor_parallel import shard_transformer

    transformer = _load_transformer(case)
    reference = copy.deepcopy(transformer) if rank == 0 else None
    log = CommunicationLog()
    try:
        shard_transformer(transformer, log)
    except ValueError as refusal:
        untouched = not any(isinstance(parameter, DTensor) for parameter in transformer.parameters())
        heads = [block.attn1.heads for block in transformer.blocks]
        return {"refusal": str(refusal), "untouched": untouched, "heads": heads}

    inputs = _inputs(transformer.config, case.with_image, transformer.dtype)
    collectives = CollectiveRecorder()
    with torch.no_grad(), collectives:
        output = transformer(**inputs, return_dict=False)[0]
    volume = log.take()
    parameters = dict(transformer.named_parameters())
    names = CHECKED_PARAMETERS + (CHECKED_ADDED_KV_PARAMETERS if "blocks.0.attn2.add_k_proj.weight" in parameters
                                  else ())
    result = {
        "config": dict(transformer.config),
        "output": output,
        "logged_bytes": volume.bytes_by_kind,
        "logged_calls": volume.calls_by_kind,
        "collective_bytes": dict(collectives.bytes_by_op),
        "collective_calls": dict(collectives.calls_by_op),
        "heads": [attention.heads for block in transformer.blocks for attention in (block.attn1, block.attn2)],
        "local_parameters": {name: _local(parameters[name]).clone() for name in names},
        "image_tokens": IMAGE_TOKENS if case.with_image else 0,
        "dtype_bytes": transformer.dtype.itemsize,
    }
    if reference is not None:
        with torch.no_grad():
            result["reference"] = reference(**inputs, return_dict=False)[0]
        full = dict(reference.named_parameters())
        result["full_parameters"] = {name: full[name].detach().clone() for name in names}
    return result


def _local(parameter: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return (parameter.to_local() if isinstance(parameter, DTensor) else parameter).detach()


class CollectiveRecorder(TorchDispatchMode):
    """Bytes every collective op really received, seen at the dispatcher.

    An account independent of the CommunicationLog: it sees DTensor's own redistribution
    collectives and the RMSNorm all-reduce alike, whoever issued them.
    """

    def __init__(self):
        super().__init__()
        self.bytes_by_op: Counter[str] = Counter()
        self.calls_by_op: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name().split("::")[-1].split(".")[0]
        # Skip the namespace's bookkeeping ops (wait_tensor, _wrap_tensor_autograd).
        if func.namespace in ("_c10d_functional", "c10d") and not name.startswith("_") and "wait" not in name:
            tensors = args[0] if isinstance(args[0], (list, tuple)) else [args[0]]
            self.bytes_by_op[name] += sum(tensor.numel() * tensor.element_size() for tensor in tensors)
            self.calls_by_op[name] += 1
        return func(*args, **(kwargs or {}))
