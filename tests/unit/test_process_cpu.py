"""CPU accounting per process, against a real process that burns a known share of a core."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from benchmarks.process_cpu import cpu_seconds_between, measured_cpu, process_label


def test_labels_name_serve_deployments_ray_actors_and_programs():
    assert process_label(["ray::ServeReplica:videoserve:Denoiser"], "python") == "replica Denoiser"
    assert process_label(["ray::ProxyActor"], "python") == "ray::ProxyActor"
    assert process_label(["/v/bin/python", "-m", "benchmarks.served_vs_diffusers", "--repeats", "3"], "python"
                         ) == "python -m benchmarks.served_vs_diffusers"
    assert process_label(["/v/bin/python3.11", "-u", "/x/ray/_private/log_monitor.py", "--a"], "python"
                         ) == "python log_monitor.py"
    assert process_label(["/x/ray/core/src/ray/raylet/raylet", "--flag"], "raylet") == "raylet"
    assert process_label(["/usr/bin/python3", "-c", "print(1)"], "python3") == "python -c"
    assert process_label([], "kworker/0:1") == "kworker/0:1"


def test_new_processes_count_from_zero_and_a_reused_pid_is_a_new_process():
    before = {(1, 100.0): ("a", 10.0), (2, 100.0): ("b", 5.0), (3, 100.0): ("old", 50.0),
              (5, 100.0): ("kworker/0:2-events", 7.0)}
    after = {(1, 100.0): ("a", 12.5), (2, 100.0): ("b", 5.0), (3, 200.0): ("new", 1.0), (4, 200.0): ("c", 0.75),
             (5, 100.0): ("kworker/0:2-mm_percpu_wq", 7.25)}
    assert cpu_seconds_between(before, after) == {"a": 2.5, "new": 1.0, "c": 0.75, "kworker/0:2-events": 0.25,
                                                   "b": 0.0}


def test_a_busy_child_process_shows_up_with_its_cpu_time():
    # Burns half a CPU-second, then waits on stdin so it is still alive at the second snapshot.
    burn = "import sys, time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass\nsys.stdin.read()\n"
    with measured_cpu() as report:
        child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE)
        process = psutil.Process(child.pid)
        while sum(process.cpu_times()[:2]) < 0.5:
            time.sleep(0.01)
    child.communicate(b"")
    assert report["cpu_s_by_process"]["python -c"] >= 0.5
    # Nothing invented: no more CPU time than the cores could give over the wall time.
    assert report["cpu_s_total"] <= report["wall_s"] * report["cores"] + 0.1
