"""LTX-Video through diffusers' LTXPipeline / LTXImageToVideoPipeline (one directory, both tasks)."""

from __future__ import annotations

from engine.families.family import ModelFamily
from engine.models.model_spec import Task
from engine.families.ltx.traits import BOTH_TASKS, LTX_PIPELINES, read_traits


def _text_encoder(spec, placement):
    from engine.families.ltx.text_encoder import LTXTextEncoder

    return LTXTextEncoder(spec, placement)


def _image_conditioner(spec, placement):
    from engine.families.ltx.image_conditioner import LTXImageConditioner

    return LTXImageConditioner(spec, placement)


def _denoiser(spec, placement, compile_transformer: bool = False):
    from engine.families.ltx.denoiser import LTXDenoiser

    return LTXDenoiser(spec, placement, compile_transformer)


def _vae_decoder(spec, placement, compile_decoder: bool = False):
    from engine.families.ltx.vae_decoder import LTXVaeDecoder

    return LTXVaeDecoder(spec, placement, compile_decoder)


LTX_FAMILY = ModelFamily(
    name="ltx",
    pipelines=LTX_PIPELINES,
    read_traits=read_traits,
    tasks_of=lambda model_index: BOTH_TASKS,
    reference_pipelines={Task.TEXT_TO_VIDEO: "LTXPipeline", Task.IMAGE_TO_VIDEO: "LTXImageToVideoPipeline"},
    text_encoder=_text_encoder,
    image_conditioner=_image_conditioner,
    denoiser=_denoiser,
    vae_decoder=_vae_decoder,
    # Its transformer blocks are not Wan's: the tensor and Ulysses splits in engine/parallel do not
    # apply. CFG parallelism shares out a step's rows and leaves the DiT as it is.
    parallel_modes=("cfg",),
)
