"""Wan 2.1 and 2.2 (A14B two-expert, TI2V-5B) through diffusers' WanPipeline / WanImageToVideoPipeline."""

from __future__ import annotations

from engine.families.family import ModelFamily
from engine.models.model_spec import Task
from engine.families.wan.traits import WAN_PIPELINES, read_traits, tasks_of


def _text_encoder(spec, placement):
    from engine.families.wan.text_encoder import WanTextEncoder

    return WanTextEncoder(spec, placement)


def _image_conditioner(spec, placement):
    from engine.families.wan.image_conditioner import WanImageConditioner

    return WanImageConditioner(spec, placement)


def _denoiser(spec, placement, compile_transformer: bool = False):
    from engine.families.wan.denoiser import WanDenoiser

    return WanDenoiser(spec, placement, compile_transformer)


def _vae_decoder(spec, placement, compile_decoder: bool = False):
    from engine.families.wan.vae_decoder import WanVaeDecoder

    return WanVaeDecoder(spec, placement, compile_decoder)


def _image_embed_tokens(spec):
    from engine.families.wan.image_conditioner import image_embed_tokens

    return image_embed_tokens(spec)


WAN_FAMILY = ModelFamily(
    name="wan",
    pipelines=WAN_PIPELINES,
    read_traits=read_traits,
    tasks_of=tasks_of,
    reference_pipelines={Task.TEXT_TO_VIDEO: "WanPipeline", Task.IMAGE_TO_VIDEO: "WanImageToVideoPipeline"},
    text_encoder=_text_encoder,
    image_conditioner=_image_conditioner,
    denoiser=_denoiser,
    vae_decoder=_vae_decoder,
    parallel_modes=("tensor", "sequence", "cfg"),
    image_embed_tokens=_image_embed_tokens,
)
