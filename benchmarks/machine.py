"""The machine a benchmark ran on, as every report records it (one home for this fact)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any


def describe_machine(**versions: str) -> dict[str, Any]:
    """CPU model, cores, Python, and torch's version and thread count where torch is loaded
    (the load generator never imports it); ``versions`` adds others (httpx, ray)."""
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    machine: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}
    torch = sys.modules.get("torch")
    if torch is not None:
        machine |= {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    return machine | versions
