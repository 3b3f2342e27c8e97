"""Cancellation end to end: a workflow cancelled with descend while its child's remote
activity runs on another worker ends `cancelled` (410) with its children, leaves no task
behind, and no activity of it runs afterwards; handle.result() raises CancelledFailure;
finished and unknown workflows are refused; workflow.interrupt; cancel without descend;
a cancelled child raises in its parent; cancel from SQL; a workflow cancelling itself;
cancel racing a suspending activation does not deadlock."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg import sql

from helpers import until_lock_wait, until_row
from hotmesh import (
    CancelledFailure,
    FatalError,
    IllegalTransition,
    MemFlow,
    WorkflowError,
    WorkflowNotFound,
    workflow,
)

pytestmark = pytest.mark.timeout(60)


async def waits_forever() -> Any:
    return await workflow.wait_for("never-sent")


async def test_cancel_with_descend_mid_activity(
    mf: MemFlow, remote: MemFlow, db: Any, app: str
) -> None:
    db.conn.execute("create table trace (id serial, tag text, job_id text, phase text)")
    release = asyncio.Event()
    record = sql.SQL("insert into {}.trace (tag, job_id, phase) values (%s, %s, %s)").format(
        sql.Identifier(app)
    )

    async def work(tag: str, job_id: str) -> str:
        async with await psycopg.AsyncConnection.connect(mf.dsn, autocommit=True) as conn:
            await conn.execute(record, (tag, job_id, "start"))
            try:
                await release.wait()
            except asyncio.CancelledError:  # its worker saw the lease gone (a heartbeat)
                await conn.execute(record, (tag, job_id, "stopped"))
                raise
            await conn.execute(record, (tag, job_id, "end"))
        return f"{tag} worked"

    async def minion() -> list[str]:
        acts = workflow.proxy_activities(task_queue="aq")
        me = workflow.get_context().workflow_id
        return [await acts.work("first", me), await acts.work("second", me)]

    async def boss() -> Any:
        await workflow.start_child(workflow_name="waits_forever", workflow_id="helper")
        return await workflow.exec_child(workflow_name="minion", workflow_id="minion")

    async def sentinel() -> str:
        acts = workflow.proxy_activities(task_queue="aq")
        return str(await acts.work("sentinel", workflow.get_context().workflow_id))

    await remote.worker.register_activities(task_queue="aq", activities=[work])
    await mf.worker.create(task_queue="wq", workflow=[boss, minion, waits_forever, sentinel])
    handle = await mf.workflow.start(workflow_name="boss", task_queue="wq", workflow_id="boss")
    await until_row(db, "select count(*) from trace where tag = 'first' and phase = 'start'")
    assert db.rows("select job_id, kind, state from tasks where kind = 'activity'") == [
        ("minion", "activity", "leased")  # running on the other worker right now
    ]

    assert await handle.interrupt("stop now") == ["boss", "helper", "minion"]
    tree = ("boss", "helper", "minion")
    assert db.one("select count(*) from tasks where job_id = any(%s)", list(tree)) == 0
    for workflow_id in tree:
        with pytest.raises(CancelledFailure, match="stop now") as caught:
            await mf.workflow.get_handle(workflow_id).result(timeout=10)
        assert caught.value.code == 410
        assert caught.value.details["workflow_id"] == workflow_id
    assert db.rows("select id, status from jobs order by id") == [
        ("boss", "cancelled"),
        ("helper", "cancelled"),
        ("minion", "cancelled"),
    ]

    # the running activity finishes (or is stopped, if a heartbeat found its task gone
    # first), but its result is refused and wakes nobody
    release.set()
    await until_row(db, "select count(*) from trace where tag = 'first' and phase <> 'start'")
    done = await mf.workflow.start(workflow_name="sentinel", task_queue="wq")
    assert await done.result(timeout=20) == "sentinel worked"  # the queues were served since
    ended = db.one("select phase from trace where tag = 'first' and phase <> 'start'")
    assert ended in ("end", "stopped")
    assert db.rows("select tag, job_id, phase from trace order by id") == [
        ("first", "minion", "start"),
        ("first", "minion", ended),
        ("sentinel", done.workflow_id, "start"),
        ("sentinel", done.workflow_id, "end"),
    ]
    assert db.rows("select seq, kind, status from steps where job_id = 'minion'") == [
        (1, "activity", "scheduled")  # never recorded: the task was gone
    ]
    assert db.one("select count(*) from tasks") == 0


async def test_cancelling_finished_or_unknown_workflows(mf: MemFlow, db: Any) -> None:
    async def quick() -> str:
        return "done"

    await mf.worker.create(task_queue="q", workflow=quick)
    handle = await mf.workflow.start(workflow_name="quick", task_queue="q", workflow_id="qk")
    assert await handle.result(timeout=20) == "done"
    with pytest.raises(IllegalTransition, match='workflow "qk" is completed; it cannot be'):
        await handle.interrupt("too late")
    assert db.rows("select status, result, error from jobs") == [("completed", "done", None)]
    assert await mf._db.cancel_workflow("qk", None, True, True) == []  # ignore_finished
    with pytest.raises(WorkflowNotFound, match='workflow "ghost" not found'):
        await mf.workflow.get_handle("ghost").interrupt()


async def test_workflow_interrupt_cancels_another(mf: MemFlow, db: Any) -> None:
    async def killer(target: str) -> list[Any]:
        out: list[Any] = [await workflow.interrupt(target, reason="by killer")]
        for victim in (target, "ghost"):  # again (now finished), then unknown
            try:
                await workflow.interrupt(victim)
            except FatalError as error:
                out.append([error.type, error.details.get("sqlstate")])
        return out

    await mf.worker.create(task_queue="q", workflow=[killer, waits_forever])
    victim = await mf.workflow.start(
        workflow_name="waits_forever", task_queue="q", workflow_id="victim"
    )
    await until_row(db, "select count(*) from steps where job_id = 'victim'")
    handle = await mf.workflow.start(workflow_name="killer", args=["victim"], task_queue="q")
    assert await handle.result(timeout=20) == [
        ["victim"],
        ["CancelError", "HM003"],
        ["CancelError", "HM002"],
    ]
    with pytest.raises(CancelledFailure, match="by killer"):
        await victim.result(timeout=10)


async def test_cancel_without_descend_leaves_children_running(mf: MemFlow, db: Any) -> None:
    async def parent() -> Any:
        return await workflow.exec_child(workflow_name="waits_forever", workflow_id="kid")

    await mf.worker.create(task_queue="q", workflow=[parent, waits_forever])
    handle = await mf.workflow.start(workflow_name="parent", task_queue="q", workflow_id="par")
    await until_row(db, "select status = 'waiting' from jobs where id = 'kid'")
    assert await handle.interrupt(descend=False) == ["par"]
    with pytest.raises(CancelledFailure, match='workflow "par" cancelled'):
        await handle.result(timeout=10)
    kid = mf.workflow.get_handle("kid")
    assert await kid.status() == "waiting"
    await kid.signal("never-sent", "sent after all")
    assert await kid.result(timeout=20) == "sent after all"
    # the child's end settled the parent's step, but nothing of the parent runs again
    assert db.one("select status from jobs where id = 'par'") == "cancelled"
    assert db.one("select count(*) from tasks") == 0


async def test_a_cancelled_child_raises_in_its_parent(
    mf: MemFlow, db: Any, app: str, dsn: str
) -> None:
    async def guardian() -> list[Any]:
        try:
            await workflow.exec_child(workflow_name="waits_forever", workflow_id="ward")
        except WorkflowError as error:
            return [type(error).__name__, error.code, error.message]
        return []

    await mf.worker.create(task_queue="q", workflow=[guardian, waits_forever])
    handle = await mf.workflow.start(workflow_name="guardian", task_queue="q")
    await until_row(db, "select count(*) from steps where job_id = 'ward'")
    # from SQL, as any application (or a person in psql) would
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        query = sql.SQL("select {}.cancel_workflow('ward', 'withdrawn')").format(
            sql.Identifier(app)
        )
        assert await (await conn.execute(query)).fetchone() == (["ward"],)
    assert await handle.result(timeout=20) == ["CancelledFailure", 410, "withdrawn"]


async def test_cancel_while_the_activation_suspends(app: str, dsn: str) -> None:
    """Lock order: cancel_workflow takes a workflow's tasks before its row, as a suspending
    activation does (its task, then the row). Here the activation is held in the middle of
    suspend_task while cancel runs; the other order deadlocked."""
    options = f"-c search_path={app}"
    activation = await psycopg.AsyncConnection.connect(dsn, autocommit=True, options=options)
    canceller = await psycopg.AsyncConnection.connect(dsn, autocommit=True, options=options)
    try:
        await activation.execute("select start_workflow('w', '[]', 'q', 'wf')")
        cur = await activation.execute(
            "select task_id, lease_token from claim_tasks(array['q'], 'test', 1)"
        )
        task = await cur.fetchone()
        assert task is not None
        await activation.execute("select wait_signal(%s, %s, 1, 'x', null)", task)
        pid = (await (await canceller.execute("select pg_backend_pid()")).fetchone() or [0])[0]

        await activation.execute("begin")
        await activation.execute("select from tasks where id = %s for update", task[:1])
        cancel = asyncio.create_task(canceller.execute("select cancel_workflow('wf')"))
        await until_lock_wait(activation, pid)  # cancel_workflow waits for the task's lock
        await activation.execute("select suspend_task(%s, %s)", task)
        await activation.execute("commit")
        assert await (await cancel).fetchone() == (["wf"],)
        cur = await activation.execute("select status, error ->> 'code' from jobs")
        assert await cur.fetchall() == [("cancelled", "410")]
        assert await (await activation.execute("select count(*) from tasks")).fetchone() == (0,)
    finally:
        await activation.close()
        await canceller.close()


async def test_a_workflow_cancelling_itself(mf: MemFlow, db: Any) -> None:
    async def quitter() -> str:
        await workflow.interrupt(workflow.get_context().workflow_id, reason="giving up")
        return "never returned"

    await mf.worker.create(task_queue="q", workflow=quitter)
    handle = await mf.workflow.start(workflow_name="quitter", task_queue="q", workflow_id="qt")
    with pytest.raises(CancelledFailure, match="giving up"):
        await handle.result(timeout=20)
    assert db.rows("select seq, kind, status, output from steps where job_id = 'qt'") == [
        (1, "cancel", "completed", ["qt"])
    ]
    assert db.one("select count(*) from tasks") == 0
