"""Per-token timestep embeddings computed once per distinct timestep.

A TI2V checkpoint (``expand_timesteps``) gives every token its own timestep, and diffusers'
``WanTimeTextImageEmbedding`` runs the sinusoid, the two-layer time MLP and the 6x-wide
modulation projection for every token of every row: for the toy model about 7 % of a
forward's FLOPs, for TI2V-5B about 2 %. Yet a batched step holds few distinct values: every
token of a request's row has the row's timestep, except an image-to-video row's first-frame
tokens (0), and a request's conditional and unconditional rows share theirs. So the
embedding runs on the distinct values and is gathered back to every token.

Each token's embedding is the same function of its timestep as before, applied to fewer
rows of the same matrices; results equal diffusers' within float rounding (a matrix
product's rounding may depend on how many rows it has).

Eager only: finding the distinct values has a data-dependent size, which a compiled graph
would break on (and, on a GPU, a host sync, small beside a step of a 5B model).
"""

from __future__ import annotations

import torch


def install(transformer) -> None:
    """Make a ``WanTransformer3DModel``'s condition embedder embed distinct timesteps only
    (idempotent). The module and its parameters stay where they are, so state dicts, hooks and
    the step cache's block wrappers see the same model."""
    embedding = transformer.condition_embedder
    if "forward" not in vars(embedding):
        embedding.forward = _DistinctTimestepForward(type(embedding).forward.__get__(embedding))


def uninstall(transformer) -> None:
    vars(transformer.condition_embedder).pop("forward", None)


def is_installed(transformer) -> bool:
    return isinstance(vars(transformer.condition_embedder).get("forward"), _DistinctTimestepForward)


class _DistinctTimestepForward:
    """``WanTimeTextImageEmbedding.forward``'s signature and outputs, the time path run on distinct values."""

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 encoder_hidden_states_image: torch.Tensor | None = None, timestep_seq_len: int | None = None):
        if timestep_seq_len is None:  # one timestep a row already
            return self.forward(timestep, encoder_hidden_states, encoder_hidden_states_image)
        distinct, token_to_distinct = torch.unique(timestep, return_inverse=True)
        temb, timestep_proj, encoder_hidden_states, encoder_hidden_states_image = self.forward(
            distinct, encoder_hidden_states, encoder_hidden_states_image)
        return (temb[token_to_distinct].unflatten(0, (-1, timestep_seq_len)),
                timestep_proj[token_to_distinct].unflatten(0, (-1, timestep_seq_len)),
                encoder_hidden_states, encoder_hidden_states_image)
