"""Text encoder stage: texts -> EncodedText, through the model family's own prompt code."""

from __future__ import annotations

from engine.models.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stage_types import GenerationRequest, TextEmbeddings


class TextEncoder:
    """The family's text encoder, plus the request-level step: the prompt, and the negative prompt under CFG."""

    def __init__(self, spec: ModelSpec, placement: StagePlacement | None = None):
        from engine.families import family_of

        self.spec = spec
        self.placement = placement or StagePlacement()
        self.encoder = family_of(spec).text_encoder(spec, self.placement)

    def encode_text(self, text: str):
        return self.encoder.encode_text(text)

    def encode(self, request: GenerationRequest) -> TextEmbeddings:
        negative = self.encode_text(request.negative_prompt) if request.uses_classifier_free_guidance else None
        return TextEmbeddings.of(self.encode_text(request.prompt), negative)
