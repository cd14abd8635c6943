"""The denoise scheduler's policy, driven by hand: schedule() -> (a runner) -> update_from_output().

Like vLLM's scheduler tests, nothing here runs a model: the "runner" is the test itself,
reporting which scheduled requests ran their step.
"""

from __future__ import annotations

import ast
import random
from collections import Counter

import pytest

from engine.batching.denoise_scheduler import (
    DenoiseScheduler,
    ScheduledRequest,
    SchedulerConfig,
    SchedulerLoad,
    SchedulerOutput,
    StepResult,
)
from tests.support.repo import REPO_ROOT, run_python


def request(request_id: str, key="a", steps: int = 4, tokens: int = 1, arrival: float = 0.0, **fields):
    return ScheduledRequest(request_id, key, total_steps=steps, tokens=tokens, arrival_time=arrival, **fields)


def run_step(scheduler: DenoiseScheduler, now: float = 0.0) -> tuple[SchedulerOutput, list[str]]:
    """One engine step in which every scheduled request runs."""
    output = scheduler.schedule(now)
    return output, scheduler.update_from_output(output, StepResult(output.request_ids))


def drain(scheduler: DenoiseScheduler, now: float = 0.0) -> list[SchedulerOutput]:
    outputs = []
    while scheduler.has_unfinished():
        outputs.append(run_step(scheduler, now)[0])
        assert len(outputs) < 10_000, "the scheduler never drained"
    return outputs


def test_a_single_request_runs_one_step_per_schedule_until_it_finishes():
    scheduler = DenoiseScheduler(SchedulerConfig())
    only = request("r1", steps=4)
    scheduler.add_request(only)

    for step in range(1, 4):
        output, finished = run_step(scheduler)
        assert output == SchedulerOutput(batch_key="a", request_ids=("r1",), expired=(), aborted=())
        assert finished == []
        assert only.steps_done == step
    output, finished = run_step(scheduler)
    assert output.request_ids == ("r1",)
    assert finished == ["r1"]
    assert only.steps_done == 4
    assert not scheduler.has_unfinished()
    assert scheduler.num_requests == 0
    assert scheduler.schedule(0.0) == SchedulerOutput(batch_key=None, request_ids=(), expired=(), aborted=())


def test_two_keys_take_turns():
    scheduler = DenoiseScheduler(SchedulerConfig())
    for request_id, key in (("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b")):
        scheduler.add_request(request(request_id, key, steps=3))

    outputs = drain(scheduler)

    assert [output.batch_key for output in outputs] == ["a", "b"] * 3
    assert all(output.request_ids == ((output.batch_key + "1"), (output.batch_key + "2")) for output in outputs)


def test_a_steady_stream_of_one_key_cannot_starve_another():
    scheduler = DenoiseScheduler(SchedulerConfig(max_batch_size=2))
    added = 0

    def feed_a():
        nonlocal added
        scheduler.add_request(request(f"a{added}", "a", steps=50, arrival=float(added)))
        added += 1

    for _ in range(20):
        feed_a()
        run_step(scheduler)
    scheduler.add_request(request("b", "b", steps=3, arrival=20.0))

    steps_until_b, b_steps, steps = None, 0, 0
    while b_steps < 3:
        feed_a()
        output, finished = run_step(scheduler)
        steps += 1
        if output.batch_key == "b":
            b_steps += 1
            steps_until_b = steps_until_b or steps
        assert steps <= 6, "b waited longer than one turn per key"
    # Two keys hold requests: b runs within two steps and then on every other step.
    assert steps_until_b <= 2
    assert finished == ["b"]
    assert scheduler.queued_by_key()["a"] == added


def test_a_newly_appearing_key_queues_behind_keys_already_waiting():
    scheduler = DenoiseScheduler(SchedulerConfig())
    for key in ("a", "b", "c"):
        scheduler.add_request(request(key, key, steps=10))
    first, _ = run_step(scheduler)
    scheduler.add_request(request("d", "d", steps=10))

    keys = [run_step(scheduler)[0].batch_key for _ in range(6)]

    assert first.batch_key == "a"
    assert keys == ["b", "c", "a", "d", "b", "c"]


