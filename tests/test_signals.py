"""Signals end to end: a signal sent before the wait is kept and taken; a repeated idempotency
key changes nothing; 200 waiting workflows and 200 concurrent signals from SQL and Python,
none lost and each delivered once; wait_for timeouts (596), in main and hook threads;
workflow.signal between workflows, once per code position; bad input refused with nothing
changed."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from helpers import until_row
from hotmesh import (
    IllegalTransition,
    InvalidArgument,
    MemFlow,
    TimeoutFailure,
    WorkflowNotFound,
    workflow,
)

pytestmark = pytest.mark.timeout(60)


async def waiter(signal_id: str) -> Any:
    return await workflow.wait_for(signal_id)


async def twice(signal_id: str) -> list[Any]:
    return [await workflow.wait_for(signal_id), await workflow.wait_for(signal_id)]


async def until_waiting(db: Any, count: int, signal_id: str, limit: float = 30.0) -> None:
    """Until `count` waits for `signal_id` are scheduled (polling the database: the waits are
    what the test synchronises on)."""
    await until_row(
        db,
        "select count(*) >= %s from steps"
        " where kind = 'signal' and name = %s and status = 'scheduled'",
        count,
        signal_id,
        limit=limit,
    )


def signal_steps(db: Any, job_id: str) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = db.rows(
        "select seq, name, status, output from steps where job_id = %s and kind = 'signal'"
        " order by seq",
        job_id,
    )
    return rows


async def test_signal_sent_before_the_wait_is_kept(mf: MemFlow, db: Any) -> None:
    # targeted, before the workflow even ran
    handle = await mf.workflow.start(
        workflow_name="waiter", args=["approval"], task_queue="q", workflow_id="early"
    )
    sent = await handle.signal("approval", {"ok": True, "by": "ann"})
    assert sent["status"] == "kept"
    assert db.rows("select signal_id, job_id, payload from signals") == [
        ("approval", "early", {"ok": True, "by": "ann"})
    ]
    # untargeted, for a workflow that does not exist yet
    assert (await mf.workflow.signal("anyone", [1, 2]))["status"] == "kept"

    await mf.worker.create(task_queue="q", workflow=waiter)
    assert await handle.result(timeout=20) == {"ok": True, "by": "ann"}
    later = await mf.workflow.start(workflow_name="waiter", args=["anyone"], task_queue="q")
    assert await later.result(timeout=20) == [1, 2]

    assert db.one("select count(*) from signals") == 0
    assert signal_steps(db, "early") == [(1, "approval", "completed", {"ok": True, "by": "ann"})]


async def test_a_kept_targeted_signal_waits_for_its_workflow(mf: MemFlow, db: Any) -> None:
    await mf.worker.create(task_queue="q", workflow=waiter)
    target = await mf.workflow.start(workflow_name="waiter", args=["x"], task_queue="q")
    await until_waiting(db, 1, "x")
    other = await mf.workflow.start(workflow_name="waiter", args=["x"], task_queue="q")
    await until_waiting(db, 2, "x")
    # for a third workflow that has not waited yet: neither waiting workflow takes it
    third = await mf.workflow.start(
        workflow_name="twice", args=["x"], task_queue="nobody-serves-this"
    )
    assert (await third.signal("x", "for third"))["status"] == "kept"
    delivered = await other.signal("x", "for other")
    assert (delivered["status"], delivered["workflow_id"]) == ("delivered", other.workflow_id)
    assert await other.result(timeout=20) == "for other"
    assert signal_steps(db, target.workflow_id) == [(1, "x", "scheduled", None)]
    assert db.rows("select job_id, payload from signals") == [(third.workflow_id, "for third")]
    # an untargeted one goes to the remaining (oldest) wait
    assert (await mf.workflow.signal("x", "anyone"))["workflow_id"] == target.workflow_id
    assert await target.result(timeout=20) == "anyone"


async def test_one_idempotency_key_twice(mf: MemFlow, db: Any, app: str, dsn: str) -> None:
    handle = await mf.workflow.start(
        workflow_name="twice", args=["go"], task_queue="q", workflow_id="dup"
    )
    first = await handle.signal("go", "first", idempotency_key="k-1")
    assert first["status"] == "kept"  # nobody waits yet
    assert await handle.signal("go", "first", idempotency_key="k-1") == {"status": "duplicate"}
    # the same key from SQL, as another application would retry it
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        query = sql.SQL("select {}.signal('go', '\"first\"', 'dup', 'k-1')").format(
            sql.Identifier(app)
        )
        assert (await (await conn.execute(query)).fetchone()) == ({"status": "duplicate"},)
    # the same key with another payload is not a retry: refused, not dropped in silence
    with pytest.raises(InvalidArgument, match='idempotency key "k-1" was already used'):
        await handle.signal("go", "again", idempotency_key="k-1")
    assert db.rows("select payload from signals") == [("first",)]

    await mf.worker.create(task_queue="q", workflow=twice)
    await until_waiting(db, 1, "go")
    assert (await handle.signal("go", "second", idempotency_key="k-2"))["status"] == "delivered"
    assert await handle.result(timeout=20) == ["first", "second"]
    # a retry after the workflow finished is still a duplicate, not an error
    assert await handle.signal("go", "second", idempotency_key="k-2") == {"status": "duplicate"}
    assert [row[3] for row in signal_steps(db, "dup")] == ["first", "second"]
    assert db.one("select count(*) from signals") == 0
    assert db.rows("select idempotency_key from signal_keys order by 1") == [("k-1",), ("k-2",)]


async def test_one_idempotency_key_for_two_workflows(mf: MemFlow, db: Any) -> None:
    """Issue 13 (M2): a key belongs to the signal it came with, so one application's key
    cannot silently drop another workflow's signal."""
    yes = await mf.workflow.start(
        workflow_name="twice", args=["approve"], task_queue="q", workflow_id="k1"
    )
    no = await mf.workflow.start(
        workflow_name="twice", args=["approve"], task_queue="q", workflow_id="k2"
    )
    assert (await yes.signal("approve", "yes", idempotency_key="K"))["status"] == "kept"
    assert (await no.signal("approve", "no", idempotency_key="K"))["status"] == "kept"
    assert await no.signal("approve", "no", idempotency_key="K") == {"status": "duplicate"}
    await yes.signal("approve", "yes 2")
    await no.signal("approve", "no 2")
    await mf.worker.create(task_queue="q", workflow=twice)
    assert await yes.result(timeout=20) == ["yes", "yes 2"]
    assert await no.result(timeout=20) == ["no", "no 2"]


