"""Learned video frame interpolation (RIFE, FILM, ...) shipped as a TorchScript file.

Interpolation models are published as research code, not in a well-kept library this
project can depend on; what their users ship is a TorchScript export, which torch itself
loads without the model's source. The contract is the one RIFE and FILM exports share:

    model(frame0, frame1, timestep) -> frame
    frame0, frame1: float [B, 3, H, W] in [0, 1]; timestep: float [B, 1, 1, 1] in (0, 1)

The output timeline matches interpolate_with_ffmpeg: ceil(F * target / source) frames,
output frame k shows source time k * source / target (in source frames); frames that
fall on a source frame, or past the last one, are copied, the rest are predicted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.frame_array import checked_frames
from engine.post_processing.frame_interpolation import check_interpolate_fps, interpolated_frame_count


class LearnedInterpolator:
    def __init__(self, model_path: str | Path, device: str = "cpu"):
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"interpolation_model: no TorchScript file at {path}")
        self.device = torch.device(device)
        self.model = torch.jit.load(str(path), map_location=self.device).eval()

    @torch.no_grad()
    def interpolate(self, frames: np.ndarray, source_fps: int, target_fps: int, batch_size: int = 8) -> np.ndarray:
        frames = checked_frames(frames)
        check_interpolate_fps(target_fps, source_fps)
        if batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1 (got {batch_size})")
        count = len(frames)
        output_count = interpolated_frame_count(count, source_fps, target_fps)
        output = np.empty((output_count, *frames.shape[1:]), dtype=np.uint8)
        predicted: list[tuple[int, int, float]] = []  # (output index, left source frame, fraction)
        for index in range(output_count):
            # Exact rational arithmetic: a frame that lands on a source frame is that frame.
            left, remainder = divmod(index * source_fps, target_fps)
            if remainder == 0 or left >= count - 1:
                output[index] = frames[min(left, count - 1)]
            else:
                predicted.append((index, left, remainder / target_fps))
        for start in range(0, len(predicted), batch_size):
            chunk = predicted[start : start + batch_size]
            first = self._tensor(frames[[left for _, left, _ in chunk]])
            second = self._tensor(frames[[left + 1 for _, left, _ in chunk]])
            timestep = torch.tensor([fraction for _, _, fraction in chunk], dtype=torch.float32, device=self.device)
            result = self.model(first, second, timestep.view(-1, 1, 1, 1))
            pixels = (result.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for (index, _, _), frame in zip(chunk, pixels):
                output[index] = frame
        return output

    def _tensor(self, frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float() / 255.0