def test_a_request_added_after_a_step_runs_in_the_next_step_with_its_key():
    scheduler = DenoiseScheduler(SchedulerConfig())
    scheduler.add_request(request("a1", steps=5, arrival=0.0))
    scheduler.add_request(request("a2", steps=5, arrival=1.0))
    run_step(scheduler)
    run_step(scheduler)

    late = request("a3", steps=2, arrival=2.0)
    scheduler.add_request(late)
    output, _ = run_step(scheduler)

    assert output.request_ids == ("a1", "a2", "a3")
    assert late.steps_done == 1
    assert [run_step(scheduler)[1] for _ in range(2)] == [["a3"], ["a1", "a2"]]


def test_batch_size_cap_takes_the_oldest_by_arrival_time_then_by_insertion_order():
    scheduler = DenoiseScheduler(SchedulerConfig(max_batch_size=2))
    scheduler.add_request(request("late", arrival=9.0))
    scheduler.add_request(request("tie-first", arrival=3.0))
    scheduler.add_request(request("tie-second", arrival=3.0))
    scheduler.add_request(request("earliest", arrival=1.0))

    output, _ = run_step(scheduler)

    assert output.request_ids == ("earliest", "tie-first")


def test_token_cap_fills_the_batch_first_fit_in_arrival_order():
    scheduler = DenoiseScheduler(SchedulerConfig(max_tokens_per_step=8))
    scheduler.add_request(request("five", tokens=5, arrival=0.0))
    scheduler.add_request(request("four", tokens=4, arrival=1.0))
    scheduler.add_request(request("three", tokens=3, arrival=2.0))
    scheduler.add_request(request("one", tokens=1, arrival=3.0))

    output, _ = run_step(scheduler)

    # "four" does not fit next to "five"; the younger "three" does, then nothing more fits.
    assert output.request_ids == ("five", "three")


def test_a_request_over_the_token_cap_runs_alone_and_is_not_starved():
    scheduler = DenoiseScheduler(SchedulerConfig(max_tokens_per_step=8))
    scheduler.add_request(request("small-short", tokens=2, steps=1, arrival=0.0))
    scheduler.add_request(request("huge", tokens=20, steps=2, arrival=1.0))
    scheduler.add_request(request("small-long", tokens=2, steps=3, arrival=2.0))

    outputs = drain(scheduler)

    assert [output.request_ids for output in outputs] == [
        ("small-short", "small-long"),
        ("huge",),  # now the oldest: it runs, alone
        ("huge",),
        ("small-long",),
        ("small-long",),
    ]


def test_requests_of_one_key_with_different_step_counts_finish_at_their_own_steps():
    scheduler = DenoiseScheduler(SchedulerConfig())
    scheduler.add_request(request("two", steps=2))
    scheduler.add_request(request("four", steps=4))
    scheduler.add_request(request("three", steps=3))

    finished_per_step = [run_step(scheduler)[1] for _ in range(4)]

    assert finished_per_step == [[], ["two"], ["three"], ["four"]]
    assert not scheduler.has_unfinished()


def test_aborting_a_running_request_removes_it_at_the_next_schedule():
    scheduler = DenoiseScheduler(SchedulerConfig())
    running = request("r1", steps=5)
    scheduler.add_request(running)
    scheduler.add_request(request("r2", steps=5))
    run_step(scheduler)

    assert scheduler.abort_request("r1") is True
    assert scheduler.abort_request("r1") is True
    assert scheduler.num_requests == 1
    assert scheduler.has_unfinished()
    output, _ = run_step(scheduler)

    assert output.aborted == ("r1",)
    assert output.request_ids == ("r2",)
    assert running.steps_done == 1
    assert scheduler.abort_request("r1") is False
    assert run_step(scheduler)[0].aborted == ()


def test_aborting_a_waiting_request_means_it_never_runs():
    scheduler = DenoiseScheduler(SchedulerConfig(max_batch_size=1))
    scheduler.add_request(request("first", steps=2))
    waiting = request("waiting", steps=2)
    scheduler.add_request(waiting)
    run_step(scheduler)

    assert scheduler.abort_request("waiting") is True
    outputs = drain(scheduler)

    assert outputs[0].aborted == ("waiting",)
    assert all("waiting" not in output.request_ids for output in outputs)
    assert waiting.steps_done == 0


