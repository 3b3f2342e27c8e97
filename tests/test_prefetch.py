"""Prefetch and group commit of completions (docs/performance.md): a worker claims tasks ahead
of its free slots, each on a short lease until it starts; a stop gives them back at once; a
killed worker's are taken over once that short lease ends; a completion that lost its lease
fails alone, not the batch it was sent in.

The engine's clock is frozen (`hotmesh.fake_now`, set for every connection through
PGOPTIONS), so no lease expires by waiting: a task another worker takes was given back, or
its lease ended on the clock the test moved."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from helpers import SQL, Workers, kill9, until
from hotmesh import MemFlow, errors, worker, workflow

T0 = "2031-01-01T00:00:00+00"


def at(seconds: float) -> datetime:
    """T0 plus `seconds`, on the engine clock."""
    return datetime.fromisoformat(T0) + timedelta(seconds=seconds)


HELD = "select count(*) from tasks where task_queue = %s and lease_owner like %s"
# The tasks of a queue: how many are started (running) and how many only claimed ahead.
SPLIT = (
    "select count(*) filter (where started_at is not null),"
    " count(*) filter (where started_at is null)"
    " from tasks where task_queue = %s and state = 'leased'"
)

# The gate each `held(n)` waits at, inside its inline activity, until the test opens it.
_gates: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)


async def blocked(n: int) -> None:
    await _gates[n].wait()


async def held(n: int = 0) -> None:
    await workflow.proxy_activities(activities=[blocked]).blocked(n)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch, db: SQL) -> SQL:
    """Every new connection (this process's and the workers') runs on the engine clock T0."""
    monkeypatch.setenv("PGOPTIONS", f"-c hotmesh.fake_now={T0}")
    db.one("select set_config('hotmesh.fake_now', %s, false)", T0)
    return db


def start(db: SQL, queue: str, count: int) -> None:
    db.one(
        "select count(start_workflow('held', '[]', %s, %s || n)) from generate_series(1, %s) n",
        queue,
        queue,
        count,
    )


async def test_a_stop_releases_the_prefetched_tasks_for_another_worker_at_once(
    frozen: SQL, app: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = frozen
    # Given back by the stop, not at half the short lease on the worker's own clock.
    monkeypatch.setattr(worker, "_PREFETCH_LEASE", 60.0)
    _gates.clear()
    start(db, "pq", 6)
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    closing = None
    try:
        await mf.worker.create(task_queue="pq", workflow=held, concurrency=2, prefetch=2, lease=120)
        await until(lambda: db.rows(SPLIT, "pq") == [(2, 2)], "2 started, 2 claimed ahead")
        ahead = db.rows(
            "select id from tasks where task_queue = 'pq' and started_at is null order by id"
        )
        closing = asyncio.create_task(mf.close(grace=60))
        # The stop waits for the 2 running (blocked) ones; the 2 ahead are ready already.
        await until(
            lambda: (
                db.rows(
                    "select id from tasks where task_queue = 'pq' and state = 'ready'"
                    " and attempt = 0 and id = any(%s) order by id",
                    [i for (i,) in ahead],
                )
                == ahead
            ),
            "the prefetched tasks released, their attempt count unchanged",
        )
        assert not closing.done()
        taken = db.rows(
            "select task_id, attempt from claim_tasks(array['pq'], 'other', 10) order by task_id"
        )
        # The 2 released and the 2 never claimed; not the 2 the stopping worker still runs.
        assert len(taken) == 4 and all(attempt == 1 for _, attempt in taken)
        assert {i for (i,) in ahead} <= {i for i, _ in taken}
        assert db.one(HELD, "pq", "%") == 6
    finally:
        _gates[0].set()
        await (closing or mf.close())
    # The two it ran finished within the stop's grace.
    assert db.one("select count(*) from jobs where status = 'completed'") == 2


async def test_a_prefetched_task_that_runs_is_started_on_the_normal_lease(
    frozen: SQL, app: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = frozen
    monkeypatch.setattr(worker, "_PREFETCH_LEASE", 60.0)
    _gates.clear()
    db.one("select start_workflow('held', '[1]', 'sq', 'first')")
    db.one("select start_workflow('held', '[2]', 'sq', 'second')")
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    try:
        await mf.worker.create(task_queue="sq", workflow=held, concurrency=1, prefetch=1, lease=120)
        lease = "select started_at, lease_expires_at from tasks where job_id = %s"
        await until(lambda: db.rows(lease, "second") == [(None, at(60))], "prefetched")
        _gates[1].set()  # the first ends, the second runs: started on the normal lease
        await until(
            lambda: db.rows(lease, "second") == [(at(0), at(120))],
            "the prefetched task started in the database",
        )
    finally:
        _gates[2].set()
        await mf.close()


async def test_a_killed_workers_prefetched_tasks_are_taken_after_the_short_lease(
    frozen: SQL, app: str, dsn: str, tmp_path: Path
) -> None:
    db = frozen
    start(db, "kq", 5)
    procs = Workers("prefetchy", dsn, app, "kq", "2", "2", "40", logs=tmp_path)
    try:
        proc = procs.spawn()
        await until(lambda: db.rows(SPLIT, "kq") == [(2, 2)], "2 started, 2 claimed ahead")
        ahead = {
            i
            for (i,) in db.rows(
                "select id from tasks where state = 'leased' and started_at is null"
            )
        }
        kill9(proc)
    finally:
        procs.close()
    claim = "select task_id, attempt from claim_tasks(array['kq'], 'other', 10, '1 day')"
    # The 5th was never claimed: another worker takes it at once.
    assert [attempt for _, attempt in db.rows(claim)] == [1]
    db.one("select set_config('hotmesh.fake_now', %s, false)", "2031-01-01 00:00:39.999+00")
    assert db.rows(claim) == []
    db.one("select set_config('hotmesh.fake_now', %s, false)", "2031-01-01 00:00:40+00")
    taken = db.rows(claim)
    # The 2 prefetched, on their first attempt still (they never ran); the 2 started ones
    # stay leased (120 s) by the dead worker.
    assert {i for i, _ in taken} == ahead and [a for _, a in taken] == [1, 1]
    assert db.rows(SPLIT, "kq") == [(5, 0)]


async def test_a_fenced_completion_fails_alone_and_the_rest_of_its_batch_completes(
    db: SQL, mf: MemFlow
) -> None:
    start(db, "fq", 3)
    store = mf._db
    tasks = await store.claim_tasks(["fq"], "A", 3, timedelta(seconds=30))
    assert len(tasks) == 3
    fenced = tasks[1]
    # Another worker holds it now, under a new token.
    db.one("select release_tasks(array[%s::bigint], array[%s::uuid])", fenced.task_id,
           fenced.lease_token)  # fmt: skip
    assert db.one("select count(*) from claim_tasks(array['fq'], 'B', 1)") == 1
    # Sent together: all three are queued before the group commit's first flush.
    outcomes = await asyncio.gather(
        *(store.complete_task(task, task.job_id) for task in tasks), return_exceptions=True
    )
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], errors.LeaseLost)
    assert db.rows("select id, status from jobs where id like 'fq%%' order by id") == [
        (tasks[0].job_id, "completed"),
        (fenced.job_id, "running"),
        (tasks[2].job_id, "completed"),
    ]


async def test_prefetch_is_checked(mf: MemFlow) -> None:
    with pytest.raises(errors.InvalidArgument, match="prefetch must be 0 to 10000, not -1"):
        await mf.worker.create(task_queue="bad", workflow=held, prefetch=-1)
