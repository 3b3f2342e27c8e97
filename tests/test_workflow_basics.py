"""Issue 2 end to end against the real Postgres: start -> worker -> result (from Python and
from SQL), status and handles, bad input (duplicate id, unknown workflow, non-JSON args),
failed workflows, concurrent migrations, graceful shutdown and concurrent claims."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from helpers import drop_app
from hotmesh import (
    DuplicateJobError,
    FatalError,
    InvalidArgument,
    MaxedError,
    MemFlow,
    RetryPolicy,
    WorkflowNotFound,
    workflow,
)
from hotmesh._install import migrate, migrations
from hotmesh._listener import _done_ids

pytestmark = pytest.mark.timeout(60)


def greet(name: str) -> str:
    return f"Hello, {name}!"


async def hello(name: str) -> dict[str, Any]:
    acts = workflow.proxy_activities(activities=[greet])
    return {"greeting": await acts.greet(name)}


async def test_start_worker_result(mf: MemFlow, db: Any) -> None:
    await mf.worker.create(task_queue="q", workflow=hello)
    handle = await mf.workflow.start(workflow_name="hello", args=["Jane"], task_queue="q")
    assert await handle.result(timeout=20) == {"greeting": "Hello, Jane!"}
    assert await handle.status() == "completed"
    status, result, entity, attempt = db.rows(
        "select status, result, entity, attempt from jobs where id = %s", handle.workflow_id
    )[0]
    assert (status, result, entity, attempt) == (
        "completed",
        {"greeting": "Hello, Jane!"},
        "hello",
        1,
    )
    # one inline step recorded; the queue is empty once the workflow finished
    assert db.rows(
        "select seq, kind, name, status, output from steps where job_id = %s", handle.workflow_id
    ) == [(1, "activity", "greet", "completed", "Hello, Jane!")]
    assert db.one("select count(*) from tasks") == 0


async def test_start_from_sql_then_python_worker(mf: MemFlow, dsn: str, app: str) -> None:
    # An outside application on a plain connection (search_path untouched) starts the workflow;
    # the functions are pinned to their schema, so the qualified name is all it needs.
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = sql.SQL("select {}.start_workflow(%s, %s::jsonb, %s, %s)").format(
            sql.Identifier(app)
        )
        row = conn.execute(query, ("hello", '["SQL"]', "q", "from-sql-1")).fetchone()
    assert row == ("from-sql-1",)
    handle = mf.workflow.get_handle("from-sql-1")
    assert await handle.status() == "pending"  # nobody serves the queue yet
    await mf.worker.create(task_queue="q", workflow=hello)
    assert await handle.result(timeout=20) == {"greeting": "Hello, SQL!"}
    assert await handle.status() == "completed"


async def test_generated_id_and_get_handle(mf: MemFlow) -> None:
    first = await mf.workflow.start(workflow_name="hello", args=["A"], task_queue="q")
    second = await mf.workflow.start(workflow_name="hello", args=["B"], task_queue="q")
    assert first.workflow_id != second.workflow_id
    assert first.workflow_id.startswith("H")
    await mf.worker.create(task_queue="q", workflow=hello)
    again = mf.workflow.get_handle(second.workflow_id)
    assert await again.result(timeout=20) == {"greeting": "Hello, B!"}
    assert await first.result(timeout=20) == {"greeting": "Hello, A!"}


async def test_status_of_unknown_workflow(mf: MemFlow) -> None:
    handle = mf.workflow.get_handle("no-such-workflow")
    with pytest.raises(WorkflowNotFound, match="no-such-workflow") as caught:
        await handle.status()
    assert caught.value.sqlstate == "HM002"
    with pytest.raises(WorkflowNotFound, match="no-such-workflow"):
        await handle.result(timeout=5)


async def test_duplicate_id_is_refused_and_changes_nothing(mf: MemFlow, db: Any) -> None:
    await mf.workflow.start(workflow_name="hello", args=["one"], task_queue="q", workflow_id="dup")
    before = db.rows("select * from jobs order by id"), db.rows("select * from tasks order by id")
    with pytest.raises(DuplicateJobError, match='"dup"') as caught:
        await mf.workflow.start(
            workflow_name="other", args=["two"], task_queue="q2", workflow_id="dup"
        )
    assert caught.value.sqlstate == "HM001"
    after = db.rows("select * from jobs order by id"), db.rows("select * from tasks order by id")
    assert after == before
    # from SQL the same: SQLSTATE HM001 and nothing changed
    with pytest.raises(psycopg.Error) as raw:
        db.one("select start_workflow('hello', '[]', 'q', 'dup')")
    assert raw.value.sqlstate == "HM001"
    assert (
        db.rows("select * from jobs order by id"),
        db.rows("select * from tasks order by id"),
    ) == before

    # a finished workflow still holds its id while it is retained ...
    await mf.worker.create(task_queue="q", workflow=hello)
    assert await mf.workflow.get_handle("dup").result(timeout=20) == {"greeting": "Hello, one!"}
    with pytest.raises(DuplicateJobError, match="completed"):
        await mf.workflow.start(
            workflow_name="hello", args=["x"], task_queue="q", workflow_id="dup"
        )
    # ... and gives it back once its retention ran out (expire=0)
    handle = await mf.workflow.start(
        workflow_name="hello", args=["a"], task_queue="q", workflow_id="short", expire=0
    )
    await handle.result(timeout=20)
    again = await mf.workflow.start(
        workflow_name="hello", args=["b"], task_queue="q", workflow_id="short"
    )
    assert await again.result(timeout=20) == {"greeting": "Hello, b!"}


async def test_unknown_workflow_fails_naming_it(mf: MemFlow, db: Any) -> None:
    await mf.worker.create(task_queue="q", workflow=hello)
    handle = await mf.workflow.start(
        workflow_name="no_such_flow",
        task_queue="q",
        retry_policy=RetryPolicy(maximum_attempts=1),
    )
    with pytest.raises(MaxedError, match="no_such_flow") as caught:
        await handle.result(timeout=20)
    error = caught.value
    assert error.type == "UnknownWorkflow"
    assert '"q"' in error.message and "hello" in error.message  # the queue and what it serves
    assert await handle.status() == "failed"
    assert db.one("select count(*) from tasks where job_id = %s", handle.workflow_id) == 0


async def test_non_json_args_are_refused(mf: MemFlow, db: Any) -> None:
    with pytest.raises(InvalidArgument, match="not JSON-serialisable") as caught:
        await mf.workflow.start(workflow_name="hello", args=[object()], task_queue="q")
    assert caught.value.sqlstate == "22023"
    with pytest.raises(InvalidArgument, match="not JSON-serialisable"):
        await mf.workflow.start(workflow_name="hello", args=[float("nan")], task_queue="q")
    with pytest.raises(InvalidArgument, match="NUL"):
        await mf.workflow.start(workflow_name="hello", args=["a\x00b"], task_queue="q")
    # from SQL: text that is not JSON, and JSON that is not an array of arguments
    with pytest.raises(psycopg.Error) as raw:
        db.one("select start_workflow('hello', %s::jsonb, 'q')", "{not json")
    assert raw.value.sqlstate == "22P02"
    with pytest.raises(psycopg.Error, match="must be a JSON array") as raw:
        db.one("select start_workflow('hello', %s, 'q')", Jsonb({"name": "x"}))
    assert raw.value.sqlstate == "22023"
    assert db.one("select count(*) from jobs") == 0
    assert db.one("select count(*) from tasks") == 0


async def test_failed_workflow_raises_stored_error(mf: MemFlow, db: Any) -> None:
    async def fatal_flow() -> None:
        raise FatalError("cannot go on", type="Policy")

    async def buggy_flow() -> None:
        raise ValueError("bad value 42")

    await mf.worker.create(task_queue="q", workflow=[fatal_flow, buggy_flow])
    fatal = await mf.workflow.start(workflow_name="fatal_flow", task_queue="q")
    with pytest.raises(FatalError, match="cannot go on") as caught:
        await fatal.result(timeout=20)
    assert caught.value.code == 598
    assert caught.value.type == "Policy"
    stored = db.one("select error from jobs where id = %s", fatal.workflow_id)
    assert stored["code"] == 598 and stored["message"] == "cannot go on"
    assert caught.value.details == stored

    buggy = await mf.workflow.start(
        workflow_name="buggy_flow", task_queue="q", retry_policy={"maximum_attempts": 1}
    )
    with pytest.raises(MaxedError, match="bad value 42") as maxed:
        await buggy.result(timeout=20)
    assert maxed.value.code == 597
    assert maxed.value.type == "ValueError"
    assert "ValueError" in maxed.value.details["stack"]
    assert await buggy.status() == "failed"


async def test_wrong_number_of_args_fails_the_workflow(mf: MemFlow, db: Any) -> None:
    # regression: the call failed before the workflow's task existed and crashed the runner,
    # so the job was retried at every lease expiry, forever, instead of failing
    await mf.worker.create(task_queue="q", workflow=hello)
    handle = await mf.workflow.start(
        workflow_name="hello", args=["a", "b"], task_queue="q", retry_policy={"maximum_attempts": 1}
    )
    with pytest.raises(MaxedError, match="positional argument") as caught:
        await handle.result(timeout=20)
    assert caught.value.type == "TypeError"
    assert await handle.status() == "failed"


async def test_non_serialisable_workflow_result_fails_it(mf: MemFlow) -> None:
    async def odd_result() -> Any:
        return {"at": object()}

    await mf.worker.create(task_queue="q", workflow=odd_result)
    handle = await mf.workflow.start(workflow_name="odd_result", task_queue="q")
    with pytest.raises(FatalError, match="result of workflow odd_result is not JSON") as caught:
        await handle.result(timeout=20)
    assert caught.value.type == "SerializationError"
    assert await handle.status() == "failed"


async def test_start_needs_a_task_queue(mf: MemFlow, db: Any) -> None:
    with pytest.raises(InvalidArgument, match="task_queue") as caught:
        await mf.workflow.start(workflow_name="hello", args=["x"])
    assert caught.value.sqlstate == "22023"
    with pytest.raises(InvalidArgument, match="workflow_name is required"):
        await mf.workflow.start(workflow_name="", task_queue="q")
    assert db.one("select count(*) from jobs") == 0


async def test_concurrent_migrations_all_succeed(dsn: str) -> None:
    app_id = "t_mig_" + uuid.uuid4().hex[:10]
    other = "t_mig_" + uuid.uuid4().hex[:10]
    script = (
        "import asyncio, sys; from hotmesh._install import migrate, migrations; "
        "print(asyncio.run(migrate(sys.argv[1], sys.argv[2])))"
    )
    try:
        results = await asyncio.gather(*(migrate(dsn, app_id) for _ in range(4)))
        versions = [version for version, _ in migrations()]
        assert versions and versions[0] == 1
        assert sorted(results) == [[], [], [], versions]  # exactly one applied them all

        # two processes racing on another fresh app
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                script,
                dsn,
                other,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        outputs = [await proc.communicate() for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], outputs
        assert sorted(out.decode().strip() for out, _ in outputs) == [str(versions), "[]"]

        with psycopg.connect(dsn, autocommit=True) as conn:
            for schema in (app_id, other):
                applied = conn.execute(
                    sql.SQL("select version from {}.schema_migrations order by 1").format(
                        sql.Identifier(schema)
                    )
                ).fetchall()
                assert [row[0] for row in applied] == versions
                started = conn.execute(
                    sql.SQL("select {}.start_workflow('w', '[]', 'q', 'one')").format(
                        sql.Identifier(schema)
                    )
                ).fetchone()
                assert started == ("one",)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for schema in (app_id, other):
                drop_app(conn, schema)


async def test_invalid_app_id_is_refused(dsn: str) -> None:
    for bad in ("Bad-App", "1app", "", "a" * 64, 'x"; drop schema public; --'):
        with pytest.raises(InvalidArgument, match="invalid app id"):
            await migrate(dsn, bad)
        with pytest.raises(InvalidArgument, match="invalid app id"):
            await MemFlow.init(app_id=bad, dsn=dsn)


async def test_shutdown_mid_activity_releases_the_lease(
    mf: MemFlow, app: str, dsn: str, db: Any
) -> None:
    runs: list[int] = []
    started = asyncio.Event()

    async def slow_step() -> str:
        runs.append(len(runs) + 1)
        if len(runs) == 1:
            started.set()
            await asyncio.sleep(3600)  # the first run never finishes on its own
        return f"done on run {len(runs)}"

    async def patient() -> str:
        acts = workflow.proxy_activities(activities=[slow_step])
        return str(await acts.slow_step())

    worker = await mf.worker.create(task_queue="q", workflow=patient, lease=30.0)
    handle = await mf.workflow.start(workflow_name="patient", task_queue="q")
    async with asyncio.timeout(20):
        await started.wait()
    state, owner = db.rows("select state, lease_owner from tasks")[0]
    assert (state, owner) == ("leased", worker.worker_id)

    await worker.stop(grace=0.2)
    # the lease was given back at once, not left to expire (the lease is 30 s)
    assert db.rows("select state, lease_owner, lease_token, attempt from tasks") == [
        ("ready", None, None, 0)
    ]
    assert db.one("select count(*) from steps") == 0

    other = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    try:
        await other.worker.create(task_queue="q", workflow=patient)
        assert await handle.result(timeout=20) == "done on run 2"
    finally:
        await other.close(grace=1.0)
    assert runs == [1, 2]
    assert db.one("select count(*) from tasks") == 0


async def test_stop_lets_in_flight_work_finish_inline(mf: MemFlow, db: Any) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    async def first_step() -> str:
        started.set()
        await release.wait()
        return "first"

    def second_step() -> str:
        return "second"

    async def two_steps() -> list[str]:
        acts = workflow.proxy_activities(activities=[first_step, second_step])
        return [await acts.first_step(), await acts.second_step()]

    worker = await mf.worker.create(task_queue="q", workflow=two_steps)
    handle = await mf.workflow.start(workflow_name="two_steps", task_queue="q")
    async with asyncio.timeout(20):
        await started.wait()
    stopping = asyncio.create_task(worker.stop(grace=20))
    await asyncio.sleep(0)  # the stop has begun: no new claims
    release.set()
    await stopping
    # the in-flight activation finished within the grace period, its second activity inline
    # too (not turned into a task on the queue for some other worker)
    assert await handle.status() == "completed"
    assert await handle.result() == ["first", "second"]
    assert db.one("select count(*) from tasks") == 0


async def test_stop_during_a_claim_leaves_nothing_leased(
    mf: MemFlow, app: str, dsn: str, db: Any
) -> None:
    claimed, gate = asyncio.Event(), asyncio.Event()
    real = mf._db.claim_tasks

    async def slow_answer(*args: Any) -> Any:
        tasks = await real(*args)
        if tasks:
            claimed.set()
            await gate.wait()  # committed in Postgres; the answer is still on its way
        return tasks

    mf._db.claim_tasks = slow_answer  # type: ignore[method-assign]
    worker = await mf.worker.create(task_queue="q", workflow=hello)
    handle = await mf.workflow.start(workflow_name="hello", args=["late"], task_queue="q")
    async with asyncio.timeout(20):
        await claimed.wait()
    stopping = asyncio.create_task(worker.stop(grace=20))
    await asyncio.sleep(0)  # the stop has begun while the claim is in flight
    gate.set()
    await stopping
    # what the claim took was run or given back: nothing stays leased by a stopped worker
    assert db.one("select count(*) from tasks where state = 'leased'") == 0
    other = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    try:
        await other.worker.create(task_queue="q", workflow=hello)
        assert await handle.result(timeout=20) == {"greeting": "Hello, late!"}
    finally:
        await other.close(grace=1.0)


async def test_two_sessions_claiming_at_once_never_share_a_task(
    dsn: str, app: str, db: Any
) -> None:
    total = 300
    db.one(
        "select count(start_workflow('w', '[]', 'q', 'job-' || i)) from generate_series(1, %s) i",
        total,
    )
    claim = sql.SQL("select task_id from {}.claim_tasks(array['q'], %s, %s, interval '1 minute')")
    query = claim.format(sql.Identifier(app))
    conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(2)]

    async def session(conn: psycopg.AsyncConnection[Any], name: str, batch: int) -> list[int]:
        got: list[int] = []
        while True:
            cur = await conn.execute(query, (name, batch))
            rows = await cur.fetchall()
            if not rows:
                return got
            got.extend(row[0] for row in rows)

    try:
        first, second = await asyncio.gather(
            session(conns[0], "one", 7), session(conns[1], "two", 5)
        )
    finally:
        for conn in conns:
            await conn.close()
    assert first and second, "both sessions should have claimed something"
    assert set(first).isdisjoint(second)
    assert len(first) + len(second) == total
    assert sorted(first + second) == [row[0] for row in db.rows("select id from tasks order by id")]
    assert db.one("select count(*) from tasks where state = 'leased'") == total
    owners = dict(db.rows("select lease_owner, count(*) from tasks group by 1"))
    assert owners == {"one": len(first), "two": len(second)}


async def test_many_workflows_concurrently(mf: MemFlow) -> None:
    await mf.worker.create(task_queue="q", workflow=hello, concurrency=4)
    handles = [
        await mf.workflow.start(workflow_name="hello", args=[f"n{i}"], task_queue="q")
        for i in range(20)
    ]
    results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
    assert results == [{"greeting": f"Hello, n{i}!"} for i in range(20)]


async def test_dsn_defaults_to_database_url(app: str, db: Any) -> None:
    client = await MemFlow.init(app_id=app, migrate=False)  # DATABASE_URL, set for the tests
    try:
        await client.worker.create(task_queue="q", workflow=hello)
        handle = await client.workflow.start(workflow_name="hello", args=["env"], task_queue="q")
        assert await handle.result(timeout=20) == {"greeting": "Hello, env!"}
    finally:
        await client.close(grace=1.0)
    assert db.one("select status from jobs where id = %s", handle.workflow_id) == "completed"


async def test_a_batch_of_completions_sends_few_done_notifications(
    dsn: str, app: str, db: Any
) -> None:
    """complete_tasks ends a batch of workflows with a handful of 'd:' payloads (JSON arrays
    of ids, each under Postgres' 8,000-byte limit), not one notification per workflow."""
    ids = [f"done-{i}-" + "x" * 200 for i in range(120)]  # long ids: several payloads
    db.one("select count(start_workflow('w', '[]', 'q', id)) from unnest(%s::text[]) id", ids)
    claimed = db.rows("select task_id, lease_token from claim_tasks(array['q'], 'w', 200)")
    items = [{"task_id": t, "token": str(k), "result": i} for i, (t, k) in enumerate(claimed)]
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener:
        await listener.execute(sql.SQL("listen {}").format(sql.Identifier(app)))
        assert db.one("select complete_tasks(%s)", Jsonb(items)) == [None] * len(items)
        payloads = [n.payload async for n in listener.notifies(timeout=1.0)]
    done = [p for p in payloads if p.startswith("d:")]
    assert 2 <= len(done) <= 6
    assert all(len(p.encode()) < 8000 for p in done)
    assert sorted(i for p in done for i in json.loads(p[2:])) == sorted(ids)
    assert db.one("select count(*) from jobs where status = 'completed'") == len(ids)
    assert db.one("select count(*) from tasks") == 0


def test_done_payloads_of_both_forms_are_read() -> None:
    """The listener reads a batch ('d:' + JSON array) and a bare id (engines before batching),
    so a client never waits for a notification it cannot read."""
    assert _done_ids('["a", "b,c", "[x]"]') == ["a", "b,c", "[x]"]
    assert _done_ids("plain-id") == ["plain-id"]
    assert _done_ids("[not json") == ["[not json"]