def test_aborting_unknown_or_finished_requests_returns_false():
    scheduler = DenoiseScheduler(SchedulerConfig())
    scheduler.add_request(request("done", steps=1))
    run_step(scheduler)

    assert scheduler.abort_request("done") is False
    assert scheduler.abort_request("never-added") is False
    assert scheduler.schedule(0.0).aborted == ()


def test_an_abort_during_the_last_step_wins_over_finishing():
    scheduler = DenoiseScheduler(SchedulerConfig())
    scheduler.add_request(request("r1", steps=1))
    output = scheduler.schedule(0.0)
    assert scheduler.abort_request("r1") is True

    assert scheduler.update_from_output(output, StepResult(output.request_ids)) == []
    assert scheduler.num_requests == 0
    assert scheduler.has_unfinished()
    assert scheduler.schedule(0.0).aborted == ("r1",)
    assert not scheduler.has_unfinished()


def test_requests_share_a_step_only_while_their_step_keys_agree():
    # A two-expert model: "high" runs the first steps, "low" the rest; where the switch
    # falls depends on each request's own schedule.
    scheduler = DenoiseScheduler(SchedulerConfig())
    early = request("early", steps=4, step_keys=("high", "low", "low", "low"))
    late = request("late", steps=4, step_keys=("high", "high", "high", "low"))
    scheduler.add_request(early)
    scheduler.add_request(late)

    outputs = drain(scheduler)

    ran = [(output.batch_key, output.request_ids) for output in outputs]
    assert ran[0] == (("a", "high"), ("early", "late"))
    for key, ids in ran:
        for request_id in ids:
            owner = early if request_id == "early" else late
            assert key[1] in owner.step_keys
    steps_on = Counter((request_id, key[1]) for key, ids in ran for request_id in ids)
    assert steps_on == {("early", "high"): 1, ("early", "low"): 3, ("late", "high"): 3, ("late", "low"): 1}
    assert early.steps_done == late.steps_done == 4
    assert not scheduler.has_unfinished()


def test_a_request_changing_step_key_joins_the_requests_already_on_that_key():
    scheduler = DenoiseScheduler(SchedulerConfig())
    on_low = request("on-low", steps=3, step_keys=("low", "low", "low"))
    switching = request("switching", steps=3, step_keys=("high", "low", "low"))
    scheduler.add_request(switching)
    run_step(scheduler)  # "switching" runs its high step alone
    scheduler.add_request(on_low)

    output, _ = run_step(scheduler)

    assert output.batch_key == ("a", "low")
    assert set(output.request_ids) == {"on-low", "switching"}


def test_an_abort_during_the_last_step_of_a_request_with_step_keys_removes_it():
    scheduler = DenoiseScheduler(SchedulerConfig())
    scheduler.add_request(request("r1", steps=2, step_keys=("high", "low")))
    run_step(scheduler)
    output = scheduler.schedule(0.0)
    assert output.batch_key == ("a", "low")
    assert scheduler.abort_request("r1") is True

    assert scheduler.update_from_output(output, StepResult(output.request_ids)) == []
    assert scheduler.schedule(0.0).aborted == ("r1",)
    assert not scheduler.has_unfinished()
    assert scheduler.num_requests == 0


def test_requests_past_their_deadline_expire_whether_started_or_not():
    scheduler = DenoiseScheduler(SchedulerConfig(max_batch_size=1))
    scheduler.add_request(request("running", steps=9, arrival=0.0, deadline=5.0))
    scheduler.add_request(request("waiting", steps=9, arrival=1.0, deadline=5.0))
    scheduler.add_request(request("no-deadline", steps=9, arrival=2.0))
    scheduler.add_request(request("later", steps=9, arrival=3.0, deadline=100.0))
    assert run_step(scheduler, now=1.0)[0].request_ids == ("running",)

    at_deadline, _ = run_step(scheduler, now=5.0)
    past_deadline, _ = run_step(scheduler, now=5.5)

    assert at_deadline.expired == ()
    assert past_deadline.expired == ("running", "waiting")
    assert past_deadline.request_ids == ("no-deadline",)
    assert scheduler.queued_by_key() == {"a": 2}
    assert scheduler.abort_request("running") is False


