"""Parsing a video size as the API, the CLI and the load generator write it: ``WIDTHxHEIGHT``."""

from __future__ import annotations


def parse_size(size: str) -> tuple[int, int]:
    """'832x480' -> (832, 480); ValueError naming the field ``size`` unless both are positive integers."""
    parts = size.lower().split("x") if isinstance(size, str) else []
    if len(parts) != 2 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"size: must look like WIDTHxHEIGHT with positive integers, e.g. 832x480 (got {size!r})")
    return int(parts[0]), int(parts[1])
