"""Issue 13, D2: a caller holding a signal in an open transaction delays only the workflows
that signal may go to; no worker waits for it. Each test holds `signal(...)` open in its own
session while a real worker (two slots, so two blocked activations would stall it) runs other
workflows that wait for the same signal id; a sampler proves with `pg_stat_activity` and
`pg_blocking_pids` that no backend ever waited for the holder, and the held signal still
arrives, once, after the COMMIT."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from hotmesh import MemFlow, workflow

pytestmark = pytest.mark.timeout(90)


async def waiter(signal_id: str) -> Any:
    return await workflow.wait_for(signal_id)


async def until(check: Any, limit: float = 30.0) -> None:
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110 (the database is what the test waits on)
            await asyncio.sleep(0.02)


def waits(db: Any, signal_id: str, status: str) -> int:
    return int(
        db.one(
            "select count(*) from steps where kind = 'signal' and name = %s and status = %s",
            signal_id,
            status,
        )
    )


@contextlib.asynccontextmanager
async def held_signal(
    dsn: str, db: Any, app: str, payload: Any, workflow_id: str | None
) -> AsyncIterator[tuple[psycopg.AsyncConnection[Any], dict[str, Any], list[str]]]:
    """signal('go', payload, workflow_id, 'k') in a transaction left open; yields the
    connection, the signal's outcome and the statements the sampler saw waiting for it."""
    blocked: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        query = sql.SQL("select {}.signal('go', %s, %s, 'k')").format(sql.Identifier(app))
        row = await (await holder.execute(query, (Jsonb(payload), workflow_id))).fetchone()
        assert row is not None
        pid = holder.info.backend_pid

        async def sample() -> None:
            while True:
                blocked.extend(
                    r[0]
                    for r in db.rows(
                        "select query from pg_stat_activity"
                        " where wait_event_type = 'Lock' and %s = any(pg_blocking_pids(pid))",
                        pid,
                    )
                )
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        try:
            yield holder, row[0], blocked
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler


async def start_and_signal(mf: MemFlow, ids: list[str]) -> None:
    for workflow_id in ids:
        handle = await mf.workflow.start(
            workflow_name="waiter", args=["go"], task_queue="q", workflow_id=workflow_id
        )
        await handle.signal("go", workflow_id)


async def test_held_signal_delivered_delays_only_its_workflow(
    mf: MemFlow, db: Any, app: str, dsn: str
) -> None:
    """The issue's reproduction: `begin; select app.signal('go', '{}', null, 'k');` left open
    while a workflow waits for 'go'. It went to that workflow; every other wait_for('go')
    registers, is signalled and completes meanwhile."""
    await mf.worker.create(task_queue="q", workflow=waiter, concurrency=2)
    held = await mf.workflow.start(
        workflow_name="waiter", args=["go"], task_queue="q", workflow_id="held"
    )
    await until(lambda: waits(db, "go", "scheduled") == 1)
    async with held_signal(dsn, db, app, {}, None) as (holder, outcome, blocked):
        assert outcome["status"] == "delivered" and outcome["workflow_id"] == "held"
        others = [f"other-{i}" for i in range(8)]
        await start_and_signal(mf, others)
        for workflow_id in others:
            result = await mf.workflow.get_handle(workflow_id).result(timeout=30)
            assert result == workflow_id
        assert blocked == []  # no backend ever waited for the held transaction
        assert await held.status() == "waiting"
        await holder.commit()
    assert await held.result(timeout=30) == {}
    assert db.one("select count(*) from signals") == 0


async def test_held_signal_kept_for_one_workflow_delays_only_that_one(
    mf: MemFlow, db: Any, app: str, dsn: str
) -> None:
    """A targeted signal kept (its workflow has not waited yet) in an open transaction: that
    workflow's wait is deferred, not blocked (its step `retrying`), while the others of the
    same signal id complete; after the COMMIT it takes the signal."""
    target = await mf.workflow.start(
        workflow_name="waiter", args=["go"], task_queue="q", workflow_id="target"
    )
    async with held_signal(dsn, db, app, "for target", "target") as (holder, outcome, blocked):
        assert outcome["status"] == "kept"
        await mf.worker.create(task_queue="q", workflow=waiter, concurrency=2)
        others = [f"other-{i}" for i in range(8)]
        await start_and_signal(mf, others)
        for workflow_id in others:
            result = await mf.workflow.get_handle(workflow_id).result(timeout=30)
            assert result == workflow_id
        await until(lambda: waits(db, "go", "retrying") == 1)
        # The step is `retrying` before the activation that deferred it has ended (and moved
        # the workflow from `running`): wait for that too, a blocked one would never end.
        await until(lambda: db.one("select status from workflows where id = 'target'") != "running")
        assert db.one("select job_id from steps where status = 'retrying'") == "target"
        assert db.one("select waiting_on from workflows where id = 'target'") == "signal go"
        assert blocked == []
        assert await target.status() == "waiting"
        await holder.commit()
    assert await target.result(timeout=30) == "for target"
    assert db.one("select count(*) from signals") == 0