def test_a_duplicate_request_id_is_refused_until_the_first_is_gone():
    scheduler = DenoiseScheduler(SchedulerConfig())
    scheduler.add_request(request("r1"))
    with pytest.raises(ValueError, match="request_id 'r1' is already scheduled"):
        scheduler.add_request(request("r1", key="b"))

    scheduler.abort_request("r1")
    with pytest.raises(ValueError, match="'r1'"):
        scheduler.add_request(request("r1"))
    scheduler.schedule(0.0)
    scheduler.add_request(request("r1"))
    assert scheduler.queued_by_key() == {"a": 1}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": -3}, "max_batch_size"),
        ({"max_batch_size": 2.0}, "max_batch_size"),
        ({"max_batch_size": True}, "max_batch_size"),
        ({"max_tokens_per_step": 0}, "max_tokens_per_step"),
        ({"max_tokens_per_step": 1.5}, "max_tokens_per_step"),
    ],
)
def test_config_errors_name_the_field(fields, field):
    with pytest.raises(ValueError, match=f"^{field} must be"):
        SchedulerConfig(**fields)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"request_id": ""}, "request_id"),
        ({"batch_key": ["unhashable"]}, "batch_key"),
        ({"total_steps": 0}, "total_steps"),
        ({"tokens": 0}, "tokens"),
        ({"arrival_time": float("nan")}, "arrival_time"),
        ({"arrival_time": float("inf")}, "arrival_time"),
        ({"deadline": float("nan")}, "deadline"),
        ({"steps_done": -1}, "steps_done"),
        ({"steps_done": 4}, "steps_done"),
        ({"step_keys": ("high", "low")}, "step_keys"),
        ({"step_keys": ["high"] * 4}, "step_keys"),
        ({"step_keys": (["unhashable"],) * 4}, "step_keys"),
    ],
)
def test_request_errors_name_the_field(fields, field):
    values = {"request_id": "r1", "batch_key": "a", "total_steps": 4, "tokens": 1, "arrival_time": 0.0} | fields
    with pytest.raises(ValueError, match=f"^{field} must be"):
        ScheduledRequest(**values)


def test_a_request_that_already_finished_cannot_be_added_again():
    scheduler = DenoiseScheduler(SchedulerConfig())
    done = request("r1", steps=1)
    scheduler.add_request(done)
    run_step(scheduler)

    with pytest.raises(ValueError, match="^steps_done must be"):
        DenoiseScheduler(SchedulerConfig()).add_request(done)


def test_a_request_resumed_part_way_runs_only_its_remaining_steps():
    scheduler = DenoiseScheduler(SchedulerConfig())
    resumed = request("r1", steps=5, steps_done=3)
    scheduler.add_request(resumed)

    assert [finished for _, finished in (run_step(scheduler), run_step(scheduler))] == [[], ["r1"]]
    assert resumed.steps_done == 5


def test_load_for_a_known_state_matches_the_steps_it_takes_to_drain():
    scheduler = DenoiseScheduler(SchedulerConfig(max_batch_size=2))
    scheduler.add_request(request("a1", "a", steps=4, steps_done=1, arrival=0.0))  # 3 left
    scheduler.add_request(request("a2", "a", steps=5, arrival=1.0))  # 5 left
    scheduler.add_request(request("a3", "a", steps=2, arrival=2.0))  # 2 left
    scheduler.add_request(request("b1", "b", steps=4, arrival=3.0))  # 4 left
    scheduler.add_request(request("aborted", "b", steps=50, arrival=4.0))
    scheduler.abort_request("aborted")

    load = scheduler.load()

    # Key a, two at a time: a1+a2 for 3 steps, then a2+a3 for 2 more = 5 steps; key b: 4.
    assert load == SchedulerLoad(requests=4, total_remaining_steps=14, remaining_step_batches=9)
    assert scheduler.queued_by_key() == {"a": 3, "b": 1}
    assert scheduler.num_requests == 4
    assert len(drain(scheduler)) == 9
    assert scheduler.load() == SchedulerLoad(0, 0, 0)
    assert scheduler.queued_by_key() == {}


def test_load_under_a_token_cap_matches_the_steps_it_takes_to_drain():
    rng = random.Random(7)
    scheduler = DenoiseScheduler(SchedulerConfig(max_batch_size=3, max_tokens_per_step=10))
    for index in range(40):
        scheduler.add_request(
            request(f"r{index}", rng.choice("xyz"), steps=rng.randint(1, 9), tokens=rng.randint(1, 14), arrival=index)
        )

    expected = scheduler.load().remaining_step_batches

    assert expected > 0
    assert len(drain(scheduler)) == expected


