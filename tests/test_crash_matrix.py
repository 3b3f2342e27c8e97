"""The crash matrix: a mixed workflow (entity writes, an inline and a remote activity, a timer,
a hook, a child, a signal) whose worker is killed with SIGKILL at every database call it makes,
right before the call and right after it committed, one kill point per run.

A run without kills (the baseline) traces the calls: every counted call gives the kill point
"after" it, every call but a claim also "before" it (before a claim is after the call before
it). Then each kill point runs in its own worker process (tests/workers/matrix.py, which
counts its calls and kills itself at the chosen one), on queues of its own, a batch of them at
once; once all of a batch are dead, one fresh worker serves all their queues. For every kill
point:

- the workflow completes with the baseline's result, entity and step history;
- a side effect whose step was recorded before the kill never ran again; one whose step was
  not yet recorded ran again after the kill; none began after its step was recorded
  (activities run at least once, their outcome is recorded once: a worker whose lease ran out
  while it ran one, as on a loaded machine with fsync on, legitimately runs it twice);
- nothing is left: no task, no kept signal, and the entity changed as often as in the baseline.

A kill point is a call's ordinal, and how many claims a run makes depends on timing (two
wake-ups close together are taken by one claim): a run whose workflow completed without its
worker reaching its point is killed from outside, checked like the others, and its point runs
again in a later batch, up to TRIES runs; a point no run reached fails the test.

`make test` runs every kill point; HOTMESH_CRASH_MATRIX_SAMPLE=N runs every N-th only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers import Process, Workers, until, workers_fixture
from hotmesh import MemFlow

pytestmark = pytest.mark.timeout(300)

BATCH = 12  # kill points run at once (each a worker process with two small pools)
TRIES = 3  # runs of a kill point whose workflow can complete before the point is reached
TAG = "t"
SESSIONS_GONE = "select count(*) = 0 from pg_stat_activity where application_name = %s"


@dataclass
class Point:
    """One kill point: the n-th call of a statement, before it or after it."""

    label: str  # "<statement>#<n>"
    when: str  # before | after
    slot: str = ""
    tries: int = 1
    effects_at_kill: dict[tuple[str, str], int] = field(default_factory=dict)
    recorded_at_kill: set[tuple[str, str]] = field(default_factory=set)

    @property
    def workflow_id(self) -> str:
        return f"cm-{self.slot}"

    def __str__(self) -> str:
        return f"kill {self.when} {self.label}"


workers = workers_fixture("matrix")


def _normal(value: Any, workflow_id: str) -> Any:
    """A value with the run's workflow id replaced, so runs of different ids compare."""
    if isinstance(value, str):
        return value.replace(workflow_id, "<id>")
    if isinstance(value, list | tuple):
        return [_normal(v, workflow_id) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v, workflow_id) for k, v in value.items()}
    return value


def snapshot(db: Any, workflow_id: str) -> dict[str, Any]:
    """Everything a run leaves behind, comparable across runs."""
    like = workflow_id + "-%"
    steps = []
    for job, thread, seq, kind, name, status, input_, output, error in db.rows(
        "select job_id, thread, seq, kind, name, status, input, output, error from steps"
        " where job_id = %s or job_id like %s order by job_id, thread, seq",
        workflow_id,
        like,
    ):
        if kind == "entity":
            input_ = {k: v for k, v in input_.items() if k != "by"}  # the worker's id
        if kind == "send":
            output = {k: v for k, v in output.items() if k != "id"}  # the kept signal's id
        steps.append((job, thread, seq, kind, name, status, input_, output, error))
    jobs = db.rows(
        "select id, status, result, error, context, entity_version, attempt from jobs"
        " where id = %s or id like %s order by id",
        workflow_id,
        like,
    )
    threads = db.rows(
        "select thread, name, status, result, error from threads where job_id = %s order by thread",
        workflow_id,
    )
    return _normal({"steps": steps, "jobs": jobs, "threads": threads}, workflow_id)


def effect_counts(db: Any, workflow_id: str) -> dict[tuple[str, str], int]:
    rows = db.rows(
        "select job_id, name, count(*) from effects where job_id = %s or job_id like %s"
        " group by 1, 2",
        workflow_id,
        workflow_id + "-%",
    )
    return {(job, name): count for job, name, count in rows}


def recorded_effects(db: Any, workflow_id: str) -> set[tuple[str, str]]:
    """(job, effect name) of every activity step recorded as completed."""
    rows = db.rows(
        "select job_id, input ->> 0 from steps where (job_id = %s or job_id like %s)"
        " and kind = 'activity' and status = 'completed'",
        workflow_id,
        workflow_id + "-%",
    )
    return {(job, name) for job, name in rows}


