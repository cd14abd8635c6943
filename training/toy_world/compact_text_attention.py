"""Cross-attention over 512 text positions, computed over a dozen: exact, and ~30x cheaper to train.

Wan's pipelines hand the DiT 512 text positions: the prompt's few real token embeddings, then
zeros. The DiT projects every position the same way, so all the padding positions carry one
and the same key and value. Softmax over ``n`` identical keys equals softmax over one copy of
that key with ``log(n)`` added to its logit, and the output is unchanged. Training therefore
feeds the real positions plus one padding position with that bias, and the checkpoint it
produces is served through the standard 512-position path (``tests/unit/test_toy_training.py``
checks the two agree).
"""

from __future__ import annotations

import math

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor


class CompactPaddingAttnProcessor(WanAttnProcessor):
    """Wan's cross-attention processor with an additive key bias set per batch."""

    def __init__(self):
        super().__init__()
        self.key_bias: torch.Tensor | None = None  # [B, 1, 1, keys]

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        return super().__call__(attn, hidden_states, encoder_hidden_states, self.key_bias, rotary_emb)


def install(transformer) -> list[CompactPaddingAttnProcessor]:
    """Put a compact processor on every block's cross-attention; returns them (to set the bias)."""
    processors = []
    for block in transformer.blocks:
        processor = CompactPaddingAttnProcessor()
        block.attn2.set_processor(processor)
        processors.append(processor)
    return processors


def uninstall(transformer) -> None:
    for block in transformer.blocks:
        block.attn2.set_processor(WanAttnProcessor())


def compact_text_batch(embeddings: list[torch.Tensor], full_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real token embeddings ``[L_i, D]`` of each prompt -> ``(states [B, K, D], key_bias [B, 1, 1, K])``.

    ``K = max L_i + 1``: each row's real tokens, unused slots (bias -inf), and the last slot
    standing for its ``full_length - L_i`` zero padding positions (bias ``log`` of that count).
    """
    longest = max(embedding.shape[0] for embedding in embeddings)
    width = embeddings[0].shape[1]
    keys = longest + 1
    states = torch.zeros(len(embeddings), keys, width)
    bias = torch.full((len(embeddings), 1, 1, keys), -math.inf)
    for row, embedding in enumerate(embeddings):
        length = embedding.shape[0]
        states[row, :length] = embedding
        bias[row, ..., :length] = 0.0
        if full_length > length:
            bias[row, ..., -1] = math.log(full_length - length)
    return states, bias