def test_requests_that_did_not_run_do_not_advance():
    scheduler = DenoiseScheduler(SchedulerConfig())
    ran, skipped = request("ran", steps=2), request("skipped", steps=2)
    scheduler.add_request(ran)
    scheduler.add_request(skipped)

    output = scheduler.schedule(0.0)
    assert scheduler.update_from_output(output, StepResult(("ran",))) == []
    output = scheduler.schedule(0.0)
    assert scheduler.update_from_output(output, StepResult(())) == []

    assert (ran.steps_done, skipped.steps_done) == (1, 0)
    assert scheduler.schedule(0.0).request_ids == ("ran", "skipped")


def test_a_step_must_be_reported_once_before_the_next_is_scheduled():
    scheduler = DenoiseScheduler(SchedulerConfig())
    scheduler.add_request(request("r1", steps=3))
    output = scheduler.schedule(0.0)

    with pytest.raises(RuntimeError, match="before update_from_output"):
        scheduler.schedule(0.0)
    with pytest.raises(ValueError, match="did not schedule: \\['stranger'\\]"):
        scheduler.update_from_output(output, StepResult(("stranger",)))
    with pytest.raises(ValueError, match="repeats a request"):
        scheduler.update_from_output(output, StepResult(("r1", "r1")))
    scheduler.update_from_output(output, StepResult(("r1",)))
    with pytest.raises(RuntimeError, match="not awaiting its result"):
        scheduler.update_from_output(output, StepResult(("r1",)))

    idle = DenoiseScheduler(SchedulerConfig()).schedule(0.0)
    assert scheduler.update_from_output(idle, StepResult(())) == []
    assert scheduler.schedule(0.0).request_ids == ("r1",)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_random_workload_keeps_every_invariant_at_every_step(seed):
    rng = random.Random(seed)
    config = SchedulerConfig(max_batch_size=3, max_tokens_per_step=10)
    keys = ["a", "b", ("c", 2), 4]
    plan = [
        (
            rng.randrange(0, 250),
            ScheduledRequest(
                request_id=f"r{index}",
                batch_key=rng.choice(keys),
                total_steps=rng.randint(1, 10),
                tokens=rng.randint(1, 12),  # some exceed the token cap on their own
                arrival_time=0.0,
            ),
        )
        for index in range(200)
    ]
    plan.sort(key=lambda planned: planned[0])
    for arrival_step, planned in plan:
        planned.arrival_time = arrival_step + rng.random()
        if rng.random() < 0.15:
            planned.deadline = arrival_step + rng.uniform(1, 40)
    scheduler = DenoiseScheduler(config)
    live: dict[str, ScheduledRequest] = {}
    add_order: dict[str, int] = {}
    steps_run: Counter[str] = Counter()
    outcome: dict[str, str] = {}
    abort_pending: list[str] = []
    ever_aborted: set[str] = set()
    waiting_since: dict = {}  # key -> first step at which it has been waiting for its turn
    step = 0

    while plan or scheduler.has_unfinished():
        while plan and plan[0][0] == step:
            added = plan.pop(0)[1]
            if not any(other.batch_key == added.batch_key for other in live.values()):
                waiting_since[added.batch_key] = step
            scheduler.add_request(added)
            live[added.request_id] = added
            add_order[added.request_id] = len(add_order)
        if live and rng.random() < 0.08:
            victim = rng.choice(sorted(live))
            if victim not in abort_pending:
                assert scheduler.abort_request(victim) is True
                abort_pending.append(victim)
                ever_aborted.add(victim)
        if outcome and rng.random() < 0.05:
            assert scheduler.abort_request(rng.choice(sorted(outcome))) is False

        output = scheduler.schedule(float(step))

        assert output.aborted == tuple(abort_pending)
        for request_id in output.expired:
            assert live[request_id].deadline < step
            assert request_id not in abort_pending
        for request_id, reason in [(r, "aborted") for r in output.aborted] + [(r, "expired") for r in output.expired]:
            assert request_id not in outcome
            outcome[request_id] = reason
            live.pop(request_id)
        abort_pending.clear()
        assert all(request.deadline is None or request.deadline >= step for request in live.values())
        assert not set(output.request_ids) & ever_aborted
        assert scheduler.num_requests == len(live)

        if not output.request_ids:
            assert output.batch_key is None and not live
        else:
            scheduled = [live[request_id] for request_id in output.request_ids]
            assert len(set(output.request_ids)) == len(scheduled) <= config.max_batch_size
            assert {request.batch_key for request in scheduled} == {output.batch_key}
            assert len(scheduled) == 1 or sum(r.tokens for r in scheduled) <= config.max_tokens_per_step
            same_key = sorted(
                (r for r in live.values() if r.batch_key == output.batch_key),
                key=lambda r: (r.arrival_time, add_order[r.request_id]),
            )
            assert output.request_ids == tuple(r.request_id for r in same_key if r.request_id in output.request_ids)
            assert same_key[0].request_id in output.request_ids
            count = used = 0
            for candidate in same_key:
                if candidate.request_id in output.request_ids:
                    count, used = count + 1, used + candidate.tokens
                else:  # passed over only when it could not fit next to older ones
                    assert count == config.max_batch_size or used + candidate.tokens > config.max_tokens_per_step
            # Fairness: four keys, so a key holding requests waits at most three steps in a row.
            for key in {request.batch_key for request in live.values()} - {output.batch_key}:
                assert step - waiting_since[key] <= len(keys) - 2, f"key {key!r} starved at step {step}"
            waiting_since[output.batch_key] = step + 1

        if output.request_ids and rng.random() < 0.05:  # aborted while its step runs
            victim = rng.choice(output.request_ids)
            assert scheduler.abort_request(victim) is True
            abort_pending.append(victim)
            ever_aborted.add(victim)
        finished = scheduler.update_from_output(output, StepResult(output.request_ids))
        steps_run.update(output.request_ids)

        for request_id in finished:
            assert request_id not in abort_pending
            assert steps_run[request_id] == live[request_id].total_steps
            outcome[request_id] = "finished"
            live.pop(request_id)
        for request_id, request in live.items():
            assert steps_run[request_id] == request.steps_done
            assert request_id in abort_pending or steps_run[request_id] < request.total_steps
        step += 1
        assert step < 5_000, "the workload never drained"

    assert sorted(outcome) == sorted(f"r{index}" for index in range(200)), "a request was lost"
    assert set(Counter(outcome.values())) == {"finished", "expired", "aborted"}
    assert scheduler.load() == SchedulerLoad(0, 0, 0)


