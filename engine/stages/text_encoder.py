"""Text encoder stage: texts -> EncodedText, through the model family's own prompt code."""

from __future__ import annotations

from engine.models.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stage_types import TextEmbeddings, TextRequest


class TextEncoder:
    """The family's text encoder, plus the request-level step: the prompt, and the negative prompt under CFG."""

    def __init__(self, spec: ModelSpec, placement: StagePlacement | None = None):
        from engine.families import family_of

        self.spec = spec
        self.placement = placement or StagePlacement()
        self.encoder = family_of(spec).text_encoder(spec, self.placement)

    def encode_text(self, text: str):
        return self.encoder.encode_text(text)

    def encode(self, request: TextRequest) -> TextEmbeddings:
        negative = None if request.negative_prompt is None else self.encode_text(request.negative_prompt)
        return TextEmbeddings.of(self.encode_text(request.prompt), negative)
