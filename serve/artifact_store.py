"""Where a job's files live: one directory per job under the artifact root."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from engine.post_processing.post_processor import FRAMES_FILE, THUMBNAIL_FILE, VIDEO_FILE

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

INPUT_IMAGE = "input_image"
# The post-processor names the files it writes; the store only maps the API's variants to them.
VARIANT_FILES = {"video": VIDEO_FILE, "thumbnail": THUMBNAIL_FILE, "frames": FRAMES_FILE}
VARIANT_MEDIA_TYPES = {"video": "video/mp4", "thumbnail": "image/jpeg", "frames": "application/x-npy"}


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        # Job ids come from URLs: never let one walk out of the root.
        if not _SAFE_ID.match(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.root / job_id

    def save_input_image(self, job_id: str, data: bytes) -> Path:
        directory = self.job_dir(job_id)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / INPUT_IMAGE
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".input-")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
        return target

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