def ran_after_record(db: Any, jobs: str) -> list[tuple[str, str]]:
    """(job, effect name) of every run that began after its activity step was recorded, of
    the jobs whose id matches the regular expression `jobs`."""
    return db.rows(
        "select e.job_id, e.name from effects as e join steps as s on s.job_id = e.job_id"
        " and s.kind = 'activity' and s.status = 'completed' and s.input ->> 0 = e.name"
        " where e.job_id ~ %s and e.at > s.completed_at",
        jobs,
    )


def leftovers(db: Any, workflow_id: str) -> dict[str, int]:
    like = workflow_id + "-%"
    return {
        table: db.one(
            f"select count(*) from {table} where job_id = %s or job_id like %s",  # noqa: S608
            workflow_id,
            like,
        )
        for table in ("tasks", "signals")
    }


async def start(mf: MemFlow, slot: str) -> Any:
    return await mf.workflow.start(
        workflow_name="matrix_main",
        args=[TAG, f"aq-{slot}"],
        task_queue=f"wq-{slot}",
        workflow_id=f"cm-{slot}",
    )


async def wait_killed(proc: Process, point: Point, db: Any, trace: Path) -> bool:
    """Whether the worker killed itself at its point; False when its workflow completed
    first (the run took the work in fewer calls): the worker is then killed from outside."""
    done = ("select count(*) from jobs where id = %s and status = 'completed'", point.workflow_id)
    try:
        async with asyncio.timeout(60):
            while proc.poll() is None and not db.one(*done):  # noqa: ASYNC110 (no event)
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"{point}: neither the kill point nor the workflow's end within 60 s")
    with contextlib.suppress(subprocess.TimeoutExpired):
        await asyncio.to_thread(proc.wait, 1.0)  # a kill point right after the completion
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    assert await wait_dead(proc, str(point)) == -signal.SIGKILL, str(point)
    last = (await asyncio.to_thread(trace.read_text)).splitlines()[-1]
    return last == f"killed {point.when} {point.label}"


async def wait_dead(proc: Process, what: str, limit: float = 60.0) -> int:
    try:
        async with asyncio.timeout(limit):
            while proc.poll() is None:  # noqa: ASYNC110 (a child process: no event to wait on)
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"{what}: the worker did not reach its kill point within {limit} s")
    return proc.returncode


def kill_points(trace: list[str]) -> list[Point]:
    points = []
    for label in trace:
        if not label.startswith("claim_tasks#"):
            points.append(Point(label, "before"))
        points.append(Point(label, "after"))
    return points


async def baseline(
    mf: MemFlow, db: Any, workers: Workers, tmp_path: Path
) -> tuple[Any, dict[str, Any], list[str]]:
    """A run without kills: its result, its snapshot and the trace of its counted calls."""
    trace_file = tmp_path / "baseline.trace"
    handle = await start(mf, "base")
    baseline_worker = workers.spawn("base", HOTMESH_TEST_TRACE=str(trace_file))
    expected_result = _normal(await handle.result(timeout=60), "cm-base")
    workers.stop(baseline_worker)
    expected = snapshot(db, "cm-base")
    trace = trace_file.read_text().split()
    assert trace[0] == "claim_tasks#1" and trace[-1].startswith("complete_task#")
    assert effect_counts(db, "cm-base") == {
        ("cm-base", "inline"): 1,
        ("cm-base", "remote"): 1,
        ("cm-base", "hook"): 1,
        ("cm-base-main-9", "child"): 1,
    }
    assert [job[1] for job in expected["jobs"]] == ["completed", "completed"]
    assert leftovers(db, "cm-base") == {"tasks": 0, "signals": 0}
    return expected_result, expected, trace