DETERMINISM_SCRIPT = """
import random
from engine.batching.denoise_scheduler import DenoiseScheduler, ScheduledRequest, SchedulerConfig, StepResult

rng = random.Random(11)
scheduler = DenoiseScheduler(SchedulerConfig(max_batch_size=2, max_tokens_per_step=6))
for index in range(30):
    scheduler.add_request(ScheduledRequest(
        f"r{index}", rng.choice(["alpha", "beta", "gamma", ("delta", 1)]), total_steps=rng.randint(1, 5),
        tokens=rng.randint(1, 4), arrival_time=float(rng.randint(0, 3)),
        deadline=rng.choice([None, None, 4.5])))
now = 0.0
while scheduler.has_unfinished():
    output = scheduler.schedule(now)
    print(output, scheduler.update_from_output(output, StepResult(output.request_ids)))
    now += 1.0
"""


def test_the_same_calls_give_the_same_outputs_whatever_the_hash_seed():
    transcripts = []
    for hash_seed in ("1", "2"):
        result = run_python(DETERMINISM_SCRIPT, env={"PYTHONHASHSEED": hash_seed}, timeout=60)
        assert result.returncode == 0, result.stderr
        transcripts.append(result.stdout)

    assert transcripts[0] == transcripts[1]
    assert transcripts[0].count("SchedulerOutput(") > 10
    assert "expired=('" in transcripts[0]


def test_importing_the_scheduler_loads_no_torch_numpy_or_ray():
    result = run_python(
        "import sys, engine.batching.denoise_scheduler\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'ray')))",
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_scheduler_source_imports_no_torch_numpy_or_ray_anywhere():
    source = (REPO_ROOT / "engine" / "batching" / "denoise_scheduler.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported  # the walk did find the module's own imports
    assert imported.isdisjoint({"torch", "numpy", "ray"})
