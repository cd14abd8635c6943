"""Wan's UMT5 text encoder: one text -> its embeddings, zero-padded to 512 tokens."""

from __future__ import annotations

import torch

from engine.models.model_source import local_model_directory
from engine.models.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stage_types import EncodedText


class WanTextEncoder:
    def __init__(self, spec: ModelSpec, placement: StagePlacement | None = None):
        from diffusers import WanPipeline
        from transformers import AutoTokenizer, UMT5EncoderModel

        self.spec = spec
        self.placement = placement or StagePlacement()
        root = local_model_directory(spec, "tokenizer", "text_encoder")
        tokenizer = AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
        text_encoder = UMT5EncoderModel.from_pretrained(
            root, subfolder="text_encoder", torch_dtype=self.placement.torch_dtype
        )
        text_encoder.to(self.placement.device).eval()
        # diffusers' own prompt code (ftfy cleaning, max-length padding, trimming and
        # re-padding with zeros) runs on a pipeline that holds only the text components,
        # so our embeddings cannot drift from WanPipeline's.
        self._pipeline = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=None, scheduler=None)

    @torch.no_grad()
    def encode_text(self, text: str) -> EncodedText:
        embeds, _ = self._pipeline.encode_prompt(
            prompt=text,
            do_classifier_free_guidance=False,
            max_sequence_length=self.spec.geometry.text_max_length,
            device=torch.device(self.placement.device),
        )
        return EncodedText(embeds=embeds)
