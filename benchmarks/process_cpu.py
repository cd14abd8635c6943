"""Which processes on this machine used the CPU during a run, and how much.

On a one-machine cluster every stage, Ray's own processes and the load generator share
the same cores, so a throughput figure needs this next to it: it shows whether the
model stages got the cores or something else did. Ray names its worker processes after
what they run (``ray::ServeReplica:<app>:<Deployment>``), so CPU time is reported per
deployment and per Ray system process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

_SERVE_REPLICA = "ray::ServeReplica:"


def process_label(cmdline: list[str], name: str) -> str:
    """A short, stable name for a process: the Serve deployment, the Ray actor or the program."""
    if not cmdline:
        return name
    first = cmdline[0]
    if first.startswith(_SERVE_REPLICA):
        return f"replica {first[len(_SERVE_REPLICA):].split(':')[-1]}"
    if first.startswith("ray::"):
        return first
    program = Path(first).name
    if program.startswith("python") and len(cmdline) > 1:
        # python -m module / python script.py / python -u .../ray/_private/x.py
        arguments = [part for part in cmdline[1:] if not part.startswith("-")]
        if "-m" in cmdline[1:]:
            return f"python -m {cmdline[cmdline.index('-m') + 1]}"
        if "-c" in cmdline[1:]:
            return "python -c"
        if arguments:
            return f"python {Path(arguments[0]).name}"
    return program


# (pid, start time): a pid the system reused between two snapshots is another process.
ProcessKey = tuple[int, float]
CpuSnapshot = dict[ProcessKey, tuple[str, float]]


def cpu_snapshot() -> CpuSnapshot:
    """(pid, start time) -> (label, user + system CPU seconds so far) for every process we may read."""
    snapshot: CpuSnapshot = {}
    for process in psutil.process_iter(["cmdline", "name", "create_time"]):
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        label = process_label(process.info["cmdline"] or [], process.info["name"] or "?")
        snapshot[(process.pid, process.info["create_time"] or 0.0)] = (label, times.user + times.system)
    return snapshot


def cpu_seconds_between(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds each label used from ``before`` to ``after``, largest first.

    A process that started in between counts from zero. One that exited in between is
    missing from ``after`` and its time is lost: keep runs free of short-lived processes
    you care about, or read the total against the wall time.
    """
    used: dict[str, float] = {}
    for key, (label, seconds) in after.items():
        # A process keeps its first label: kernel workers rename themselves as they go.
        label, start = before.get(key, (label, 0.0))
        used[label] = used.get(label, 0.0) + max(0.0, seconds - start)
    return dict(sorted(used.items(), key=lambda item: -item[1]))


@contextmanager
def measured_cpu() -> Iterator[dict]:
    """Fills the yielded dict on exit: wall seconds, cores, and CPU seconds per process label."""
    report: dict = {}
    before, started = cpu_snapshot(), time.perf_counter()
    try:
        yield report
    finally:
        wall = time.perf_counter() - started
        used = cpu_seconds_between(before, cpu_snapshot())
        report.update({"wall_s": wall, "cores": psutil.cpu_count(), "cpu_s_total": sum(used.values()),
                       "cpu_s_by_process": used})
