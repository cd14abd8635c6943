"""Fault injection against a served app: what happens to every accepted job when things die.

    python -m benchmarks.fault_injection [--jobs 6] [--layout colocated] [--fault denoiser --fault redis ...]
                                         [--out FILE]

The app is the product as an operator runs it: ``videoserve up --config FILE`` on a Ray
cluster of its own (``ray start --head``, both in their own process groups), the job store
in a real ``redis-server`` (``appendfsync always``), webhooks to a Standard Webhooks receiver
on 127.0.0.1. It serves ``tiny`` (text-to-video) and ``tiny-i2v`` (image-to-video), so every
stage is there, each with one replica (``--layout colocated``: one Pipeline replica per
model, which runs all of that model's stages). For each fault, jobs are submitted (half of them
image-to-video, each with a webhook) and more keep arriving while the fault happens; once a
job is seen in the faulted stage, the fault is injected:

- a stage's replica (TextEncoder, ImageConditioner, Denoiser, VaeDecoder, PostProcessor, or
  the colocated Pipeline): ``ray.kill`` of the replica the job is on;
- the ingress (VideoAPI, which runs the job runner): ``ray.kill`` of its replica;
- the whole app: SIGKILL of every process of the Ray cluster and of ``videoserve up``, then
  both started again as an operator (or Kubernetes) would;
- Redis: SIGKILL of ``redis-server`` under load, then started again on its port.

Then every accepted job (a 200 from POST) is followed to its end, within a deadline:
completed, failed, lost (not ended, or gone from the store: must be 0) and completed twice
(more than one end-of-job event, told apart by ``webhook-id``: must be 0), with the
webhooks delivered per job and the attempts the store counted. Traffic goes to loopback only.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml

from benchmarks.machine import describe_machine
from tests.support.images import image_bytes  # test support is harness code here, as in the test suite
from tests.support.redis_server import RedisServer, free_port
from tests.support.served_metrics import metric_samples
from tests.support.webhook_receiver import WebhookReceiver

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"fault-injection-benchmark-secret!").decode()
MODELS = ("tiny", "tiny-i2v")
# Long enough that a fault lands while jobs are inside the stages (a few seconds a job here).
JOB = {"size": "128x128", "num_frames": 33, "num_inference_steps": 40}
# Short, so jobs of a dead runner resume soon; longer than a Redis restart, which the runner
# rides out by retrying its writes while its lease holds (the default lease is 30 s).
LEASE_SECONDS = 10.0
STAGE_FAULTS = {  # fault name -> (deployment kind, the runner's name of the stage a job is seen in)
    "text_encoder": ("TextEncoder", "text_encoder"),
    "image_conditioner": ("ImageConditioner", "image_conditioner"),
    "denoiser": ("Denoiser", "denoiser"),
    "vae_decoder": ("VaeDecoder", "vae_decoder"),
    "post_processor": ("PostProcessor", "post_processor"),
    "pipeline": ("Pipeline", "denoiser"),
    "ingress": ("VideoAPI", "denoiser"),
}
FAULTS = (*STAGE_FAULTS, "whole_app", "redis")
# The faults each layout has: a colocated app has one Pipeline replica per model in place of
# the five stage deployments.
LAYOUT_FAULTS = {
    "disaggregated": tuple(f for f in FAULTS if f != "pipeline"),
    "colocated": ("pipeline", "ingress", "whole_app", "redis"),
}
FAULT_LABELS = {
    "text_encoder": "kill the TextEncoder replica (ray.kill)",
    "image_conditioner": "kill the ImageConditioner replica (ray.kill)",
    "denoiser": "kill the Denoiser replica (ray.kill)",
    "vae_decoder": "kill the VaeDecoder replica (ray.kill)",
    "post_processor": "kill the PostProcessor replica (ray.kill)",
    "pipeline": "kill the colocated Pipeline replica (ray.kill)",
    "ingress": "kill the ingress (VideoAPI) replica (ray.kill)",
    "whole_app": "SIGKILL the whole app (Ray cluster + videoserve up), restart",
    "redis": "SIGKILL redis-server under load, restart",
}


@dataclass
class FaultOutcome:
    fault: str
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # status (or "connection") -> creates refused
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0
    completed_twice: int = 0
    webhooks_expected: int = 0
    jobs_with_webhook: int = 0  # jobs whose end-of-job event reached the receiver
    webhook_deliveries: int = 0  # POSTs received for this fault's jobs, retries included
    attempts: dict[str, int] = field(default_factory=dict)  # attempts -> jobs
    seen_in_stage: bool = False  # a job was in the faulted stage when the fault was injected
    in_flight_at_fault: int = 0
    recovery_s: float = 0.0  # from the fault to the last accepted job's end
    # Stage calls that failed during the fault (videoserve_stage_failures_total), by stage; None
    # where the ingress restarted, and its counters with it.
    stage_failures: dict[str, int] | None = None
    failure_codes: dict[str, int] = field(default_factory=dict)


class ServedApp:
    """``ray start --head`` and ``videoserve up --config`` as two process groups on loopback."""

    def __init__(self, root: Path, redis_url: str, jobs: int, layout: str):
        self.root = root
        self.ray_port = free_port()
        self.http_port = free_port()
        self.temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # Ray's socket paths must stay short
        self.config_path = root / "videoserve.yaml"
        self.config_path.write_text(yaml.safe_dump(self._serve_config(redis_url, jobs, layout)))
        self._ray: subprocess.Popen | None = None
        self._up: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.http_port}"

    def _serve_config(self, redis_url: str, jobs: int, layout: str) -> dict[str, Any]:
        from serve.app_config import AppConfig
        from serve.cluster_launcher import default_serve_config

        config = AppConfig.model_validate({
            "models": list(MODELS),
            "layout": layout,
            "device": "cpu",
            "storage": {"state_dir": str(self.root / "state"), "job_store_url": redis_url},
            "jobs": {"lease_seconds": LEASE_SECONDS, "poll_interval_seconds": 0.05, "max_queued": 1000,
                     "max_attempts": 3},
            "webhooks": {"secret": WEBHOOK_SECRET, "initial_backoff_seconds": 0.1, "allow_private_targets": True},
            "denoiser": {"max_batch_size": max(2, jobs)},
        })
        serve_config = default_serve_config(config, host="127.0.0.1", port=self.http_port)
        for deployment in serve_config["applications"][0]["deployments"]:
            # One replica each: a killed replica is the stage's only one until Serve replaces it.
            deployment["autoscaling_config"] = None
            deployment["num_replicas"] = 1
        return serve_config

    def start(self, timeout_s: float = 600) -> None:
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self._ray = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={self.ray_port}",
             "--node-ip-address=127.0.0.1", "--num-cpus=8", f"--temp-dir={self.temp_dir}",
             "--include-dashboard=false", "--disable-usage-stats"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        self._wait_for_ray(timeout_s)
        log = (self.root / "videoserve-up.log").open("ab")
        self._up = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", "--config", str(self.config_path)],
            stdout=log, stderr=log, env={**env, "RAY_ADDRESS": self.ray_address}, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._up.poll() is not None:
                raise RuntimeError(f"videoserve up exited ({self._up.returncode}); see {self.root / 'videoserve-up.log'}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("the app did not become healthy")
        import ray

        ray.init(address=self.ray_address, namespace="serve", log_to_driver=False)

    @property
    def ray_address(self) -> str:
        return f"127.0.0.1:{self.ray_port}"

    def _wait_for_ray(self, timeout_s: float) -> None:
        import socket

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.ray_port)) == 0:
                    time.sleep(2)  # the GCS answers before the raylet has registered
                    return
            time.sleep(0.2)
        raise RuntimeError("ray start did not come up")

    def replica_actor(self, deployment_kind: str, model: str):
        """The actor handle of the replica of ``deployment_kind`` that serves ``model``."""
        import ray

        names = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                 if actor["name"].startswith("SERVE_REPLICA::")]
        deployments = {name.split("#")[1]: name for name in names}
        candidates = [d for d in deployments if d == deployment_kind or d.startswith(f"{deployment_kind}-")]
        exact = [d for d in candidates if d == f"{deployment_kind}-{model}"]
        if not candidates:
            raise RuntimeError(f"no replica of {deployment_kind} among {sorted(deployments)}")
        return ray.get_actor(deployments[(exact or candidates)[0]], namespace="serve")

    def sigkill_everything(self) -> int:
        """SIGKILL both process groups (every Ray process and the driver); how many processes died."""
        import psutil
        import ray

        ray.shutdown()  # this benchmark's own connection; the cluster itself is killed below
        groups = [os.getpgid(process.pid) for process in (self._ray, self._up) if process and process.poll() is None]
        members = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) in groups]
        for group in groups:
            os.killpg(group, signal.SIGKILL)
        psutil.wait_procs(members, timeout=30)
        leftovers = [p.pid for p in psutil.process_iter(["pid"]) if _pgid(p.pid) in groups]
        if leftovers:
            raise RuntimeError(f"processes survived SIGKILL of the app: {leftovers}")
        for process in (self._ray, self._up):
            if process:
                process.wait()
        return len(members)

    def stop(self) -> None:
        import ray

        ray.shutdown()
        for process in (self._up, self._ray):
            if process and process.poll() is None:
                os.killpg(os.getpgid(process.pid), signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(os.getpgid(process.pid), signal.SIGKILL)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


class Submitter:
    """Creates jobs over HTTP, remembers the accepted ones, counts the refused ones."""

    def __init__(self, url: str, webhook_url: str):
        self.url, self.webhook_url = url, webhook_url
        self.accepted: list[tuple[str, str]] = []  # (video id, model)
        self.refused: Counter = Counter()
        self._lock = threading.Lock()
        self._count = 0

    def submit(self) -> None:
        with self._lock:
            self._count += 1
            n = self._count
        model = MODELS[n % 2]
        body = {"model": model, "prompt": f"fault injection clip {n}", "seed": n, "webhook_url": self.webhook_url,
                **JOB}
        if model == "tiny-i2v":
            # A new picture each time: a repeated one is a first-frame cache hit, which skips the stage.
            body["input_reference"] = {"image_url": "data:image/png;base64,"
                                       + base64.b64encode(image_bytes(128, 128, seed=n)).decode()}
        try:
            response = httpx.post(f"{self.url}/v1/videos", json=body, timeout=30)
        except httpx.HTTPError:
            with self._lock:
                self.refused["connection"] += 1
            return
        with self._lock:
            if response.status_code == 200:
                self.accepted.append((response.json()["id"], model))
            else:
                self.refused[str(response.status_code)] += 1

    def keep_submitting(self, stop: threading.Event, interval_s: float) -> threading.Thread:
        def loop():
            while not stop.is_set():
                self.submit()
                stop.wait(interval_s)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread


def run_fault(fault: str, app: ServedApp, redis_server: RedisServer, receiver: WebhookReceiver, jobs: int,
              deadline_s: float) -> FaultOutcome:
    from serve.jobs.open_store import open_job_store

    outcome = FaultOutcome(fault)
    failures_before = _stage_failures(app.url)
    submitter = Submitter(app.url, receiver.url)
    for _ in range(jobs):
        submitter.submit()
    store = open_job_store(redis_server.url)
    stop_load = threading.Event()
    load = submitter.keep_submitting(stop_load, interval_s=0.5)  # more jobs arrive while the fault happens
    kind, stage = STAGE_FAULTS.get(fault, (None, "denoiser"))
    # Looked up before the wait, so the kill follows the sighting by milliseconds, not a
    # controller round trip: fast stages are then killed with the call in flight more often.
    targets = {model: app.replica_actor(kind, model) for model in MODELS} if kind is not None else {}
    seen = _wait_for_stage(store, submitter, stage, timeout_s=60)
    outcome.seen_in_stage = seen is not None
    outcome.in_flight_at_fault = sum(1 for job_id, _ in list(submitter.accepted)
                                     if (record := store.get(job_id)) and record.status.value == "in_progress")
    fault_at = time.monotonic()
    if kind is not None:
        import ray

        ray.kill(targets[seen[1] if seen else MODELS[0]], no_restart=True)
        time.sleep(2)
    elif fault == "whole_app":
        app.sigkill_everything()
        time.sleep(1)
        app.start()
    elif fault == "redis":
        redis_server.kill()
        time.sleep(2)  # the outage: creates answer 503, runners retry their writes
        redis_server.start()
    time.sleep(2)  # the load goes on past the fault
    stop_load.set()
    load.join()
    store.close()
    store = open_job_store(redis_server.url)
    ends = _wait_for_ends(store, [job_id for job_id, _ in submitter.accepted], fault_at + deadline_s)
    outcome.recovery_s = round(time.monotonic() - fault_at, 1)
    _wait_for_webhooks(receiver, {job_id for job_id, record in ends.items() if record is not None and record.is_terminal},
                       timeout_s=30)
    _count(outcome, submitter, ends, receiver)
    if fault not in ("whole_app", "ingress"):  # the counters live in the ingress replica
        after = _stage_failures(app.url)
        outcome.stage_failures = {stage: int(after.get(stage, 0) - failures_before.get(stage, 0))
                                  for stage in sorted(after) if after.get(stage, 0) > failures_before.get(stage, 0)}
    store.close()
    return outcome


def _stage_failures(url: str) -> dict[str, float]:
    return {dict(labels)["stage"]: value for (name, labels), value in metric_samples(url).items()
            if name == "videoserve_stage_failures_total"}


def _wait_for_stage(store, submitter: Submitter, stage: str, timeout_s: float) -> tuple[str, str] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for job_id, model in list(submitter.accepted):
            record = store.get(job_id)
            if record is not None and record.stage == stage:
                return job_id, model
        time.sleep(0.01)
    return None


def _wait_for_ends(store, job_ids: list[str], deadline: float) -> dict[str, Any]:
    """Each accepted job's record once it ended, or as it stood at the deadline (None: gone)."""
    from serve.jobs.store import JobStoreUnavailable

    records: dict[str, Any] = {}
    pending = list(job_ids)
    while pending and time.monotonic() < deadline:
        still = []
        for job_id in pending:
            try:
                record = store.get(job_id)
            except JobStoreUnavailable:
                still.append(job_id)
                continue
            records[job_id] = record
            if record is None or not record.is_terminal:
                still.append(job_id)
        pending = still
        if pending:
            time.sleep(0.5)
    return records