async def test_held_untargeted_signal_kept_defers_waits_without_blocking(
    mf: MemFlow, db: Any, app: str, dsn: str
) -> None:
    """An untargeted signal kept in an open transaction may go to any wait for its id: those
    waits are deferred until it commits (no worker slot waits on a lock: workflows waiting for
    something else keep completing), then one of them takes it, once."""
    async with held_signal(dsn, db, app, "anyone", None) as (holder, outcome, blocked):
        assert outcome["status"] == "kept"
        await mf.worker.create(task_queue="q", workflow=waiter, concurrency=2)
        for workflow_id in ("g1", "g2"):
            await mf.workflow.start(
                workflow_name="waiter", args=["go"], task_queue="q", workflow_id=workflow_id
            )
        await until(lambda: waits(db, "go", "retrying") == 2)
        others = [f"other-{i}" for i in range(8)]
        for workflow_id in others:
            handle = await mf.workflow.start(
                workflow_name="waiter", args=["other"], task_queue="q", workflow_id=workflow_id
            )
            await handle.signal("other", workflow_id)
        for workflow_id in others:
            result = await mf.workflow.get_handle(workflow_id).result(timeout=30)
            assert result == workflow_id
        for workflow_id in ("g1", "g2"):  # each gets a signal of its own too, kept for it
            sent = await mf.workflow.get_handle(workflow_id).signal("go", workflow_id)
            assert sent["status"] == "kept"
        assert blocked == []
        assert waits(db, "go", "retrying") == 2
        await holder.commit()
    results = [await mf.workflow.get_handle(w).result(timeout=30) for w in ("g1", "g2")]
    assert "anyone" in results and len({*results} - {"anyone"}) == 1
    assert {*results} <= {"anyone", "g1", "g2"}
    # delivered once: the untargeted one is gone, one targeted one is left for its finished
    # workflow (which waited only once)
    assert db.rows("select job_id from signals") in ([("g1",)], [("g2",)])


async def test_a_signal_kept_under_repeatable_read_is_refused(db: Any, app: str, dsn: str) -> None:
    """Keeping a signal relies on reading what committed after its lock; a repeatable read
    snapshot would miss a wait that registered meanwhile, and both would wait forever."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        query = sql.SQL("select {}.signal('go', '1')").format(sql.Identifier(app))
        with pytest.raises(psycopg.errors.InvalidTransactionState, match="read committed"):
            await conn.execute(query)
    assert db.one("select count(*) from signals") == 0


async def twice(signal_id: str) -> list[Any]:
    return [await workflow.wait_for(signal_id), await workflow.wait_for(signal_id)]


async def sender(target: str) -> Any:
    return await workflow.signal("go", "from sender", workflow_id=target)


async def test_a_workflow_sending_a_held_signal_is_deferred_not_blocked(
    mf: MemFlow, db: Any, app: str, dsn: str
) -> None:
    """workflow.signal to a workflow for which a caller holds a keep of the same signal: the
    send waits at most 50 ms, then its step is deferred (the worker slot is free); after the
    COMMIT it is sent, once, and the target gets both signals in order."""
    target = await mf.workflow.start(
        workflow_name="twice", args=["go"], task_queue="q", workflow_id="target"
    )
    async with held_signal(dsn, db, app, "held", "target") as (holder, outcome, blocked):
        assert outcome["status"] == "kept"
        await mf.worker.create(task_queue="q", workflow=[twice, sender, waiter], concurrency=2)
        send = await mf.workflow.start(
            workflow_name="sender", args=["target"], task_queue="q", workflow_id="sender"
        )
        await until(
            lambda: (
                db.one("select status from steps where job_id = 'sender' and seq = 1") == "retrying"
            )
        )
        others = [f"other-{i}" for i in range(4)]
        await start_and_signal(mf, others)
        for workflow_id in others:
            result = await mf.workflow.get_handle(workflow_id).result(timeout=30)
            assert result == workflow_id
        # only the sends themselves waited, each for at most its 50 ms lock_timeout
        assert all("send_signal" in query for query in blocked)
        assert db.one("select status from steps where job_id = 'sender' and seq = 1") == (
            "retrying"
        )
        await holder.commit()
    assert (await send.result(timeout=30))["status"] in ("delivered", "kept")
    assert await target.result(timeout=30) == ["held", "from sender"]
    assert db.one("select count(*) from steps where job_id = 'sender' and kind = 'send'") == 1
    assert db.one("select count(*) from signals") == 0
