"""Hooks, child workflows, search attributes and events end to end: exec_hook /
exec_hook_batch with entity writes from every hook, hook errors raised in the caller (never
swallowed), a hook nobody registers failing visibly, hooks from outside; exec_child /
start_child, a parent that holds no slot while its child runs, child failures with their
codes; search attributes filterable from SQL; emit delivered to mf.events; a worker killed
with SIGKILL while hooks run, and another worker finishing the workflow."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
import pytest

from helpers import Workers, kill9, until_lock_wait, until_row, workers_fixture
from hotmesh import (
    FatalError,
    IllegalTransition,
    InvalidArgument,
    MaxedError,
    MemFlow,
    TimeoutFailure,
    WorkflowError,
    WorkflowNotFound,
    workflow,
)

pytestmark = pytest.mark.timeout(60)

ONE_TRY = {"maximum_attempts": 1}


def error_info(error: WorkflowError) -> list[Any]:
    return [type(error).__name__, error.code, error.type, error.message]


# -- hooks ------------------------------------------------------------------------------------


async def reviewer(name: str) -> str:
    entity = await workflow.entity()
    await entity.append("log", name)
    await entity.merge({name: workflow.get_context().thread})
    return f"{name} reviewed"


async def signaller(name: str, signal_id: str) -> str:
    entity = await workflow.entity()
    await entity.merge({"signaller": name})
    await workflow.signal(signal_id, {"via": "signal"})
    return "this return value is not delivered: the hook signalled"


async def test_exec_hook_result_signal_and_shared_entity(mf: MemFlow, db: Any) -> None:
    async def host() -> list[Any]:
        entity = await workflow.entity()
        await entity.set({"log": []})
        returned = await workflow.exec_hook(workflow_name="reviewer", args=["one"])
        signalled = await workflow.exec_hook(
            workflow_name="signaller", args=["two", "my-signal"], signal_id="my-signal"
        )
        return [returned, signalled, await entity.get()]

    await mf.worker.create(task_queue="q", workflow=[host, reviewer, signaller])
    handle = await mf.workflow.start(workflow_name="host", task_queue="q", workflow_id="hst")
    assert await handle.result(timeout=20) == [
        "one reviewed",
        {"via": "signal"},
        {"log": ["one"], "one": "h1", "signaller": "two"},
    ]
    # The signaller's result came by its signal: its thread's own completion may commit after
    # the workflow's.
    await until_row(db, "select count(*) = 0 from threads where status = 'running'")
    assert db.rows("select thread, name, status from threads order by thread") == [
        ("h1", "reviewer", "completed"),
        ("h2", "signaller", "completed"),
    ]
    history = await mf.entity.history("hst")
    assert [(h["thread"], h["op"]) for h in history] == [
        ("main", "set"),
        ("h1", "append"),
        ("h1", "merge"),
        ("h2", "merge"),
    ]
    assert db.one("select count(*) from signals") == 0  # nothing undelivered left over


async def test_exec_hook_batch_entity_writes_from_every_hook(mf: MemFlow, db: Any) -> None:
    async def counter(key: str) -> str:
        entity = await workflow.entity()
        await entity.increment("count", 1)
        await entity.append("seen", key)
        await entity.merge({"by": {key: workflow.get_context().thread}})
        return key.upper()

    async def fan_out() -> list[Any]:
        entity = await workflow.entity()
        await entity.set({"count": 0, "seen": []})
        results = await workflow.exec_hook_batch(
            [{"key": k, "options": {"workflow_name": "counter", "args": [k]}} for k in "wxyz"]
        )
        return [results, await entity.get()]

    await mf.worker.create(task_queue="q", workflow=[fan_out, counter])
    handle = await mf.workflow.start(workflow_name="fan_out", task_queue="q", workflow_id="fan")
    results, doc = await handle.result(timeout=20)
    assert results == {"w": "W", "x": "X", "y": "Y", "z": "Z"}
    assert doc["count"] == 4 and sorted(doc["seen"]) == ["w", "x", "y", "z"]
    assert doc["by"] == {"w": "h1", "x": "h2", "y": "h3", "z": "h4"}
    writers = db.rows("select thread, count(*) from steps where kind = 'entity' group by 1")
    assert sorted(writers) == [("h1", 3), ("h2", 3), ("h3", 3), ("h4", 3), ("main", 2)]


async def test_a_failing_hook_raises_in_its_caller(mf: MemFlow, db: Any) -> None:
    runs: list[str] = []

    async def flaky(claim: str) -> str:
        runs.append(claim)
        raise ValueError(f"bad claim {claim}")

    async def careful() -> list[Any]:
        try:
            await workflow.exec_hook(workflow_name="flaky", args=["A42"])
        except WorkflowError as error:
            return error_info(error)
        return ["not raised"]

    async def careless() -> Any:
        return await workflow.exec_hook(workflow_name="flaky", args=["B17"])

    await mf.worker.create(task_queue="q", workflow=[careful, careless, flaky])
    two_tries = {"maximum_attempts": 2, "initial_interval": 0.05}
    handle = await mf.workflow.start(
        workflow_name="careful", task_queue="q", retry_policy=two_tries
    )
    # retried under the workflow's policy (2 runs), then raised, never swallowed into None
    assert await handle.result(timeout=20) == ["MaxedError", 597, "ValueError", "bad claim A42"]
    assert runs == ["A42", "A42"]

    uncaught = await mf.workflow.start(
        workflow_name="careless", task_queue="q", retry_policy=ONE_TRY
    )
    with pytest.raises(MaxedError, match="bad claim B17"):
        await uncaught.result(timeout=20)
    assert db.one("select status from jobs where id = %s", uncaught.workflow_id) == "failed"


async def test_a_hook_nobody_registers_fails_visibly(mf: MemFlow) -> None:
    async def hopeful() -> list[Any]:
        out = []
        try:
            await workflow.exec_hook(workflow_name="nobody_registers_this", args=[1])
        except WorkflowError as error:
            out.append(error_info(error))
        try:  # a queue nobody serves cannot fail by itself: a timeout bounds the wait
            await workflow.exec_hook(
                workflow_name="hopeful", task_queue="unserved", timeout="300 milliseconds"
            )
        except TimeoutFailure as error:
            out.append([error.code, error.type])
        return out

    await mf.worker.create(task_queue="q", workflow=hopeful)
    handle = await mf.workflow.start(workflow_name="hopeful", task_queue="q", retry_policy=ONE_TRY)
    (unknown, timed_out) = await handle.result(timeout=20)
    assert unknown[:3] == ["MaxedError", 597, "UnknownWorkflow"]
    assert 'workflow "nobody_registers_this" is not registered on task queue "q"' in unknown[3]
    assert "it serves: hopeful" in unknown[3]
    assert timed_out == [596, "TimeoutFailure"]


async def pinger(tag: str) -> None:
    await workflow.signal(f"from-{tag}", tag)


async def test_hooks_from_outside_and_fire_and_forget(mf: MemFlow, db: Any) -> None:
    async def hosting() -> list[Any]:
        first = await workflow.wait_for("from-outside")
        started = await workflow.hook(workflow_name="pinger", args=["inside"])
        second = await workflow.wait_for("from-inside")
        return [first, started, second]

    await mf.worker.create(task_queue="q", workflow=[hosting, pinger])
    handle = await mf.workflow.start(workflow_name="hosting", task_queue="q", workflow_id="hs")
    thread = await mf.workflow.hook(workflow_id="hs", workflow_name="pinger", args=["outside"])
    assert thread == "h1"
    assert await handle.result(timeout=20) == [
        "outside",
        {"workflow_id": "hs", "thread": "h2"},
        "inside",
    ]
    with pytest.raises(IllegalTransition, match='workflow "hs" is completed'):
        await mf.workflow.hook(workflow_id="hs", workflow_name="pinger", args=["late"])
    with pytest.raises(WorkflowNotFound):
        await mf.workflow.hook(workflow_id="ghost", workflow_name="pinger")
    with pytest.raises(InvalidArgument):
        await mf.workflow.hook(workflow_id="hs", workflow_name="pinger", args=[object()])
    assert db.one("select count(*) from threads") == 2


async def test_concurrent_hooks_from_outside_are_numbered_without_gaps(
    mf: MemFlow, db: Any
) -> None:
    count = 20

    async def ack(n: int) -> None:
        await workflow.signal("ack", n)

    async def collector() -> list[Any]:
        return sorted([await workflow.wait_for("ack") for _ in range(count)])

    await mf.worker.create(task_queue="q", workflow=[collector, ack], concurrency=8)
    handle = await mf.workflow.start(workflow_name="collector", task_queue="q")
    threads = await asyncio.gather(
        *(
            mf.workflow.hook(workflow_id=handle.workflow_id, workflow_name="ack", args=[n])
            for n in range(count)
        )
    )
    assert sorted(threads) == sorted(f"h{n}" for n in range(1, count + 1))
    assert await handle.result(timeout=30) == list(range(count))
    assert db.one("select count(*) from signals") == 0


# -- children ---------------------------------------------------------------------------------


async def doubler(n: int) -> int:
    await workflow.sleep_for(0.01)
    return n * 2


async def test_exec_child_and_start_child(mf: MemFlow, db: Any) -> None:
    async def family() -> list[Any]:
        awaited = await workflow.exec_child(workflow_name="doubler", args=[21])
        started = await workflow.start_child(
            workflow_name="doubler", args=[5], workflow_id="kid-five"
        )
        return [awaited, started]

    await mf.worker.create(task_queue="q", workflow=[family, doubler])
    handle = await mf.workflow.start(workflow_name="family", task_queue="q", workflow_id="fam")
    assert await handle.result(timeout=20) == [42, "kid-five"]
    assert await mf.workflow.get_handle("kid-five").result(timeout=20) == 10
    assert db.rows(
        "select id, parent_id, parent_thread, parent_seq, status, result from jobs"
        " where parent_id = 'fam' order by id"
    ) == [
        ("fam-main-1", "fam", "main", 1, "completed", 42),
        ("kid-five", "fam", None, None, "completed", 10),
    ]
    assert db.rows("select seq, kind, status, output from steps where job_id = 'fam'") == [
        (1, "child", "completed", 42),
        (2, "child", "completed", "kid-five"),
    ]


async def test_parent_holds_no_slot_while_its_child_runs(mf: MemFlow, db: Any) -> None:
    async def slow_kid() -> Any:
        return await workflow.wait_for("kid-go")

    async def patient() -> Any:
        return await workflow.exec_child(workflow_name="slow_kid", workflow_id="slow")

    # one slot: the parent must give it up for its child to run at all
    await mf.worker.create(task_queue="q", workflow=[patient, slow_kid], concurrency=1)
    handle = await mf.workflow.start(workflow_name="patient", task_queue="q", workflow_id="pat")
    await until_row(db, "select count(*) from steps where job_id = 'slow' and kind = 'signal'")
    await until_row(db, "select count(*) = 0 from tasks")
    assert await handle.status() == "waiting"
    assert db.one("select status from steps where job_id = 'pat'") == "scheduled"
    await mf.workflow.get_handle("slow").signal("kid-go", "finally")
    assert await handle.result(timeout=20) == "finally"


async def test_child_failures_raise_in_the_parent_with_their_code(mf: MemFlow, db: Any) -> None:
    async def fatal_kid() -> None:
        raise FatalError("no such policy", type="PolicyError")

    async def flaky_kid() -> None:
        raise KeyError("missing field")

    async def guardian() -> list[Any]:
        out = []
        for name in ("fatal_kid", "flaky_kid"):
            try:
                await workflow.exec_child(workflow_name=name, retry_policy=ONE_TRY)
            except WorkflowError as error:
                out.append(error_info(error))
        try:  # an id that is taken: the child cannot start
            await workflow.start_child(workflow_name="fatal_kid", workflow_id="grd")
        except WorkflowError as error:
            out.append([*error_info(error)[:3], error.details.get("sqlstate")])
        return out

    async def orphan() -> None:
        await workflow.exec_child(workflow_name="fatal_kid")

    await mf.worker.create(task_queue="q", workflow=[guardian, fatal_kid, flaky_kid, orphan])
    handle = await mf.workflow.start(workflow_name="guardian", task_queue="q", workflow_id="grd")
    assert await handle.result(timeout=20) == [
        ["FatalError", 598, "PolicyError", "no such policy"],
        ["MaxedError", 597, "KeyError", "'missing field'"],
        ["FatalError", 598, "ChildWorkflowError", "HM001"],
    ]
    assert db.rows("select id, status from jobs where parent_id = 'grd' order by id") == [
        ("grd-main-1", "failed"),
        ("grd-main-2", "failed"),
    ]
    # uncaught, the child's error fails the parent with the child's code
    parent = await mf.workflow.start(workflow_name="orphan", task_queue="q", retry_policy=ONE_TRY)
    with pytest.raises(FatalError, match="no such policy") as caught:
        await parent.result(timeout=20)
    assert (caught.value.code, caught.value.type) == (598, "PolicyError")


# -- search attributes, events ----------------------------------------------------------------


async def test_search_attributes_filterable_from_sql(mf: MemFlow, db: Any) -> None:
    async def searchable(region: str) -> list[Any]:
        search = workflow.search()
        out = [await search.set({"region": region, "score": 1})]
        out.append(await workflow.enrich({"tier": "gold"}))
        out.append(await search.get("region"))
        out.append(await search.incr("score", 2))
        out.append(await search.mult("score", 10))
        out.append(await search.mget("region", "tier", "missing"))
        out.append(await search.delete("tier", "nope"))
        try:
            await search.incr("region", 1)
        except WorkflowError as error:
            out.append([error.type, error.details.get("sqlstate")])
        return out

    await mf.worker.create(task_queue="q", workflow=searchable)
    eu = await mf.workflow.start(workflow_name="searchable", args=["eu"], task_queue="q")
    us = await mf.workflow.start(workflow_name="searchable", args=["us"], task_queue="q")
    expected = [2, True, "eu", 3, 30, ["eu", "gold", None], 1, ["SearchError", "HM008"]]
    assert await eu.result(timeout=20) == expected
    assert (await us.result(timeout=20))[2] == "us"
    assert db.rows('select id, search from jobs where search @> \'{"region": "eu"}\'') == [
        (eu.workflow_id, {"region": "eu", "score": 30})
    ]
    assert db.rows("select id from jobs where (search ->> 'score')::int >= 30 order by id") == [
        (i,) for i in sorted([eu.workflow_id, us.workflow_id])
    ]


async def test_emit_delivers_to_events_once(mf: MemFlow) -> None:
    async def emitter(tag: str) -> str:
        await workflow.emit({"progress": {"pct": 50, "tag": tag}, "other": "ignored"})
        await workflow.sleep_for(0.05)  # a second activation replays the first emit
        await workflow.emit({"progress": {"pct": 100, "tag": tag}})
        return "ok"

    await mf.worker.create(task_queue="q", workflow=emitter)  # the listener now runs
    got: list[dict[str, Any]] = []

    async def collect() -> None:
        async with contextlib.aclosing(mf.events("progress")) as events:
            async for event in events:
                got.append(event)
                if event["data"]["tag"] == "last":
                    return

    collector = asyncio.create_task(collect())
    for _ in range(5):
        await asyncio.sleep(0)  # the collector subscribes before anything is emitted
    handle = await mf.workflow.start(
        workflow_name="emitter", args=["first"], task_queue="q", workflow_id="em"
    )
    assert await handle.result(timeout=20) == "ok"
    last = await mf.workflow.start(workflow_name="emitter", args=["last"], task_queue="q")
    await asyncio.wait_for(collector, 20)
    assert got[:3] == [
        {"workflow_id": "em", "topic": "progress", "data": {"pct": 50, "tag": "first"}},
        {"workflow_id": "em", "topic": "progress", "data": {"pct": 100, "tag": "first"}},
        {"workflow_id": last.workflow_id, "topic": "progress", "data": {"pct": 50, "tag": "last"}},
    ]
    assert len(got) == 3  # the replayed emit was not published again


# -- a worker killed while hooks run ----------------------------------------------------------


workers = workers_fixture("hooky")


@pytest.mark.timeout(90)
async def test_worker_killed_while_hooks_run(mf: MemFlow, db: Any, workers: Workers) -> None:
    handle = await mf.workflow.start(
        workflow_name="hooky_main", task_queue="hq", workflow_id="hooky"
    )
    first = workers.spawn("b")
    # hooks a (h1) and c (h3) finished; b (h2) ran its side effect and hangs there
    await until_row(db, "select count(*) from effects where name = 'b'")
    await until_row(db, "select count(*) = 2 from threads where status = 'completed'")
    await until_row(db, "select count(*) = 1 from tasks")  # the caller parked again: only b's
    kill9(first)
    (thread, state, owner) = db.rows("select thread, state, lease_owner from tasks")[0]
    assert (thread, state, owner.split(":")[1]) == ("h2", "leased", str(first.pid))

    second = workers.spawn()
    assert await handle.result(timeout=40) == {
        "results": {"a": "a done", "b": "b done", "c": "c done"},
        "entity": {"a": "h1", "b": "h2", "c": "h3"},
    }
    # every recorded step ran once; b's effect (unrecorded at the kill) once in each process
    assert db.rows("select name, pid from effects order by name, id") == [
        ("a", first.pid),
        ("b", first.pid),
        ("b", second.pid),
        ("c", first.pid),
    ]
    assert db.rows("select thread, status from threads order by thread") == [
        ("h1", "completed"),
        ("h2", "completed"),
        ("h3", "completed"),
    ]
    assert db.one("select count(*) from tasks") == 0
    assert db.one("select count(*) from signals") == 0


async def test_hook_failing_while_its_caller_suspends(app: str, dsn: str) -> None:
    """Lock order: a hook's final failure delivers its error to the caller's wait and wakes
    the caller's task without holding the job row, because a suspending main activation
    holds its task and then takes the job row. Here the caller is held in the middle of
    suspend_task while the hook fails; the job row taken first deadlocked."""
    options = f"-c search_path={app}"
    caller = await psycopg.AsyncConnection.connect(dsn, autocommit=True, options=options)
    hook = await psycopg.AsyncConnection.connect(dsn, autocommit=True, options=options)
    try:
        await caller.execute(
            "select start_workflow('w', '[]', 'q', 'wf', null,"
            ' \'{"retry_policy": {"maximum_attempts": 1}}\')'
        )
        claim = "select task_id, lease_token from claim_tasks(array['q'], 'test', 1)"
        main = await (await caller.execute(claim)).fetchone()
        assert main is not None
        await caller.execute("select start_hook(%s, %s, 1, 'hk', '[]', null, null, 'sid')", main)
        await caller.execute("select wait_signal(%s, %s, 2, 'sid', null)", main)
        task = await (await caller.execute(claim)).fetchone()
        pid = (await (await hook.execute("select pg_backend_pid()")).fetchone() or [0])[0]

        await caller.execute("begin")
        await caller.execute("select from tasks where id = %s for update", main[:1])
        failing = asyncio.create_task(
            hook.execute('select fail_task(%s, %s, \'{"message": "broken"}\')', task)
        )
        await until_lock_wait(caller, pid)  # the hook's fail_task waits for the task lock
        await caller.execute("select suspend_task(%s, %s)", main)
        await caller.execute("commit")
        outcome = await (await failing).fetchone()
        assert outcome is not None and outcome[0]["status"] == "failed"
        cur = await caller.execute("select seq, status, error ->> 'message' from steps")
        assert await cur.fetchall() == [(1, "completed", None), (2, "failed", "broken")]
        cur = await caller.execute("select thread, state from tasks")
        assert await cur.fetchall() == [("main", "ready")]  # the caller is woken
    finally:
        await caller.close()
        await hook.close()
