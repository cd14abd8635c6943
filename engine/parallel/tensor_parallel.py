"""Tensor parallelism for diffusers' WanTransformer3DModel, through torch DTensor.

Megatron-style split of every block over the N ranks of the default process group:
attention by heads (q/k/v and the image-to-video added k/v column-wise, the output
projection row-wise) and the FFN by hidden width (up column-wise, down row-wise).
Embeddings, modulation, norm_out and proj_out stay replicated, so every rank takes the
same full inputs and returns the same full output: the model's call signature and
output do not change.

Only plain local tensors flow between modules (``use_local_output``), so diffusers'
WanAttnProcessor runs unchanged on ``heads / N`` heads. Wan normalises q and k over
all heads' features ("rms_norm_across_heads"); that norm becomes HeadShardedRMSNorm,
which all-reduces one float per token (the sum of squares) instead of gathering the
features.

Per forward, each rank hands these all-reduces to the group (payload per rank):
    per block, 3 x rows x tokens x dim x dtype_bytes      attn1, attn2 and FFN outputs
    per block, rows x (3 x tokens + text + image) x 4      q/k norm statistics (fp32)
``tensor_parallel_step_bytes`` computes the total from a model config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from engine.parallel.communication_log import CommunicationLog

ALL_REDUCE = "all_reduce"


def _config_field(config: Any, name: str) -> Any:
    # diffusers' FrozenDict is a Mapping; a plain namespace or dataclass works too.
    return config[name] if isinstance(config, Mapping) else getattr(config, name)


def check_tensor_parallel_degree(config: Any, degree: int) -> None:
    """Refuse a degree that does not split the heads and the FFN width evenly."""
    if degree < 1:
        raise ValueError(f"tensor parallel degree must be at least 1 (got {degree})")
    heads = _config_field(config, "num_attention_heads")
    ffn_dim = _config_field(config, "ffn_dim")
    indivisible = [f"{name}={value}" for name, value in (("num_attention_heads", heads), ("ffn_dim", ffn_dim))
                   if value % degree]
    if indivisible:
        raise ValueError(f"tensor parallel degree {degree} must divide {' and '.join(indivisible)}")


def tensor_parallel_step_bytes(config: Any, batch_rows: int, tokens: int, text_tokens: int, image_tokens: int,
                               dtype_bytes: int, degree: int) -> int:
    """All-reduce payload bytes one rank hands over in one transformer forward.

    ``tokens`` is the video sequence after patching (frames/p_t x height/p_h x width/p_w
    latent positions), ``text_tokens`` the text context length (512 for Wan), and
    ``image_tokens`` the image context per row (0 for text-to-video; 257 CLIP tokens
    for Wan 2.1 image-to-video). The payload does not shrink with the degree: a
    row-parallel output is the full activation on every rank (a ring all-reduce then
    moves 2(N-1)/N of it over each link).
    """
    check_tensor_parallel_degree(config, degree)
    if image_tokens and _config_field(config, "image_dim") is None:
        raise ValueError(f"image_tokens={image_tokens} but the model has no image conditioning (image_dim is None)")
    if degree == 1:
        return 0
    dim = _config_field(config, "num_attention_heads") * _config_field(config, "attention_head_dim")
    # attn1.to_out, attn2.to_out and ffn.net.2 each all-reduce the block's full activation.
    row_parallel_outputs = 3 * batch_rows * tokens * dim * dtype_bytes
    # One statistic per normalised vector: attn1 q and k, attn2 q (video tokens), attn2 k
    # (text tokens, plus the image tokens whether they pass the added-k norm or, without
    # added k/v projections, are concatenated to the text keys).
    statistic_bytes = torch.promote_types(_dtype_of_size(dtype_bytes), torch.float32).itemsize
    norm_statistics = batch_rows * (3 * tokens + text_tokens + image_tokens) * statistic_bytes
    return _config_field(config, "num_layers") * (row_parallel_outputs + norm_statistics)


def _dtype_of_size(dtype_bytes: int) -> torch.dtype:
    sizes = {2: torch.bfloat16, 4: torch.float32, 8: torch.float64}
    if dtype_bytes not in sizes:
        raise ValueError(f"dtype_bytes must be one of {sorted(sizes)} (got {dtype_bytes})")
    return sizes[dtype_bytes]


class HeadShardedRMSNorm(nn.Module):
    """torch.nn.RMSNorm over features split across ranks: this rank's slice in, its slice out.

    The mean square is taken over all ranks' features by all-reducing each vector's
    local sum of squares, so the result equals the unsharded norm's slice. Computes in
    float32 (or wider) like torch's own RMSNorm. Inference only: the functional
    all-reduce does not backpropagate.
    """

    def __init__(self, full_features: int, eps: float | None, local_weight: nn.Parameter | None,
                 mesh: DeviceMesh, log: CommunicationLog | None):
        super().__init__()
        self.full_features = full_features
        self.eps = eps
        self.weight = local_weight  # a DTensor sharded on dim 0; None without affine weight
        self._mesh = mesh
        self._log = log

    @classmethod
    def from_full(cls, norm: nn.RMSNorm, mesh: DeviceMesh, log: CommunicationLog | None) -> HeadShardedRMSNorm:
        if len(norm.normalized_shape) != 1:
            raise ValueError(f"only a 1-D RMSNorm can be head-sharded (got {tuple(norm.normalized_shape)})")
        weight = None
        if norm.weight is not None:
            # Every rank loaded the same checkpoint, so each keeps its own slice (no scatter).
            weight = nn.Parameter(distribute_tensor(norm.weight.detach(), mesh, [Shard(0)], src_data_rank=None),
                                  requires_grad=norm.weight.requires_grad)
        return cls(norm.normalized_shape[0], norm.eps, weight, mesh, log)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        compute_dtype = torch.promote_types(hidden_states.dtype, torch.float32)
        upcast = hidden_states.to(compute_dtype)
        sum_of_squares = upcast.pow(2).sum(dim=-1, keepdim=True)
        if self._log is not None:
            self._log.record(ALL_REDUCE, sum_of_squares.numel() * sum_of_squares.element_size())
        sum_of_squares = funcol.all_reduce(sum_of_squares, "sum", self._mesh.get_group())
        eps = self.eps if self.eps is not None else torch.finfo(compute_dtype).eps
        normalized = upcast * torch.rsqrt(sum_of_squares / self.full_features + eps)
        if self.weight is not None:
            normalized = normalized * self.weight.to_local()
        return normalized.type_as(hidden_states)

    def extra_repr(self) -> str:
        return f"full_features={self.full_features}, eps={self.eps}, degree={self._mesh.size()}"


def shard_transformer(transformer: nn.Module, log: CommunicationLog | None = None) -> None:
    """Split a WanTransformer3DModel in place over the default torch.distributed group.

    Every rank must hold the same weights (loaded from the same checkpoint) and call
    the model with the same full inputs; each then returns the same full output.
    """
    degree = dist.get_world_size()
    check_tensor_parallel_degree(transformer.config, degree)
    if any(isinstance(parameter, DTensor) for parameter in transformer.parameters()):
        raise ValueError("the transformer is already sharded")
    if degree == 1:
        return
    device = next(transformer.parameters()).device
    if device.type == "cuda":
        # The mesh takes its rank's device from the current CUDA device.
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, (degree,))
    for block in transformer.blocks:
        _shard_block(block, mesh, log)


def block_parallel_plan(block: nn.Module) -> dict[str, ColwiseParallel | RowwiseParallel]:
    """Which linears of one transformer block are split, and how (also what a rank's weight bytes follow from)."""
    plan: dict[str, ColwiseParallel | RowwiseParallel] = {}
    for name in ("attn1", "attn2"):
        projections = ["to_q", "to_k", "to_v"]
        if getattr(block, name).add_k_proj is not None:
            projections += ["add_k_proj", "add_v_proj"]
        plan.update({f"{name}.{projection}": ColwiseParallel() for projection in projections})
        plan[f"{name}.to_out.0"] = RowwiseParallel()
    plan["ffn.net.0.proj"] = ColwiseParallel()
    plan["ffn.net.2"] = RowwiseParallel()
    return plan


def sharded_norm_names(attention: nn.Module) -> list[str]:
    """The q/k RMSNorms of an attention whose weights follow the heads across ranks."""
    return ["norm_q", "norm_k"] + (["norm_added_k"] if attention.add_k_proj is not None else [])


def _shard_block(block: nn.Module, mesh: DeviceMesh, log: CommunicationLog | None) -> None:
    for name in ("attn1", "attn2"):
        # A fused to_qkv/to_kv would be split as one matrix, mixing q, k and v columns;
        # the separate projections it was built from are still there.
        getattr(block, name).unfuse_projections()
    plan = block_parallel_plan(block)
    # Every rank loaded the same checkpoint, so each keeps its own slice: scattering from
    # rank 0 would send the whole sharded weight set over the wire for nothing.
    parallelize_module(block, mesh, plan, src_data_rank=None)

    for name in ("attn1", "attn2"):
        attention = getattr(block, name)
        attention.heads //= mesh.size()
        for norm_name in sharded_norm_names(attention):
            norm = getattr(attention, norm_name)
            if isinstance(norm, nn.RMSNorm):
                setattr(attention, norm_name, HeadShardedRMSNorm.from_full(norm, mesh, log))
            elif not isinstance(norm, nn.Identity):
                raise TypeError(f"cannot shard {name}.{norm_name} of type {type(norm).__name__}")

    if log is not None:
        for path, style in plan.items():
            if isinstance(style, RowwiseParallel):
                block.get_submodule(path).register_forward_hook(_record_row_parallel_all_reduce(log))


def _record_row_parallel_all_reduce(log: CommunicationLog):
    # Runs after DTensor's own output hook, which all-reduced the partial sums into
    # this (now local, full-size) output.
    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        log.record(ALL_REDUCE, output.numel() * output.element_size())

    return hook
