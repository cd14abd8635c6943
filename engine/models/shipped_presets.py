"""Models trained here and shipped in the repository: weights committed, loaded with from_pretrained.

``toy`` is the toy world model (training/toy_world): one Wan 2.2 TI2V-layout checkpoint that
runs text-to-video and image-to-video, small enough to commit (see its videoserve.json for
how it was trained). ``videoserve-train toy`` reproduces it.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
SHIPPED_PRESETS: dict[str, Path] = {"toy": SHIPPED_DIR / "toy"}
