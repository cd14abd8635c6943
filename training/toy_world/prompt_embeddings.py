"""Prompt embeddings exactly as WanPipeline computes them, kept without their zero padding."""

from __future__ import annotations

import torch

from engine.families.wan.traits import TEXT_MAX_LENGTH


class PromptEmbeddings:
    """The frozen text encoder's output for each prompt, computed once: ``[real tokens, D]``."""

    def __init__(self, tokenizer, text_encoder):
        from diffusers import WanPipeline

        # diffusers' own prompt code (cleaning, max-length padding, trimming and re-padding with
        # zeros), as the served TextEncoder stage runs it.
        self._pipeline = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=None, scheduler=None)
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, prompt: str) -> torch.Tensor:
        if prompt not in self._cache:
            with torch.no_grad():
                embeds, _ = self._pipeline.encode_prompt(prompt=prompt, do_classifier_free_guidance=False,
                                                         max_sequence_length=TEXT_MAX_LENGTH,
                                                         device=torch.device("cpu"))
            # The pipeline zeroes every position past the prompt's tokens; a real one is never all zeros.
            length = int((embeds[0].abs().sum(-1) > 0).sum())
            self._cache[prompt] = embeds[0, :length].clone()
        return self._cache[prompt]
