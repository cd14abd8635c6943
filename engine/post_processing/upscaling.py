"""Spatial upscaling: Lanczos resampling, or a learned Swin2SR super-resolution model.

The learned model is loaded through transformers (``Swin2SRForImageSuperResolution``).
spandrel is not used: it requires torchvision, which cannot be installed beside this torch.
For the same reason the preprocessing of ``Swin2SRImageProcessor`` is done here, on the
model's device: scale to [0, 1], pad symmetrically (as that processor does) up to a
multiple of the model's window size, then crop the output back to factor*H x factor*W.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.frame_array import checked_frames

LANCZOS_FACTORS = (2, 3, 4)


def upscale_lanczos(frames: np.ndarray, factor: int) -> np.ndarray:
    """Resize every frame by ``factor`` with PIL's Lanczos filter: uint8 [F, factor*H, factor*W, 3]."""
    from PIL import Image

    frames = checked_frames(frames)
    check_upscale_factor(factor, LANCZOS_FACTORS)
    num_frames, height, width, _ = frames.shape
    upscaled = np.empty((num_frames, height * factor, width * factor, 3), dtype=np.uint8)
    for index, frame in enumerate(frames):
        image = Image.fromarray(frame).resize((width * factor, height * factor), Image.Resampling.LANCZOS)
        upscaled[index] = np.asarray(image)
    return upscaled


def check_upscale_factor(factor: int, allowed: tuple[int, ...], field: str = "upscale") -> None:
    # type() rather than isinstance(): True and 2.0 compare equal to 1 and 2 but are not factors.
    if type(factor) is not int or factor not in allowed:
        raise ValueError(f"{field}: factor must be one of {', '.join(map(str, allowed))} (got {factor!r})")


class LearnedUpscaler:
    """A Swin2SR super-resolution model from a ``save_pretrained`` directory."""

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        from transformers import Swin2SRForImageSuperResolution

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"upscaler_dir: no model at {model_dir} (config.json is missing)")
        model = Swin2SRForImageSuperResolution.from_pretrained(model_dir, local_files_only=True)
        config = model.config
        if config.upscale < 2 or config.upsampler is None:
            # upscale 1 checkpoints are Swin2SR's denoising / JPEG-artifact models.
            raise ValueError(
                f"upscaler_dir: {model_dir} is not a super-resolution model "
                f"(upscale={config.upscale}, upsampler={config.upsampler!r})"
            )
        if config.num_channels != 3 or config.num_channels_out != 3:
            raise ValueError(f"upscaler_dir: {model_dir} must map RGB to RGB (got {config.num_channels} channels)")
        self.model = model.to(device).eval()
        self.device = torch.device(device)

    @property
    def factor(self) -> int:
        return int(self.model.config.upscale)

    @property
    def window_size(self) -> int:
        return int(self.model.config.window_size)

    @torch.inference_mode()
    def upscale(self, frames: np.ndarray, batch_size: int = 4) -> np.ndarray:
        """Upscale ``batch_size`` frames per forward: uint8 [F, factor*H, factor*W, 3]."""
        frames = checked_frames(frames)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: must be a positive integer (got {batch_size!r})")
        num_frames, height, width, _ = frames.shape
        factor = self.factor
        dtype = self.model.dtype
        upscaled = np.empty((num_frames, height * factor, width * factor, 3), dtype=np.uint8)
        for start in range(0, num_frames, batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch_size])).to(self.device)
            pixels = batch.permute(0, 3, 1, 2).to(dtype) / 255.0
            pixels = pad_symmetric(pixels, _to_multiple(height, self.window_size), _to_multiple(width, self.window_size))
            reconstruction = self.model(pixel_values=pixels).reconstruction
            reconstruction = reconstruction[:, :, : height * factor, : width * factor]
            as_uint8 = (reconstruction.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
            upscaled[start : start + batch_size] = as_uint8.permute(0, 2, 3, 1).cpu().numpy()
        return upscaled


def save_random_swin2sr(directory: Path, factor: int = 2, seed: int = 0) -> Path:
    """Save a tiny random-weight Swin2SR with ``save_pretrained``, for tests and offline demos.

    Like the built-in Wan presets, the weights are a pure function of (factor, seed, torch
    version): constructed on the CPU in float32 right after ``torch.manual_seed``.
    """
    from transformers import Swin2SRConfig, Swin2SRForImageSuperResolution

    check_upscale_factor(factor, LANCZOS_FACTORS, field="factor")
    config = Swin2SRConfig(
        image_size=64,
        embed_dim=16,
        depths=[2],  # two blocks, so the shifted-window attention path runs too
        num_heads=[2],
        window_size=8,  # the window size of the released Swin2SR checkpoints
        mlp_ratio=2.0,
        upscale=factor,
        upsampler="pixelshuffledirect",  # the lightweight checkpoints' head: one conv, few weights
        drop_path_rate=0.0,
    )
    torch.manual_seed(seed)
    model = Swin2SRForImageSuperResolution(config).eval()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    return directory


def _to_multiple(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def pad_symmetric(pixels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pad [B, C, h, w] at the bottom and right to [B, C, height, width], mirroring the edge
    pixel included (numpy's "symmetric"; torch's "reflect" excludes it and needs pad < size)."""
    pixels = pixels.index_select(2, _symmetric_indices(pixels.shape[2], height, pixels.device))
    return pixels.index_select(3, _symmetric_indices(pixels.shape[3], width, pixels.device))


def _symmetric_indices(size: int, padded_size: int, device: torch.device) -> torch.Tensor:
    # Mirror with period 2*size, so a pad longer than the image keeps folding back and forth.
    positions = torch.arange(padded_size, device=device) % (2 * size)
    return torch.where(positions < size, positions, 2 * size - 1 - positions)
