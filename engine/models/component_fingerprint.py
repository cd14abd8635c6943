"""Content digests of a checkpoint's components, to find stages whose weights are byte-identical across models.

Every Wan checkpoint ships the same UMT5 encoder and Wan 2.1 and 2.2 A14B the same VAE;
an app serving several of them loads each such component once. Two components are the
same when their files are: a file's digest is its SHA-256, which the Hugging Face cache
already names LFS blobs by (a symlink into ``blobs/`` costs nothing to read), and
anything else is hashed once and remembered by (path, size, mtime). Config files are
compared without the keys that record who saved them (library versions, source path).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path

_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")
# Keys save_pretrained writes that say nothing about the component itself.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "_diffusers_version", "transformers_version", "_commit_hash"}
_CHUNK = 8 * 1024 * 1024

_memo: dict[tuple[str, int, int], str] = {}
_memo_lock = threading.Lock()


def components_fingerprint(root: str | Path, components: tuple[str, ...]) -> str:
    """One digest over every file of ``components`` (model_index subfolders) under ``root``."""
    root = Path(root)
    digest = hashlib.sha256()
    for component in components:
        folder = root / component
        if not folder.is_dir():
            raise FileNotFoundError(f"{root} has no {component}/ folder")
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            digest.update(f"{path.relative_to(root).as_posix()}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    if path.suffix == ".json":
        return _config_digest(path)
    target = Path(os.path.realpath(path))
    if target != path and _SHA256_NAME.match(target.name):  # a Hugging Face cache blob, named by its SHA-256
        return target.name
    stat = target.stat()
    key = (str(target), stat.st_size, stat.st_mtime_ns)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
    digest = hashlib.sha256()
    with open(target, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    with _memo_lock:
        _memo[key] = digest.hexdigest()
    return _memo[key]


def _config_digest(path: Path) -> str:
    try:
        config = json.loads(path.read_text())
    except ValueError:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if isinstance(config, dict):
        config = {key: value for key, value in config.items() if key not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