async def test_200_workflows_200_concurrent_signals(
    mf: MemFlow, db: Any, app: str, dsn: str
) -> None:
    """Half the signals from SQL on four connections, half from the Python client, all at
    once, some before their workflow waits and some after: none is lost, none delivered
    twice, each reaches its own workflow."""
    count = 200
    await mf.worker.create(task_queue="q", workflow=waiter, concurrency=16)
    ids = [f"wf-{n:03d}" for n in range(count)]
    handles = [
        await mf.workflow.start(workflow_name="waiter", args=["go"], task_queue="q", workflow_id=i)
        for i in ids
    ]
    await until_waiting(db, count // 2, "go")  # the rest cross their signal

    conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(4)]
    query = sql.SQL("select {}.signal('go', %s::jsonb, %s)").format(sql.Identifier(app))

    async def from_sql(n: int) -> dict[str, Any]:
        conn = conns[n % len(conns)]  # each connection sends its share one after another
        cur = await conn.execute(query, (Jsonb({"n": n}), ids[n]))
        row = await cur.fetchone()
        assert row is not None
        return dict(row[0])

    async def from_python(n: int) -> dict[str, Any]:
        return await mf.workflow.signal("go", {"n": n}, workflow_id=ids[n])

    try:
        outcomes = await asyncio.gather(
            *((from_sql if n % 2 else from_python)(n) for n in range(count))
        )
    finally:
        for conn in conns:
            await conn.close()
    statuses = [o["status"] for o in outcomes]
    assert set(statuses) <= {"delivered", "kept"}
    assert statuses.count("delivered") >= count // 2  # those already waiting got it at once

    results = await asyncio.gather(*(h.result(timeout=45) for h in handles))
    assert results == [{"n": n} for n in range(count)]
    assert db.one("select count(*) from signals") == 0
    assert db.rows(
        "select count(*), count(distinct job_id) from steps where kind = 'signal'"
        " and status = 'completed'"
    ) == [(count, count)]
    assert db.one("select count(*) from jobs where status = 'completed'") == count


