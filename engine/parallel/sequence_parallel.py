"""Ulysses sequence parallelism for diffusers' WanTransformer3DModel, through DeepSpeed.

Each of the N ranks of the default process group keeps the whole model and 1/N of the
video tokens from the first block to the output projection. Everything done per token
(projections, Wan's q/k RMSNorm over all heads, rotary, the FFN, cross-attention to the
full text/image context) runs on the local tokens; only self-attention needs every
token, and DeepSpeed's ``DistributedAttention`` all-to-alls [b, s/N, h, d] into
[b, s, h/N, d] around it and back.

The ranks are the default process group's, or a subgroup of it (``split_sequence(...,
group=...)``: each cfg index of a CFG x Ulysses gang splits its own rows' tokens over its
own ranks, engine/parallel/parallel_layout.py).

The model's forward is not forked. Module hooks cut the rotary table (``rope``), the
per-token timesteps of Wan 2.2 TI2V (entering ``condition_embedder``, so each rank embeds
only its own tokens' timesteps and its blocks and output norm modulate only those) and
the token sequence (entering ``blocks[0]``) to this rank's chunk, and all-gather the
chunks after ``proj_out``, so every rank takes the full inputs and returns the full
output; each block's ``attn1`` gets a processor that runs its attention through
DistributedAttention.

A token count N does not divide is padded at the end to the next multiple of N. The
padded keys and values are dropped after the all-to-all, before attention (which is a
key-padding mask that keeps every fused attention kernel available), so padding never
reaches a real token; the padded rows are cut off after the final gather.

Per forward, each rank hands these payloads to the group (s = tokens, N = degree):
    per block, 4 x rows x ceil(s/N) x heads x head_dim x dtype_bytes   all-to-all of q, k, v, output
    once, rows x ceil(s/N) x out_channels x p_t x p_h x p_w x dtype_bytes   all-gather of the output
``sequence_parallel_step_bytes`` computes the total from a model config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

from engine.parallel.communication_log import CommunicationLog
from engine.step_cache.caching_blocks import StepCachingBlocks

# diffusers and DeepSpeed are imported where they are used, so the cost formula can be
# imported (e.g. by a benchmark's cost model) without their ~10 s of imports.

ALL_TO_ALL = "all_to_all"
ALL_GATHER = "all_gather"


def _config_field(config: Any, name: str) -> Any:
    # diffusers' FrozenDict is a Mapping; a plain namespace or dataclass works too.
    return config[name] if isinstance(config, Mapping) else getattr(config, name)


def check_sequence_parallel_degree(config: Any, degree: int) -> None:
    """Refuse a degree that does not give every rank the same number of whole heads."""
    if degree < 1:
        raise ValueError(f"sequence parallel degree must be at least 1 (got {degree})")
    heads = _config_field(config, "num_attention_heads")
    if heads % degree:
        raise ValueError(f"Ulysses sequence parallelism gives each rank num_attention_heads/N heads, but "
                         f"num_attention_heads={heads} is not divisible by N={degree}")


def sequence_parallel_step_bytes(config: Any, batch_rows: int, tokens: int, dtype_bytes: int, degree: int) -> int:
    """Payload bytes one rank hands to collectives in one transformer forward.

    ``tokens`` is the video sequence after patching (frames/p_t x height/p_h x width/p_w
    latent positions); the text and image context never cross ranks. Each rank holds
    ceil(tokens/N) of them (padding included). Per block, q, k and v ([rows, s/N, heads,
    head_dim] each) and the attention output ([rows, s, heads/N, head_dim], the same
    size) go through one all-to-all each; after the last block each rank contributes its
    rows of proj_out's output to one all-gather. Unlike tensor parallelism the payload
    shrinks as 1/N.
    """
    check_sequence_parallel_degree(config, degree)
    local_tokens = math.ceil(tokens / degree)
    inner_dim = _config_field(config, "num_attention_heads") * _config_field(config, "attention_head_dim")
    out_channels = _config_field(config, "out_channels") or _config_field(config, "in_channels")
    patch_values = out_channels * math.prod(_config_field(config, "patch_size"))
    all_to_all = _config_field(config, "num_layers") * 4 * batch_rows * local_tokens * inner_dim
    all_gather = batch_rows * local_tokens * patch_values
    return (all_to_all + all_gather) * dtype_bytes


def _record(log: CommunicationLog | None, kind: str, tensor: torch.Tensor) -> None:
    if log is not None:
        log.record(kind, tensor.numel() * tensor.element_size())


class TokenShard:
    """This rank's chunk of the video token sequence, and the length of the forward in progress.

    ``tokens`` is set as the sequence enters the first block and read by every block's
    attention and by the final gather of the same forward: one forward at a time per model.
    """

    def __init__(self, rank: int, degree: int):
        self.rank = rank
        self.degree = degree
        self.tokens = 0

    def local_tokens(self, tokens: int) -> int:
        return math.ceil(tokens / self.degree)

    def real_in_chunk(self, chunk: int) -> int:
        """How many of this rank's ``chunk`` tokens are real in the forward in progress (padding sits at the end)."""
        return max(0, min(chunk, self.tokens - self.rank * chunk))

    def enter(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The sequence entering the blocks, [b, s, dim]: note its length for the forward, keep this rank's chunk."""
        self.tokens = hidden_states.shape[1]
        return self.take_local(hidden_states, dim=1)

    def take_local(self, sequence: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Pad ``sequence`` along ``dim`` to a multiple of N (zeros at the end) and keep this rank's chunk."""
        tokens = sequence.shape[dim]
        chunk = self.local_tokens(tokens)
        missing = chunk * self.degree - tokens
        if missing:
            padding_shape = list(sequence.shape)
            padding_shape[dim] = missing
            sequence = torch.cat([sequence, sequence.new_zeros(padding_shape)], dim=dim)
        return sequence.narrow(dim, self.rank * chunk, chunk)


class UlyssesSelfAttnProcessor:
    """WanAttnProcessor's self-attention on this rank's tokens, attending through DeepSpeed Ulysses.

    Projections, Wan's q/k RMSNorm (over all heads' features: before the all-to-all this
    rank still holds every head of its tokens, so the norm needs no communication) and
    rotary run on the local tokens exactly as WanAttnProcessor does. DeepSpeed's rotary
    option is not used: it rotates halves (GPT-NeoX style) where Wan rotates interleaved
    pairs.
    """

    # Read by diffusers' set_attention_backend, like WanAttnProcessor's.
    _attention_backend = None
    _parallel_config = None

    def __init__(self, shard: TokenShard, group: dist.ProcessGroup, log: CommunicationLog | None):
        from deepspeed.sequence.layer import DistributedAttention

        self._shard = shard
        self._log = log
        # [b, s, h, d]: heads (dim 2) are scattered and the sequence (dim 1) gathered going
        # in, the reverse coming out. batch_dim_idx=0 is passed on every call.
        self._attention = DistributedAttention(self._attend_all_tokens, group, scatter_idx=2, gather_idx=1)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None,
                 rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_wan import _get_qkv_projections

        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("the Ulysses processor serves self-attention (attn1) without a mask only")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            # Wan's table is [1, s/N, 1, d] with each frequency repeated for its pair, the
            # layout diffusers' apply_rotary_emb(use_real_unbind_dim=-1) takes as [s/N, d].
            cos, sin = (table[0, :, 0] for table in rotary_emb)
            query = apply_rotary_emb(query, (cos, sin), use_real=True, use_real_unbind_dim=-1, sequence_dim=1)
            key = apply_rotary_emb(key, (cos, sin), use_real=True, use_real_unbind_dim=-1, sequence_dim=1)

        for sent in (query, key, value):
            _record(self._log, ALL_TO_ALL, sent)
        hidden_states = self._attention(query, key, value, 0, None, real_tokens=self._shard.tokens)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)

    def _attend_all_tokens(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           real_tokens: int) -> torch.Tensor:
        """Attention over every token for this rank's heads; the padding sits after ``real_tokens``."""
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        output = dispatch_attention_fn(query, key[:, :real_tokens], value[:, :real_tokens], attn_mask=None,
                                       dropout_p=0.0, is_causal=False, backend=self._attention_backend)
        # The tensor DeepSpeed all-to-alls back to [b, s/N, h, d].
        _record(self._log, ALL_TO_ALL, output)
        return output


class SequenceShardingHooks:
    """Where the token sequence is cut to this rank's chunk and put back together."""

    def __init__(self, shard: TokenShard, group: dist.ProcessGroup, log: CommunicationLog | None):
        self._shard = shard
        self._group = group
        self._log = log

    def keep_local_rotary(self, module, args, output: tuple[torch.Tensor, torch.Tensor]):
        """rope's output ([1, s, 1, d] cos and sin): keep the rows of this rank's tokens."""
        return tuple(self._shard.take_local(table, dim=1) for table in output)

    def keep_local_timesteps(self, module, args: tuple, kwargs: dict):
        """Entering condition_embedder with per-token timesteps ([b * s], Wan 2.2 TI2V): keep this rank's tokens'."""
        sequence = kwargs.get("timestep_seq_len")
        if sequence is None:  # one timestep per row: every rank embeds the same
            return None
        timestep = args[0] if args else kwargs["timestep"]
        local = self._shard.take_local(timestep.unflatten(0, (-1, sequence)), dim=1)
        kwargs = {**kwargs, "timestep_seq_len": local.shape[1]}
        if args:
            return (local.flatten(), *args[1:]), kwargs
        return args, {**kwargs, "timestep": local.flatten()}

    def keep_local_tokens(self, module, args: tuple, kwargs: dict):
        """Entering blocks[0] with [b, s, dim] tokens: keep this rank's chunk for every block."""
        hidden_states = args[0] if args else kwargs["hidden_states"]
        temb = args[2] if len(args) > 2 else kwargs.get("temb")
        local = self._shard.enter(hidden_states)
        if temb is not None and temb.ndim == 4 and temb.shape[1] != local.shape[1]:
            raise ValueError(f"per-token timesteps for {temb.shape[1]} tokens reach a rank holding {local.shape[1]}")
        if args:
            return (local, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": local}

    def gather_tokens(self, module, args, output: torch.Tensor) -> torch.Tensor:
        """proj_out's [b, s/N, values] on every rank -> the full [b, s, values] on every rank."""
        local = output.contiguous()
        _record(self._log, ALL_GATHER, local)
        chunks = [torch.empty_like(local) for _ in range(self._shard.degree)]
        dist.all_gather(chunks, local, group=self._group)
        return torch.cat(chunks, dim=1)[:, : self._shard.tokens]


def split_sequence(transformer, log: CommunicationLog | None = None, group: dist.ProcessGroup | None = None) -> None:
    """Split ``transformer``'s video tokens across ``group`` (default: the default process group), in place.

    The group must have been joined with DeepSpeed's comm (``join_rank_group(...,
    with_deepspeed=True)``); a subgroup comes from ``join_layout_groups``. Every rank of the
    group must then call the model with the same full inputs; each gets back the full
    output, as from the unsplit model. This rank's chunk is its rank within ``group``.
    """
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    if not dist.is_initialized():
        raise RuntimeError("split_sequence needs the rank group: call join_rank_group(..., with_deepspeed=True) first")
    if group is None:
        group = dist.group.WORLD
    degree = dist.get_world_size(group)
    check_sequence_parallel_degree(transformer.config, degree)
    foreign = {type(block.attn1.processor).__name__ for block in transformer.blocks
               if type(block.attn1.processor) is not WanAttnProcessor}
    if foreign:
        # Covers a second split_sequence call too, which would cut the sequence twice.
        raise ValueError(f"split_sequence replaces WanAttnProcessor in every attn1, found {sorted(foreign)}")

    shard = TokenShard(dist.get_rank(group), degree)
    for block in transformer.blocks:
        block.attn1.set_processor(UlyssesSelfAttnProcessor(shard, group, log))
    hooks = SequenceShardingHooks(shard, group, log)
    transformer.rope.register_forward_hook(hooks.keep_local_rotary)
    transformer.condition_embedder.register_forward_pre_hook(hooks.keep_local_timesteps, with_kwargs=True)
    transformer.blocks[0].register_forward_pre_hook(hooks.keep_local_tokens, with_kwargs=True)
    transformer.proj_out.register_forward_hook(hooks.gather_tokens)
    if isinstance(transformer.blocks, StepCachingBlocks):
        # Step caching decides from the first block's residual: summed over every rank's real
        # tokens, so each rank of the group decides the same, and as one rank would.
        def row_sum(statistics: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(statistics, op=dist.ReduceOp.SUM, group=group)
            return statistics

        transformer.blocks.row_sum = row_sum
        transformer.blocks.real_tokens = shard.real_in_chunk
        transformer.blocks.local_tokens = shard.enter
