"""Operations against the real Postgres with a real worker: the inspection views on workflows
in each state, prune while a worker runs (batches, SKIP LOCKED, live workflows untouched),
retry of a failed workflow, and a worker that survives pg_terminate_backend of every one of
its connections (a workflow in flight at that moment and one started afterwards both
complete)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from helpers import until_row
from hotmesh import FatalError, MemFlow, RetryPolicy, _db, workflow
from hotmesh._db import _READS, _STATEMENTS

pytestmark = pytest.mark.timeout(60)


def double(x: int) -> int:
    return 2 * x


def flaky(x: int) -> int:
    raise RuntimeError(f"flaky {x}")


async def completes(x: int) -> int:
    acts = workflow.proxy_activities(activities=[double])
    entity = await workflow.entity()
    await entity.set({"stage": "start"})
    value = await acts.double(x)
    await entity.merge({"stage": "done"})
    return int(value)


async def sleeps() -> None:
    await workflow.sleep_for("1h")


async def waits_signal() -> Any:
    return await workflow.wait_for("approve")


async def calls_remote() -> Any:
    acts = workflow.proxy_activities(task_queue="nobody-serves-this")
    return await acts.far_away(1)


async def retries_inline() -> Any:
    acts = workflow.proxy_activities(
        activities=[flaky],
        retry_policy=RetryPolicy(maximum_attempts=5, initial_interval=3600, maximum_interval=3600),
    )
    return await acts.flaky(1)


async def awaits_child() -> Any:
    return await workflow.exec_child(
        workflow_name="waits_signal", task_queue="ops", workflow_id="ops-kid"
    )


async def fails() -> None:
    raise FatalError("cannot go on")


ALL = [completes, sleeps, waits_signal, calls_remote, retries_inline, awaits_child, fails]


async def settled(mf: MemFlow, workflow_id: str) -> str:
    """Wait until a workflow stops moving (waiting with its waits recorded, or finished)."""
    async with asyncio.timeout(20):
        while True:
            rows = await mf.workflow.list(limit=1000)
            row = next((r for r in rows if r.id == workflow_id), None)
            if row and (row.status in ("completed", "failed") or row.waits):
                return row.status
            await asyncio.sleep(0.05)


async def test_views_show_each_state(mf: MemFlow, db: Any) -> None:
    await mf.worker.create(task_queue="ops", workflow=ALL)
    for name in ("completes", "sleeps", "waits_signal", "calls_remote", "retries_inline"):
        await mf.workflow.start(
            workflow_name=name,
            args=[21] if name == "completes" else [],
            task_queue="ops",
            workflow_id=f"ops-{name}",
        )
    await mf.workflow.start(workflow_name="awaits_child", task_queue="ops", workflow_id="ops-dad")
    await mf.workflow.start(workflow_name="fails", task_queue="ops", workflow_id="ops-fails")
    started = (
        "ops-completes",
        "ops-sleeps",
        "ops-waits_signal",
        "ops-calls_remote",
        "ops-retries_inline",
        "ops-dad",
        "ops-kid",
        "ops-fails",
    )
    for workflow_id in started:
        await settled(mf, workflow_id)

    waits = dict(db.rows("select id, waits from workflows"))
    kinds = {key: [(w["kind"], w.get("name")) for w in value] for key, value in waits.items()}
    assert kinds == {
        "ops-completes": [],
        "ops-sleeps": [("timer", None)],
        "ops-waits_signal": [("signal", "approve")],
        "ops-calls_remote": [("activity", "far_away")],
        "ops-retries_inline": [("activity", "flaky")],
        "ops-dad": [("child", "waits_signal")],
        "ops-kid": [("signal", "approve")],
        "ops-fails": [],
    }
    assert waits["ops-calls_remote"][0]["state"] == "queued"
    assert waits["ops-retries_inline"][0]["state"] == "retrying"
    assert waits["ops-retries_inline"][0]["error"] == "flaky 1"
    assert waits["ops-dad"][0]["workflow_id"] == "ops-kid"
    text = dict(db.rows("select id, waiting_on from workflows"))
    assert text["ops-retries_inline"].startswith("activity flaky (retry 2 at ")
    assert text["ops-completes"] is None

    assert db.rows("select id, error_message, error_code, error_type from failed_workflows") == [
        ("ops-fails", "cannot go on", 598, "FatalError")
    ]
    backlog = db.rows(
        "select kind, ready, delayed from queue_backlog where task_queue = 'nobody-serves-this'"
    )
    assert backlog == [("activity", 1, 0)]

    history = db.rows(
        "select thread, seq, kind, name, status, entity_version"
        " from workflow_history('ops-completes')"
    )
    assert history == [
        ("main", None, "workflow", "completes", "started", None),
        ("main", 1, "entity", "set", "completed", 1),
        ("main", 2, "activity", "double", "completed", None),
        ("main", 3, "entity", "merge", "completed", 2),
        ("main", None, "workflow", "completes", "completed", None),
    ]

    # The same through the client calls the CLI uses.
    listed = await mf.workflow.list(status="waiting", task_queue="ops", limit=100)
    assert {r.id for r in listed} == set(started) - {"ops-completes", "ops-fails"}
    assert [r.id for r in await mf.workflow.list(entity="fails", limit=10)] == ["ops-fails"]
    assert await mf.workflow.list(task_queue="no-such-queue", limit=10) == []
    assert len(await mf.workflow.list(limit=3)) == 3
    entries = await mf.workflow.get_handle("ops-completes").history()
    steps = [(e.thread, e.seq, e.kind, e.name, e.status, e.entity_version) for e in entries]
    assert steps == history
    backlog_rows = [r for r in await mf.queue_backlog() if r.task_queue == "nobody-serves-this"]
    assert [(r.kind, r.ready, r.delayed) for r in backlog_rows] == backlog
    doc = await mf.workflow.get_handle("ops-waits_signal").describe()
    assert doc["waiting_on"] == "signal approve"
    assert doc["status"] == "waiting"


async def test_retry_reruns_failed_step_only(mf: MemFlow, db: Any) -> None:
    calls: list[str] = []
    broken = {"on": True}

    def first(x: int) -> int:
        calls.append("first")
        return x + 1

    def second(x: int) -> int:
        calls.append("second")
        if broken["on"]:
            raise FatalError("down for maintenance")
        return x * 10

    async def two_steps(x: int) -> int:
        acts = workflow.proxy_activities(activities=[first, second])
        return int(await acts.second(await acts.first(x)))

    await mf.worker.create(task_queue="ops", workflow=two_steps)
    handle = await mf.workflow.start(
        workflow_name="two_steps", args=[1], task_queue="ops", workflow_id="ops-retry"
    )
    with pytest.raises(FatalError):
        await handle.result(timeout=20)
    assert calls == ["first", "second"]

    broken["on"] = False
    outcome = await handle.retry()
    assert outcome["reset_steps"] == 1 and outcome["status"] == "pending"
    assert await handle.result(timeout=20) == 20
    # the recorded first step replayed; only the failed one ran again
    assert calls == ["first", "second", "second"]
    assert db.one("select attempt from jobs where id = 'ops-retry'") == 1


async def quick(x: int) -> int:
    return x


async def test_prune_while_a_worker_runs(mf: MemFlow, db: Any, dsn: str, app: str) -> None:
    await mf.worker.create(task_queue="ops", workflow=[quick, sleeps], concurrency=4)
    sleepers = [
        await mf.workflow.start(
            workflow_name="sleeps", task_queue="ops", workflow_id=f"live-{i}", expire=0
        )
        for i in range(3)
    ]
    handles = []
    pruned = 0
    for i in range(40):
        handles.append(
            await mf.workflow.start(
                workflow_name="quick", args=[i], task_queue="ops", workflow_id=f"q-{i}", expire=0
            )
        )
        if i % 8 == 7:  # prune while workflows are being started and run
            pruned += await mf.prune(batch=3)
    async with asyncio.timeout(30):
        while db.one("select count(*) from jobs where id like 'q-%%'"):
            pruned += await mf.prune(batch=3)
            await asyncio.sleep(0.05)

    assert pruned == 40

    # A job row someone else holds: prune skips it instead of waiting, and takes the rest.
    late = [
        await mf.workflow.start(
            workflow_name="quick", args=[i], task_queue="ops", workflow_id=f"z-{i}", expire=0
        )
        for i in range(3)
    ]
    for handle in late:
        await handle.result(timeout=20)
    with psycopg.connect(dsn) as holder:
        holder.execute(
            sql.SQL("select id from {}.jobs where id = 'z-0' for update").format(
                sql.Identifier(app)
            )
        )
        assert await asyncio.wait_for(mf.prune(batch=3), 10) == 2
        assert db.rows("select id from jobs where id like 'z-%%'") == [("z-0",)]
    assert await mf.prune(batch=3) == 1  # released: now it goes too

    assert db.one("select count(*) from jobs where id like 'q-%%' or id like 'z-%%'") == 0
    assert db.one("select count(*) from steps where job_id like 'q-%%'") == 0
    # the sleeping workflows are live: untouched, with their timers
    assert db.rows("select id, status from jobs where id like 'live-%%' order by id") == [
        (h.workflow_id, "waiting") for h in sleepers
    ]
    assert db.one("select count(*) from steps where job_id like 'live-%%'") == 3
    assert await mf.prune(batch=3, dry_run=True) == 0


async def test_prune_procedure_from_psql_style_call(dsn: str, app: str, db: Any) -> None:
    for i in range(7):
        db.one("select start_workflow('w', '[]', 'q', %s, null, '{\"expire\": 0}')", f"p-{i}")
        db.one("select cancel_workflow(%s)", f"p-{i}")
    db.one("select start_workflow('w', '[]', 'q', 'p-live')")
    # One command, many batches, each committed on its own.
    with psycopg.connect(dsn, autocommit=True) as conn:
        call = sql.SQL("call {}.prune(p_batch => 2)").format(sql.Identifier(app))
        assert conn.execute(call).fetchone() == (7,)
        assert conn.execute(call).fetchone() == (0,)
    assert db.rows("select id from jobs") == [("p-live",)]
    # Inside a transaction block the COMMIT between batches is refused, and nothing changes.
    db.one("select start_workflow('w', '[]', 'q', 'p-last', null, '{\"expire\": 0}')")
    db.one("select cancel_workflow('p-last')")
    with psycopg.connect(dsn) as conn, pytest.raises(psycopg.errors.InvalidTransactionTermination):
        conn.execute(sql.SQL("call {}.prune()").format(sql.Identifier(app)))
    assert db.rows("select id from jobs order by id") == [("p-last",), ("p-live",)]


async def test_prune_forgets_old_idempotency_keys_and_untargeted_signals(
    dsn: str, app: str, db: Any
) -> None:
    db.one("select start_workflow('w', '[]', 'q', 'live')")
    db.one("select signal('for-live', '1', 'live')")  # targeted: goes only with its workflow
    db.one("select signal('nobody', '2')")  # untargeted, no wait: kept
    db.one("select signal('once', '3', null, 'key-1')")
    assert db.one("select signal('once', '3', null, 'key-1') ->> 'status'") == "duplicate"
    db.one("select set_setting('default_retention', '0')")  # everything above is now "old"
    with psycopg.connect(dsn, autocommit=True) as conn:
        call = sql.SQL("call {}.prune(p_batch => 1)").format(sql.Identifier(app))
        assert conn.execute(call).fetchone() == (0,)  # no finished workflow to prune
    assert db.one("select count(*) from signal_keys") == 0
    assert db.rows("select signal_id from signals order by id") == [("for-live",)]
    # The forgotten key no longer turns the same send away.
    assert db.one("select signal('once', '3', null, 'key-1') ->> 'status'") == "kept"


STARTED = asyncio.Event()
RUNS: list[int] = []


async def slow_double(x: int) -> int:
    RUNS.append(x)
    STARTED.set()
    await asyncio.sleep(0.5)
    return 2 * x


async def survives(x: int) -> int:
    acts = workflow.proxy_activities(activities=[slow_double])
    return int(await acts.slow_double(x))


WAITS_ON_A_LOCK = (
    "select count(*) from pg_stat_activity where application_name = %s and wait_event_type = 'Lock'"
)


async def test_worker_survives_terminated_connections(
    dsn: str, app: str, db: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="hotmesh")
    # The completion must still be waiting on the held row when its connection is terminated:
    # a first try's 100 ms lock_timeout can run out before the terminate on a loaded machine
    # (the call is then sent again after it, and nothing is cut off mid-flight).
    monkeypatch.setattr(_db, "QUICK_LOCK_TIMEOUT_MS", 60_000)
    tag = f"hm-ops-{app}"
    mf = await MemFlow.init(app_id=app, dsn=make_conninfo(dsn, application_name=tag), migrate=False)
    holder = psycopg.connect(dsn)
    try:
        STARTED.clear()
        RUNS.clear()
        await mf.worker.create(task_queue="ops", workflow=survives, lease=2.0)
        before = await mf.workflow.start(
            workflow_name="survives", args=[1], task_queue="ops", workflow_id="before"
        )
        await asyncio.wait_for(STARTED.wait(), 20)
        # Hold the job row: the activation's completion will wait on it, mid-call.
        holder.execute(
            sql.SQL("select 1 from {}.jobs where id = 'before' for update").format(
                sql.Identifier(app)
            )
        )
        await until_row(db, WAITS_ON_A_LOCK, tag, limit=20)
        # Each terminated backend is waited for (up to 5 s), so its connection has ended by the
        # time the client calls again (pg_terminate_backend alone only sends the signal).
        killed = db.one(
            "select count(pg_terminate_backend(pid, 5000)) from pg_stat_activity"
            " where application_name = %s",
            tag,
        )
        assert killed >= 2  # the waiting call, the pool's others, the listener
        holder.rollback()
        after = await mf.workflow.start(
            workflow_name="survives", args=[2], task_queue="ops", workflow_id="after"
        )
        assert await before.result(timeout=30) == 2
        assert await after.result(timeout=30) == 4
    finally:
        holder.close()
        await mf.close(grace=2.0)
    events = [r.getMessage() for r in caplog.records if r.name.startswith("hotmesh")]
    # the call cut off mid-flight dropped its activation; it ran again once its lease expired
    assert any("event=db_error during=run" in e and "workflow=before" in e for e in events)
    assert any(e.startswith("event=reconnect") for e in events)  # the listener is back
    claims = [e for e in events if e.startswith("event=claim") and "workflow=before" in e]
    assert len(claims) == 2
    # the activity's outcome was recorded before the cut: the rerun replayed it, not re-ran it
    assert RUNS == [1, 2]
    assert db.rows("select id, status, result from jobs order by id") == [
        ("after", "completed", 4),
        ("before", "completed", 2),
    ]


async def test_a_read_cut_off_mid_call_is_sent_again(dsn: str, app: str, db: Any) -> None:
    """A read whose connection is terminated while it waits is sent again on a new one (a
    client rides out a restart); a write is not retried (whether it committed is unknown)."""
    assert _READS <= set(_STATEMENTS)
    assert not {"start_workflow", "signal", "complete_task", "claim_tasks"} & _READS
    tag = f"hm-read-{app}"
    mf = await MemFlow.init(app_id=app, dsn=make_conninfo(dsn, application_name=tag), migrate=False)
    holder = psycopg.connect(dsn)
    try:
        handle = await mf.workflow.start(workflow_name="w", task_queue="nobody", workflow_id="r1")
        holder.execute(
            sql.SQL("lock table {}.jobs in access exclusive mode").format(sql.Identifier(app))
        )
        reader = asyncio.create_task(handle.status())
        await until_row(db, WAITS_ON_A_LOCK, tag, limit=20)
        killed = db.one(
            "select count(pg_terminate_backend(pid, 5000)) from pg_stat_activity"
            " where application_name = %s and wait_event_type = 'Lock'",
            tag,
        )
        assert killed == 1
        holder.rollback()  # the lock is gone: the read sent again finds the row
        assert await asyncio.wait_for(reader, 10) == "pending"
    finally:
        holder.close()
        await mf.close(grace=1.0)
