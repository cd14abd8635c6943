"""Where a job's files live: one directory per job under the artifact root."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

from engine.post_processing.post_processor import FRAMES_FILE, SPRITESHEET_FILE, THUMBNAIL_FILE, VIDEO_FILE

_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

INPUT_IMAGE = "input_image"
# The post-processor names the files it writes; the store only maps the API's variants to them.
VARIANT_FILES = {"video": VIDEO_FILE, "thumbnail": THUMBNAIL_FILE, "spritesheet": SPRITESHEET_FILE, "frames": FRAMES_FILE}
VARIANT_MEDIA_TYPES = {"video": "video/mp4", "thumbnail": "image/jpeg", "spritesheet": "image/jpeg",
                       "frames": "application/x-npy"}


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
        """Write the job's input image durably; StorageFull (and nothing left behind) when the
        disk is full."""
        directory = self.job_dir(job_id)
        target = directory / INPUT_IMAGE
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=directory, prefix=".input-")
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            _fsync_directory(directory)
        except OSError as error:
            if error.errno in _DISK_FULL:
                self.delete(job_id)
                raise StorageFull(f"no space left for job {job_id}'s input image") from error
            raise
        return target

    def make_durable(self, paths: list[str]) -> None:
        """fsync a job's finished files and its directory, so they survive a crash once the
        record that names them is committed."""
        for path in paths:
            with open(path, "rb") as file:
                os.fsync(file.fileno())
        for directory in {Path(path).parent for path in paths}:  # their names, too
            _fsync_directory(directory)

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)


# ENOSPC, and EDQUOT (a quota is a full disk to this tenant of the volume).
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class StorageFull(OSError):
    """The artifact volume is out of space: a retryable condition for the client, not a bug."""


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, StorageFull) or (isinstance(error, OSError) and error.errno in _DISK_FULL)


def _fsync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
