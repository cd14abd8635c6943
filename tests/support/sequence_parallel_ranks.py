"""Rank processes for the Ulysses sequence-parallel tests.

Each rank joins a real gloo group on 127.0.0.1 through DeepSpeed's comm, loads the
transformer, splits its sequence with ``split_sequence`` and saves what it saw (its
outputs, its communication log, the collectives the dispatcher really received, the
token count its blocks ran on) for the test process to check. Rank 0 first runs the
unsplit transformer on the same inputs: the single-rank reference.

Ranks are forked from a forkserver that has imported diffusers and DeepSpeed once, so a
group starts in about a second instead of every rank paying those imports (~10 s on 2
cores).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.support.rank_processes import run_cases_on_ranks

# One denoising step's batch as WanDenoiser builds it for two requests, the first with
# classifier-free guidance: [conditional A, conditional B, unconditional A].
TIMESTEPS = (999.0, 666.0, 999.0)
BATCH_ROWS = len(TIMESTEPS)
TEXT_TOKENS = 512  # the text encoder pads to Wan's max length; WanAttnProcessor relies on 512
IMAGE_TOKENS = 257  # Wan 2.1 image-to-video's CLIP context per row
# Latent (frames, height, width); patches of 1x2x2 give 12 tokens (the tiny presets'
# default 9 frames at 32x32: even over 2 and 4 ranks), 27 (48x48: odd, so padded over
# 2 and 4) and 1 (one 16x16 frame: fewer tokens than ranks, some ranks hold only padding).
LATENT_SIZES = ((3, 4, 4), (3, 6, 6), (1, 2, 2))


@dataclass(frozen=True)
class ModelCase:
    """A transformer to split: a preset's own, or one built from its config with changes.

    ``config_changes`` build a seeded random model (the same on every rank) from the
    preset's transformer config, e.g. Wan 2.1 I2V's added k/v projections, which the
    tiny-i2v preset lacks.
    """

    name: str
    spec: Any  # engine.models.model_spec.ModelSpec
    config_changes: dict[str, Any] = field(default_factory=dict)
    with_image: bool = False
    # Wan 2.2 TI2V: one timestep per token, the first latent frame's at 0 (the image-to-video layout).
    per_token_timesteps: bool = False


def run_ranks(world_size: int, cases: list[ModelCase], out_dir: Path) -> None:
    """Run every case on a fresh group of ``world_size`` ranks; results land in ``out_dir``."""
    run_cases_on_ranks(_run_case, world_size, cases, out_dir, with_deepspeed=True)


def token_count(config, latent_size: tuple[int, int, int]) -> int:
    """Video tokens after patching: (frames/p_t) x (height/p_h) x (width/p_w)."""
    return math.prod(length // patch for length, patch in zip(latent_size, config["patch_size"]))


def _load_transformer(case: ModelCase):
    from diffusers import WanTransformer3DModel

    from engine.stages.loading import load_denoiser

    transformer = load_denoiser(case.spec).transformer
    if case.config_changes:
        torch.manual_seed(0)
        transformer = WanTransformer3DModel.from_config({**transformer.config, **case.config_changes}).eval()
    return transformer


def _inputs(config, latent_size: tuple[int, int, int], with_image: bool,
            per_token_timesteps: bool = False) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(sum(latent_size))
    timestep = torch.tensor(TIMESTEPS)
    if per_token_timesteps:
        _, height, width = latent_size
        first_frame = (height // config["patch_size"][1]) * (width // config["patch_size"][2])
        mask = torch.ones(token_count(config, latent_size))
        mask[:first_frame] = 0
        timestep = timestep[:, None] * mask  # [rows, tokens], as WanPipeline builds it with expand_timesteps
    inputs = {
        "hidden_states": torch.randn(BATCH_ROWS, config.in_channels, *latent_size, generator=generator),
        "timestep": timestep,
        "encoder_hidden_states": torch.randn(BATCH_ROWS, TEXT_TOKENS, config.text_dim, generator=generator),
    }
    if with_image:
        inputs["encoder_hidden_states_image"] = torch.randn(BATCH_ROWS, IMAGE_TOKENS, config.image_dim,
                                                            generator=generator)
    return inputs


def _is_untouched(transformer) -> bool:
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    hooked = (transformer.rope._forward_hooks, transformer.blocks[0]._forward_pre_hooks,
              transformer.proj_out._forward_hooks, transformer.condition_embedder._forward_pre_hooks)
    return (all(type(block.attn1.processor) is WanAttnProcessor for block in transformer.blocks)
            and not any(hooked))


def _run_case(rank: int, case: ModelCase) -> dict[str, Any]:
    from engine.parallel.communication_log import CommunicationLog
    from engine.parallel.sequence_parallel import split_sequence

    transformer = _load_transformer(case)
    inputs = [_inputs(transformer.config, size, case.with_image, case.per_token_timesteps) for size in LATENT_SIZES]
    references = None
    if rank == 0:
        with torch.no_grad():
            references = [transformer(**step_inputs, return_dict=False)[0] for step_inputs in inputs]

    log = CommunicationLog()
    try:
        split_sequence(transformer, log)
    except ValueError as refusal:
        return {"refusal": str(refusal), "untouched": _is_untouched(transformer)}

    tokens_in_last_block: list[int] = []
    transformer.blocks[-1].register_forward_pre_hook(
        lambda module, args: tokens_in_last_block.append(args[0].shape[1]))
    steps = []
    for size, step_inputs in zip(LATENT_SIZES, inputs):
        collectives = CollectiveRecorder()
        with torch.no_grad(), collectives:
            output = transformer(**step_inputs, return_dict=False)[0]
        volume = log.take()
        steps.append({
            "latent_size": size,
            "tokens": token_count(transformer.config, size),
            "output": output,
            "logged_bytes": volume.bytes_by_kind,
            "logged_calls": volume.calls_by_kind,
            "collective_bytes": dict(collectives.bytes_by_op),
            "collective_calls": dict(collectives.calls_by_op),
            "tokens_in_last_block": tokens_in_last_block[-1],
        })
    try:
        split_sequence(transformer, log)
        second_split_refusal = None
    except ValueError as refusal:
        second_split_refusal = str(refusal)
    return {"config": dict(transformer.config), "steps": steps, "references": references,
            "second_split_refusal": second_split_refusal}


class CollectiveRecorder(TorchDispatchMode):
    """Bytes each c10d collective really took from this rank, seen at the dispatcher.

    An account independent of the CommunicationLog: it sees DeepSpeed's all-to-alls and
    the final all-gather whoever issued them, and counts the input each rank sends.
    """

    # Where the sent tensors sit in the c10d ops' arguments (after the outputs); any other
    # op is counted by its first argument, and the test expects none.
    _INPUT_ARGUMENT: ClassVar[dict[str, int]] = {"alltoall_base_": 1, "allgather_": 1}

    def __init__(self):
        super().__init__()
        self.bytes_by_op: Counter[str] = Counter()
        self.calls_by_op: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "c10d" and "wait" not in func.name():
            name = func.name().split("::")[1].split(".")[0]
            sent = args[self._INPUT_ARGUMENT.get(name, 0)]
            tensors = sent if isinstance(sent, (list, tuple)) else [sent]
            self.bytes_by_op[name] += sum(tensor.numel() * tensor.element_size() for tensor in tensors)
            self.calls_by_op[name] += 1
        return func(*args, **(kwargs or {}))
