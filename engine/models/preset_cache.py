"""Building a generated preset into the cache exactly once, even under concurrent first use."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_once(target: Path, build: Callable[[Path], None], marker: str) -> Path:
    """Return ``target``, first running ``build(directory)`` if ``target/marker`` is missing.

    It builds beside the target and renames into place, so several stage processes
    starting together never see a half-written preset; the losers of the race discard
    their copy.
    """
    target = Path(target)
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
