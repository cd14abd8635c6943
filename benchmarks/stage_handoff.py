"""What moving a stage's output to the next stage costs, for each way Serve can move it.

Two real Serve deployments on a local Ray cluster: ``Producer.make`` returns N bytes as
the stages hand them over (a float32 torch tensor, as text embeddings and latents are, or
a uint8 numpy array, as frames are), ``Consumer.read`` reads it and returns one number. The
caller plays the job runner (it lives in the ingress replica in the app):

- ``composed``: ``consumer.read.remote(producer.make.remote(n))`` — the DeploymentResponse
  is handed on uncollected, Ray moves the tensor between the replicas (Serve's model
  composition);
- ``relayed``: ``x = await producer.make.remote(n)`` then ``consumer.read.remote(x)`` — the
  tensor comes to the caller and goes out again.

Overhead is the median end-to-end time minus that of ``Producer.make_and_read`` (the
same work in one call, nothing moved), at the sizes a Wan request hands over: text
embeddings (~8 MB), latents (~20 MB at 720p) and 720p frames (81 x 1280 x 720 x 3 = 224 MB).
The 720p request's whole journey is the sum of those three rows.

    python -m benchmarks.stage_handoff [--repeats 7]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.load_generator import client_machine

# (payload kind, megabytes): what a 720p Wan request hands between its stages.
PAYLOADS = (("torch", 1), ("torch", 8), ("torch", 32), ("numpy", 224))


def _deployments():
    from ray import serve

    quiet = {"logging_config": {"log_level": "WARNING", "enable_access_log": False}}

    @serve.deployment(ray_actor_options={"num_cpus": 0}, **quiet)
    class Consumer:
        def read(self, tensor) -> float:
            return float(tensor[::4096].sum())

    @serve.deployment(ray_actor_options={"num_cpus": 0}, **quiet)
    class Producer:
        def make(self, kind: str, nbytes: int):
            if kind == "numpy":
                import numpy

                return numpy.ones(nbytes, dtype=numpy.uint8)
            import torch

            return torch.ones(nbytes // 4, dtype=torch.float32)

        def make_and_read(self, kind: str, nbytes: int) -> float:
            return float(self.make(kind, nbytes)[::4096].sum())

    return Producer, Consumer


async def _time(call, repeats: int) -> float:
    await call()  # warm-up: replicas, object store pages
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _measure(producer, consumer, repeats: int) -> list[dict]:
    rows = []
    for kind, size_mb in PAYLOADS:
        nbytes = size_mb * 2**20

        async def direct():
            return await producer.make_and_read.remote(kind, nbytes)

        async def composed():
            return await consumer.read.remote(producer.make.remote(kind, nbytes))

        async def relayed():
            return await consumer.read.remote(await producer.make.remote(kind, nbytes))

        base = await _time(direct, repeats)
        row = {"payload": kind, "megabytes": size_mb, "direct_s": base}
        for name, call in (("composed", composed), ("relayed", relayed)):
            elapsed = await _time(call, repeats)
            row[f"{name}_s"] = elapsed
            row[f"{name}_overhead_ms"] = (elapsed - base) * 1000
        rows.append(row)
        print(f"{kind:6s} {size_mb:5d} MB  direct {base * 1000:8.1f} ms  composed +{row['composed_overhead_ms']:7.1f} ms"
              f"  relayed +{row['relayed_overhead_ms']:7.1f} ms", flush=True)
    return rows


def main(
    repeats: Annotated[int, typer.Option(help="Timed calls per figure (median), after one warm-up.")] = 7,
    output: Annotated[Path, typer.Option(help="JSON report.")] = Path("benchmarks/out/stage_handoff.json"),
) -> None:
    import ray
    from ray import serve

    ray.init(address="local", include_dashboard=False, num_cpus=2, logging_level="ERROR")
    try:
        Producer, Consumer = _deployments()
        consumer = serve.run(Consumer.bind(), name="handoff-consumer", route_prefix=None)
        producer = serve.run(Producer.bind(), name="handoff-producer", route_prefix=None)
        rows = asyncio.run(_measure(producer, consumer, repeats))
    finally:
        serve.shutdown()
        ray.shutdown()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"machine": client_machine(), "ray": ray.__version__, "repeats": repeats,
                                  "rows": rows}, indent=2))


if __name__ == "__main__":
    typer.run(main)