def _wait_for_webhooks(receiver: WebhookReceiver, ended: set[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ended <= {delivery.payload["data"]["id"] for delivery in list(receiver.deliveries) if delivery.payload}:
            return
        time.sleep(0.2)


def _count(outcome: FaultOutcome, submitter: Submitter, ends: dict[str, Any], receiver: WebhookReceiver) -> None:
    accepted = [job_id for job_id, _ in submitter.accepted]
    outcome.accepted = len(accepted)
    outcome.refused = dict(submitter.refused)
    statuses = Counter()
    attempts: Counter = Counter()
    codes: Counter = Counter()
    for job_id in accepted:
        record = ends.get(job_id)
        if record is None or not record.is_terminal:
            outcome.lost += 1
            continue
        statuses[record.status.value] += 1
        attempts[str(record.attempts)] += 1
        if record.error_code:
            codes[record.error_code] += 1
    outcome.completed, outcome.failed, outcome.cancelled = (statuses["completed"], statuses["failed"],
                                                            statuses["cancelled"])
    outcome.attempts = dict(sorted(attempts.items()))
    outcome.failure_codes = dict(codes)
    # One end-of-job event per job: distinct webhook-ids for one video mean it ended twice.
    events: dict[str, set[str]] = defaultdict(set)
    deliveries = 0
    for delivery in list(receiver.deliveries):
        if delivery.payload is None:
            continue
        video_id = delivery.payload["data"]["id"]
        if video_id in set(accepted):
            deliveries += 1
            events[video_id].add(delivery.headers.get("webhook-id") or delivery.headers.get("Webhook-Id"))
    outcome.completed_twice = sum(1 for ids in events.values() if len(ids) > 1)
    outcome.webhooks_expected = outcome.completed + outcome.failed
    outcome.jobs_with_webhook = len(events)
    outcome.webhook_deliveries = deliveries


def markdown_table(outcomes: list[FaultOutcome]) -> str:
    rows = ["| fault | accepted | refused while down | completed | failed | lost | completed twice | "
            "webhooks (jobs / ended, deliveries) | attempts: jobs | stage calls failed | recovery |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        refused = ", ".join(f"{n}× {status}" for status, n in sorted(o.refused.items())) or "0"
        attempts = ", ".join(f"{a}: {n}" for a, n in o.attempts.items())
        seen = "" if o.seen_in_stage else " (no job seen in the stage)"
        failures = ("n/a (ingress restarted)" if o.stage_failures is None
                    else ", ".join(f"{stage} {n}" for stage, n in o.stage_failures.items()) or "0")
        rows.append(f"| {FAULT_LABELS[o.fault]}{seen} | {o.accepted} | {refused} | {o.completed} | {o.failed} | "
                    f"{o.lost} | {o.completed_twice} | {o.jobs_with_webhook} / {o.webhooks_expected}, "
                    f"{o.webhook_deliveries} | {attempts} | {failures} | {o.recovery_s:.0f} s |")
    return "\n".join(rows)


def main(
    jobs: Annotated[int, typer.Option(min=1, help="Jobs submitted before each fault (more arrive during it).")] = 6,
    fault: Annotated[list[str] | None, typer.Option(help=f"Faults to inject (default all): {', '.join(FAULTS)}.")] = None,
    deadline_s: Annotated[float, typer.Option(help="How long after a fault every accepted job has to end.")] = 300,
    out: Annotated[Path | None, typer.Option(help="Write the outcomes as JSON here.")] = None,
    layout: Annotated[str, typer.Option(help="The app's layout: disaggregated (a replica per stage) or colocated "
                                             "(one Pipeline replica per model).")] = "disaggregated",
) -> None:
    if layout not in LAYOUT_FAULTS:
        raise typer.BadParameter(f"choose from {', '.join(LAYOUT_FAULTS)}", param_hint="--layout")
    chosen = list(fault or LAYOUT_FAULTS[layout])
    unknown = sorted(set(chosen) - set(LAYOUT_FAULTS[layout]))
    if unknown:
        raise typer.BadParameter(f"unknown faults {unknown} for the {layout} layout; choose from "
                                 f"{', '.join(LAYOUT_FAULTS[layout])}", param_hint="--fault")
    outcomes = run_faults(chosen, jobs=jobs, deadline_s=deadline_s, layout=layout)
    print(markdown_table(outcomes))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"machine": describe_machine(), "layout": layout, "jobs": jobs, "job": JOB,
                                   "outcomes": [asdict(o) for o in outcomes]}, indent=2))


def run_faults(faults: list[str], *, jobs: int, deadline_s: float, layout: str) -> list[FaultOutcome]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="videoserve-faults-") as root_name:
        root = Path(root_name)
        redis_server = RedisServer(root / "redis", appendfsync="always", keep_port=True)
        redis_server.start()
        receiver = WebhookReceiver(WEBHOOK_SECRET)
        app = ServedApp(root, redis_server.url, jobs, layout)
        try:
            app.start()
            outcomes = []
            for name in faults:
                print(f"[{time.monotonic() - started:5.0f} s] {FAULT_LABELS[name]} ...", file=sys.stderr, flush=True)
                outcomes.append(run_fault(name, app, redis_server, receiver, jobs, deadline_s))
                print(f"    {asdict(outcomes[-1])}", file=sys.stderr, flush=True)
        finally:
            app.stop()
            receiver.close()
            redis_server.stop()
    print(f"all faults in {time.monotonic() - started:.0f} s; median recovery "
          f"{statistics.median(o.recovery_s for o in outcomes):.0f} s", file=sys.stderr)
    return outcomes


if __name__ == "__main__":
    typer.run(main)