async def test_untargeted_signals_each_go_to_one_waiter(mf: MemFlow, db: Any) -> None:
    count = 40
    await mf.worker.create(task_queue="q", workflow=waiter, concurrency=16)
    handles = [
        await mf.workflow.start(workflow_name="waiter", args=["any"], task_queue="q")
        for _ in range(count)
    ]
    await until_waiting(db, count // 2, "any")
    outcomes = await asyncio.gather(*(mf.workflow.signal("any", n) for n in range(count)))
    assert {o["status"] for o in outcomes} <= {"delivered", "kept"}
    results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
    assert sorted(results) == list(range(count))  # every payload used exactly once
    assert db.one("select count(*) from signals") == 0


async def test_wait_timeout(mf: MemFlow, db: Any) -> None:
    async def impatient() -> list[Any]:
        out: list[Any] = [await workflow.wait_for("fast", timeout="10 seconds")]
        try:
            await workflow.wait_for("never", timeout=timedelta(milliseconds=300))
        except TimeoutFailure as error:
            out.append([error.code, error.type, error.message])
        return out

    await mf.worker.create(task_queue="q", workflow=impatient)
    handle = await mf.workflow.start(workflow_name="impatient", task_queue="q", workflow_id="imp")
    await handle.signal("fast", "in time")
    assert await handle.result(timeout=20) == [
        "in time",
        [596, "TimeoutFailure", 'signal "never" did not arrive within 0.3 seconds'],
    ]
    (fast, never) = db.rows(
        "select status, wake_at, created_at, completed_at, error from steps"
        " where job_id = 'imp' order by seq"
    )
    assert fast[0] == "completed" and fast[1] is None  # the signal came: no timer left
    status, wake_at, created_at, completed_at, error = never
    assert (status, error["code"]) == ("failed", 596)
    assert wake_at == created_at + timedelta(seconds=0.3)
    assert completed_at >= wake_at, "the timeout fired early"
    # the finished workflow refuses a late signal (kept, it would never be taken)
    with pytest.raises(IllegalTransition):
        await handle.signal("never", "too late")


async def test_uncaught_timeout_fails_the_workflow(mf: MemFlow) -> None:
    async def strict() -> Any:
        return await workflow.wait_for("never", timeout=0.1)

    await mf.worker.create(task_queue="q", workflow=strict)
    handle = await mf.workflow.start(
        workflow_name="strict", task_queue="q", retry_policy={"maximum_attempts": 1}
    )
    with pytest.raises(TimeoutFailure) as caught:
        await handle.result(timeout=20)
    assert caught.value.code == 596
    assert await handle.status() == "failed"


async def test_workflows_signal_each_other_once(mf: MemFlow, db: Any) -> None:
    async def receiver() -> list[Any]:
        return [await workflow.wait_for("ping"), await workflow.wait_for("ping")]

    async def sender(target: str) -> list[Any]:
        sent = await workflow.signal("ping", {"from": "sender"}, workflow_id=target)
        await workflow.sleep_for(0.05)  # a second activation: the send above is replayed
        mine = await workflow.signal("self", "to me")  # default target: this workflow
        echo = await workflow.wait_for("self")
        anyone = await workflow.signal("ping", "to anyone", workflow_id="*")
        return [sent["status"], mine["status"], echo, anyone["workflow_id"]]

    await mf.worker.create(task_queue="q", workflow=[receiver, sender])
    rec = await mf.workflow.start(workflow_name="receiver", task_queue="q", workflow_id="rec")
    await until_waiting(db, 1, "ping")
    snd = await mf.workflow.start(
        workflow_name="sender", args=["rec"], task_queue="q", workflow_id="snd"
    )
    assert await snd.result(timeout=20) == ["delivered", "kept", "to me", "rec"]
    assert await rec.result(timeout=20) == [{"from": "sender"}, "to anyone"]
    assert db.rows(
        "select seq, name, status, input ->> 'workflow_id' from steps"
        " where job_id = 'snd' and kind = 'send' order by seq"
    ) == [
        (1, "ping", "completed", "rec"),
        (3, "self", "completed", "snd"),
        (5, "ping", "completed", None),
    ]
    # the replayed send was not sent again
    assert db.one("select count(*) from steps where job_id = 'rec' and kind = 'signal'") == 2
    assert db.one("select count(*) from signals") == 0


async def test_signal_to_an_unknown_workflow_inside_a_workflow(mf: MemFlow) -> None:
    async def lost() -> list[Any]:
        try:
            await workflow.signal("ping", 1, workflow_id="nobody")
        except Exception as error:  # the call fails; the workflow goes on
            return [type(error).__name__, getattr(error, "details", {}).get("sqlstate")]
        return []

    await mf.worker.create(task_queue="q", workflow=lost)
    handle = await mf.workflow.start(workflow_name="lost", task_queue="q")
    assert await handle.result(timeout=20) == ["FatalError", "HM002"]


async def test_bad_signals_are_refused(mf: MemFlow, db: Any, app: str, dsn: str) -> None:
    with pytest.raises(WorkflowNotFound, match='workflow "ghost" not found'):
        await mf.workflow.signal("go", 1, workflow_id="ghost")
    with pytest.raises(WorkflowNotFound):
        await mf.workflow.get_handle("ghost").signal("go", 1, idempotency_key="k")
    for bad in (object(), {1, 2}, math.nan, {"when": asyncio}):
        with pytest.raises(InvalidArgument, match="the data of signal go"):
            await mf.workflow.signal("go", bad)
    with pytest.raises(InvalidArgument, match="signal id is required"):
        await mf.workflow.signal("", 1)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            await conn.execute(
                sql.SQL("select {}.signal('go', 'not json')").format(sql.Identifier(app))
            )

    async def done() -> str:
        return "done"

    await mf.worker.create(task_queue="q", workflow=done)
    handle = await mf.workflow.start(workflow_name="done", task_queue="q", workflow_id="fin")
    assert await handle.result(timeout=20) == "done"
    with pytest.raises(IllegalTransition, match='workflow "fin" is completed'):
        await handle.signal("go", 1)
    # nothing was kept and no key used up by any of these
    assert db.one("select count(*) from signals") == 0
    assert db.one("select count(*) from signal_keys") == 0


async def test_signal_wakes_a_waiter_served_by_another_client(
    mf: MemFlow, remote: MemFlow, db: Any
) -> None:
    await remote.worker.create(task_queue="q", workflow=waiter)
    handle = await mf.workflow.start(workflow_name="waiter", args=["wake"], task_queue="q")
    await until_waiting(db, 1, "wake")
    # the waiter suspends: it holds no task, no slot
    await until_row(db, "select count(*) = 0 from tasks", limit=20)
    assert await handle.status() == "waiting"
    assert (await handle.signal("wake", "up"))["status"] == "delivered"
    assert await handle.result(timeout=20) == "up"


async def test_waits_in_hook_threads(mf: MemFlow, db: Any) -> None:
    async def listener(signal_id: str) -> Any:
        try:
            return await workflow.wait_for(signal_id, timeout="200 milliseconds")
        except TimeoutFailure as error:
            return [workflow.get_context().thread, error.code]

    async def two_listeners() -> list[Any]:
        return [
            await workflow.exec_hook(workflow_name="listener", args=["hook-ping"]),
            await workflow.exec_hook(workflow_name="listener", args=["hook-never"]),
        ]

    await mf.worker.create(task_queue="q", workflow=[two_listeners, listener])
    handle = await mf.workflow.start(workflow_name="two_listeners", task_queue="q")
    await until_waiting(db, 1, "hook-ping")
    sent = await handle.signal("hook-ping", "pong")
    assert (sent["status"], sent["thread"]) == ("delivered", "h1")
    assert await handle.result(timeout=20) == ["pong", ["h2", 596]]