async def test_kill9_at_every_sql_boundary(
    mf: MemFlow, db: Any, workers: Workers, tmp_path: Path
) -> None:
    expected_result, expected, trace = await baseline(mf, db, workers, tmp_path)
    points = kill_points(trace)
    every = int(os.environ.get("HOTMESH_CRASH_MATRIX_SAMPLE", "1"))
    chosen = points[::every]
    for index, point in enumerate(chosen):
        point.slot = str(index)

    unreached: list[Point] = []
    first = 0
    while first < len(chosen):
        batch = chosen[first : first + BATCH]
        first += len(batch)  # points run again are appended: a later batch takes them
        handles = [await start(mf, p.slot) for p in batch]
        killers = [
            workers.spawn(
                p.slot,
                HOTMESH_TEST_KILL_AT=p.label,
                HOTMESH_TEST_KILL_WHEN=p.when,
                HOTMESH_TEST_TRACE=str(tmp_path / f"{p.slot}.trace"),
                PGAPPNAME=f"hm-matrix-{p.slot}",  # its sessions, to see them end
            )
            for p in batch
        ]
        for point, proc in zip(batch, killers, strict=True):
            if not await wait_killed(proc, point, db, tmp_path / f"{point.slot}.trace"):
                if point.tries == TRIES:
                    unreached.append(point)
                else:  # checked below like the others, and run again
                    again = Point(point.label, point.when, f"{point.slot}r", point.tries + 1)
                    chosen.append(again)
            # The server finishes a statement (a commit) the dead worker had sent: what it
            # left is the state at its kill once its sessions are gone.
            gone = functools.partial(db.one, SESSIONS_GONE, f"hm-matrix-{point.slot}")
            await until(gone, f"{point}: the dead worker's sessions to end")
            point.effects_at_kill = effect_counts(db, point.workflow_id)
            point.recorded_at_kill = recorded_effects(db, point.workflow_id)

        fresh = workers.spawn(*(p.slot for p in batch))
        results = await asyncio.gather(*(h.result(timeout=60) for h in handles))
        workers.stop(fresh)

        for point, result in zip(batch, results, strict=True):
            wid = point.workflow_id
            assert _normal(result, wid) == expected_result, str(point)
            assert snapshot(db, wid) == expected, str(point)
            assert leftovers(db, wid) == {"tasks": 0, "signals": 0}, str(point)
            final = effect_counts(db, wid)
            assert set(final) == {
                (wid, "inline"),
                (wid, "remote"),
                (wid, "hook"),
                (f"{wid}-main-9", "child"),
            }, str(point)
            for key, count in final.items():
                before = point.effects_at_kill.get(key, 0)
                if key in point.recorded_at_kill:
                    assert before >= 1 and count == before, f"{point}: {key} ran again"
                else:
                    # not recorded at the kill: it may have run in the dead worker, and ran
                    # again in the fresh one
                    assert count > before, f"{point}: {key} did not run after the kill"
            assert ran_after_record(db, f"^{wid}(-|$)") == [], f"{point}: ran after its record"

    assert not unreached, f"no run in {TRIES} reached: {[str(p) for p in unreached]}"
    runs = len(chosen)
    print(f"crash matrix: {len(points[::every])} of {len(points)} kill points in {runs} runs")


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_kill9_fuzz_loop(mf: MemFlow, db: Any, workers: Workers, tmp_path: Path) -> None:
    """Repeated kills: generations of 40 workflows, each served by one worker process after
    another, each process killed at a random call (the n-th of a random statement, before or
    after it) or, when it does not get there, from outside after a random while, until the
    generation is done; then a last process finishes it. Generations follow until at least
    30 workers died. Every workflow ends exactly as the baseline did, every side effect ran,
    none ran again after its step was recorded. HOTMESH_CRASH_FUZZ_SEED picks the run."""
    expected_result, expected, trace = await baseline(mf, db, workers, tmp_path)
    rng = random.Random(int(os.environ.get("HOTMESH_CRASH_FUZZ_SEED", "8")))
    names = sorted({label.split("#")[0] for label in trace})
    kills = workflows = 0
    generation = 0
    while kills < 30:
        slots = [f"z{generation}x{i}" for i in range(40)]
        handles = [await start(mf, slot) for slot in slots]
        unfinished = (
            "select count(*) from jobs where id like %s and status <> 'completed'",
            f"cm-z{generation}x%",
        )
        for _ in range(60):
            if not db.one(*unfinished):
                break
            label = f"{rng.choice(names)}#{rng.randint(1, 2 * len(slots))}"
            when = rng.choice(["before", "after"])
            proc = workers.spawn(*slots, HOTMESH_TEST_KILL_AT=label, HOTMESH_TEST_KILL_WHEN=when)
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, rng.uniform(0.2, 2.0))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            assert await wait_dead(proc, f"kill {when} {label}") == -signal.SIGKILL
            kills += 1
        fresh = workers.spawn(*slots)
        results = await asyncio.gather(*(h.result(timeout=120) for h in handles))
        workers.stop(fresh)
        for slot, result in zip(slots, results, strict=True):
            wid = f"cm-{slot}"
            assert _normal(result, wid) == expected_result, wid
            assert snapshot(db, wid) == expected, wid
            assert leftovers(db, wid) == {"tasks": 0, "signals": 0}, wid
            assert len(effect_counts(db, wid)) == 4, wid  # every side effect ran
        workflows += len(slots)
        generation += 1
    assert ran_after_record(db, "^cm-") == []  # none ran again after its step was recorded
    reruns = db.one("select count(*) from effects where job_id like 'cm-z%%'") - 4 * workflows
    print(f"crash fuzz: {kills} workers killed, {workflows} workflows, {reruns} re-runs")
