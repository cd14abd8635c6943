"""Wan image-to-video conditioning: the first frame as the DiT sees it.

Wan 2.1 I2V: CLIP image embeds, and the VAE-encoded first frame with its mask as extra
input channels. Wan 2.2 A14B I2V: the same without CLIP (its checkpoint has no image
encoder). Wan 2.2 TI2V (``expand_timesteps``): the first frame's normalised latents,
which replace the first latent frame at every step. Either way diffusers' own
``encode_image`` / ``prepare_latents`` compute it, on a pipeline holding only these
components, so the condition is exactly WanImageToVideoPipeline's.
"""

from __future__ import annotations

import torch

from engine.models.model_source import local_model_directory
from engine.models.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stage_types import GenerationRequest, ImageConditioning
from engine.stages.image_conditioner import decode_image


def has_image_encoder(source: str) -> bool:
    from diffusers import WanImageToVideoPipeline

    return (WanImageToVideoPipeline.load_config(source).get("image_encoder") or [None])[0] is not None


def image_embed_tokens(spec: ModelSpec) -> int | None:
    """Tokens of the CLIP image embeds this stage hands the DiT per image, from config files only.

    None for a checkpoint without an image encoder. The Denoiser needs the number before
    any request arrives, to compile its forward for image-to-video steps.
    """
    from transformers import CLIPVisionConfig

    if not spec.is_image_to_video or not has_image_encoder(spec.source):
        return None
    config = CLIPVisionConfig.from_pretrained(spec.source, subfolder="image_encoder")
    # encode_image takes the penultimate hidden states: one token per patch plus the class token.
    return (config.image_size // config.patch_size) ** 2 + 1


class WanImageConditioner:
    def __init__(self, spec: ModelSpec, placement: StagePlacement | None = None):
        from diffusers import AutoencoderKLWan, WanImageToVideoPipeline
        from transformers import CLIPImageProcessor, CLIPVisionModel

        if not spec.is_image_to_video:
            raise ValueError(f"{spec.name} is a text-to-video model; it has no image conditioning")
        self.spec = spec
        self.placement = placement or StagePlacement()
        device, dtype = self.placement.device, self.placement.torch_dtype
        root = local_model_directory(spec, "image_encoder", "image_processor", "vae")
        model_index = WanImageToVideoPipeline.load_config(root)
        image_encoder = image_processor = None
        if has_image_encoder(root):
            image_encoder = CLIPVisionModel.from_pretrained(root, subfolder="image_encoder", torch_dtype=dtype)
            image_encoder.to(device).eval()
            image_processor = CLIPImageProcessor.from_pretrained(root, subfolder="image_processor")
        vae = AutoencoderKLWan.from_pretrained(root, subfolder="vae", torch_dtype=dtype).to(device).eval()
        self._pipeline = WanImageToVideoPipeline(
            tokenizer=None,
            text_encoder=None,
            vae=vae,
            scheduler=None,
            image_processor=image_processor,
            image_encoder=image_encoder,
            expand_timesteps=bool(model_index.get("expand_timesteps")),
        )

    @torch.no_grad()
    def condition(self, request: GenerationRequest) -> ImageConditioning:
        if request.image is None:
            raise ValueError("image-to-video needs request.image")
        device = torch.device(self.placement.device)
        image = decode_image(request.image)
        image_embeds = None
        if self._pipeline.image_encoder is not None:
            image_embeds = self._pipeline.encode_image(image, device)
        pixels = self._pipeline.video_processor.preprocess(image, height=request.height, width=request.width)
        pixels = pixels.to(device, dtype=torch.float32)
        geometry = self.spec.geometry
        # prepare_latents also draws the noise; handing it a placeholder skips that draw
        # (the noise comes from the request's seed in the Denoiser) and keeps only the
        # seed-independent condition, which is what makes it cacheable across requests.
        placeholder = torch.zeros(geometry.latent_shape(request.num_frames, request.height, request.width))
        outputs = self._pipeline.prepare_latents(
            pixels,
            1,
            geometry.latent_channels,
            request.height,
            request.width,
            request.num_frames,
            torch.float32,
            device,
            None,
            placeholder,
        )
        # (latents, condition) for Wan 2.1 / A14B; (latents, first-frame latents, mask) for TI2V.
        return ImageConditioning(image_embeds=image_embeds, condition=outputs[1])
