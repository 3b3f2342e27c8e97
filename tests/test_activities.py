"""Activities end to end: inline (sync and async) and remote, retries with exact run counts,
non-retryable and exhausted failures (598 / 597), workflow-level retries, bad results and
names, activity.info() and activity.heartbeat()."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql

from hotmesh import (
    FatalError,
    HotMeshError,
    MaxedError,
    MemFlow,
    RetryPolicy,
    WorkflowError,
    activity,
    workflow,
)

pytestmark = pytest.mark.timeout(60)

FAST = RetryPolicy(maximum_attempts=3, initial_interval=0.05, backoff_coefficient=1.0)


def steps_of(db: Any, job_id: str) -> list[tuple[Any, ...]]:
    return db.rows(
        "select seq, kind, name, status, attempt from steps where job_id = %s order by seq", job_id
    )


async def test_inline_activities_sync_and_async(mf: MemFlow, db: Any) -> None:
    def add(a: int, b: int) -> dict[str, Any]:
        info = activity.info()
        return {
            "sum": a + b,
            "inline": info.inline,
            "thread": threading.current_thread().name,
            "attempt": info.attempt,
            "workflow_id": info.workflow_id,
        }

    async def shout(text: str) -> dict[str, Any]:
        info = activity.info()
        return {
            "text": text.upper(),
            "inline": info.inline,
            "name": info.activity_name,
            "queue": info.task_queue,
        }

    async def both() -> list[Any]:
        acts = workflow.proxy_activities(activities=[add, shout])
        return [await acts.add(2, 3), await acts.shout("hi")]

    await mf.worker.create(task_queue="q", workflow=both)
    handle = await mf.workflow.start(workflow_name="both", task_queue="q", workflow_id="inl")
    first, second = await handle.result(timeout=20)
    assert first["sum"] == 5 and first["inline"] is True and first["attempt"] == 1
    assert first["workflow_id"] == "inl"
    assert first["thread"] != threading.main_thread().name  # a `def` runs in a thread
    assert second == {"text": "HI", "inline": True, "name": "shout", "queue": "q"}
    assert steps_of(db, "inl") == [
        (1, "activity", "add", "completed", 1),
        (2, "activity", "shout", "completed", 1),
    ]


async def test_remote_activity_on_another_queue(mf: MemFlow, remote: MemFlow, db: Any) -> None:
    def lookup(key: str) -> dict[str, Any]:
        info = activity.info()
        return {
            "key": key,
            "inline": info.inline,
            "queue": info.task_queue,
            "attempt": info.attempt,
            "workflow_id": info.workflow_id,
        }

    async def asks() -> Any:
        acts = workflow.proxy_activities(task_queue="elsewhere")
        return await acts.lookup("k1")

    await remote.worker.register_activities(task_queue="elsewhere", activities=[lookup])
    await mf.worker.create(task_queue="q", workflow=asks)
    handle = await mf.workflow.start(workflow_name="asks", task_queue="q", workflow_id="rem")
    assert await handle.result(timeout=20) == {
        "key": "k1",
        "inline": False,
        "queue": "elsewhere",
        "attempt": 1,
        "workflow_id": "rem",
    }
    assert steps_of(db, "rem") == [(1, "activity", "lookup", "completed", 1)]
    assert db.one("select count(*) from tasks") == 0


async def test_remote_calls_go_with_the_suspension_a_bad_one_fails_alone(
    mf: MemFlow, remote: MemFlow, db: Any
) -> None:
    """An activation's remote calls are sent with its suspension (suspend_tasks); when the
    engine refuses one (a task queue name too long), nothing of that batch is kept and the
    activation runs again sending each call alone: only the bad call fails, where it was made."""

    def lookup(key: str) -> str:
        return key.upper()

    async def fans() -> Any:
        good = workflow.proxy_activities(task_queue="elsewhere")
        bad = workflow.proxy_activities(task_queue="x" * 300)
        first = asyncio.ensure_future(good.lookup("a"))
        try:
            await bad.lookup("b")
        except HotMeshError as error:
            refused = type(error).__name__
        return [await first, await good.lookup("c"), refused]

    await remote.worker.register_activities(task_queue="elsewhere", activities=[lookup])
    await mf.worker.create(task_queue="q", workflow=fans)
    handle = await mf.workflow.start(workflow_name="fans", task_queue="q", workflow_id="fans")
    assert await handle.result(timeout=20) == ["A", "C", "InvalidArgument"]
    # Step 2 (the refused call) was never recorded; 1 and 3 went through the queue.
    assert steps_of(db, "fans") == [
        (1, "activity", "lookup", "completed", 1),
        (3, "activity", "lookup", "completed", 1),
    ]


async def test_many_remote_activity_workflows_none_stuck(
    mf: MemFlow, remote: MemFlow, db: Any
) -> None:
    # A remote activity that completes while its workflow's activation is suspending must
    # still wake the workflow (regression: suspend_task once lost that wake-up now and then).
    def echo(value: int) -> int:
        return value

    async def ask_echo(value: int) -> Any:
        return await workflow.proxy_activities(task_queue="acts").echo(value)

    await remote.worker.register_activities(task_queue="acts", activities=[echo])
    await mf.worker.create(task_queue="q", workflow=ask_echo, concurrency=8)
    handles = [
        await mf.workflow.start(workflow_name="ask_echo", args=[i], task_queue="q")
        for i in range(300)
    ]
    results = await asyncio.gather(*(h.result(timeout=30) for h in handles))
    assert results == list(range(300))
    assert db.rows("select status, count(*) from jobs group by 1") == [("completed", 300)]


async def test_registered_here_but_queue_served_elsewhere_goes_remote(
    mf: MemFlow, remote: MemFlow
) -> None:
    where: list[str] = []

    def ping() -> bool:
        where.append("inline" if activity.info().inline else "remote")
        return True

    async def pinger() -> Any:
        # registered in this process, but this process does not serve "other": not inline
        acts = workflow.proxy_activities(activities=[ping], task_queue="other")
        return await acts.ping()

    await remote.worker.register_activities(task_queue="other", activities=[ping])
    await mf.worker.create(task_queue="q", workflow=pinger)
    handle = await mf.workflow.start(workflow_name="pinger", task_queue="q")
    assert await handle.result(timeout=20) is True
    assert where == ["remote"]


@pytest.mark.parametrize("where", ["inline", "remote"])
async def test_fails_twice_then_succeeds(mf: MemFlow, remote: MemFlow, db: Any, where: str) -> None:
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(activity.info().attempt)
        if len(attempts) < 3:
            raise ConnectionError(f"flaky failure {len(attempts)}")
        return f"ok after {len(attempts)} runs"

    queue = "q" if where == "inline" else "acts"

    async def retrying() -> Any:
        acts = workflow.proxy_activities(
            activities=[flaky] if where == "inline" else None, task_queue=queue, retry_policy=FAST
        )
        return await acts.flaky()

    if where == "remote":
        await remote.worker.register_activities(task_queue="acts", activities=[flaky])
    await mf.worker.create(task_queue="q", workflow=retrying)
    handle = await mf.workflow.start(workflow_name="retrying", task_queue="q", workflow_id="fl")
    assert await handle.result(timeout=20) == "ok after 3 runs"
    assert attempts == [1, 2, 3]
    assert steps_of(db, "fl") == [(1, "activity", "flaky", "completed", 3)]


async def test_retry_moves_from_inline_to_remote(mf: MemFlow, remote: MemFlow, db: Any) -> None:
    # The first attempt runs inline on a worker that serves the activity's queue; the retry
    # is due on a worker that does not: it goes through the queue, counting attempts on
    # (regression: the retry used to be asked for again and again, never run).
    attempts: list[tuple[int, bool]] = []

    def flaky() -> str:
        info = activity.info()
        attempts.append((info.attempt, info.inline))
        if len(attempts) < 2:
            raise ConnectionError("first run fails")
        return "ok"

    async def routed() -> str:
        acts = workflow.proxy_activities(
            activities=[flaky], task_queue="aq", retry_policy=RetryPolicy(initial_interval=1.0)
        )
        return str(await acts.flaky())

    await mf.worker.register_activities(task_queue="aq", activities=[flaky])
    wq = await mf.worker.create(task_queue="wq", workflow=routed)
    handle = await mf.workflow.start(workflow_name="routed", task_queue="wq", workflow_id="sw")
    async with asyncio.timeout(20):
        while db.one("select status from steps where job_id = 'sw'") != "retrying":  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    await wq.stop(grace=5)  # this process keeps serving "aq" only
    await remote.worker.create(task_queue="wq", workflow=routed)
    assert await handle.result(timeout=20) == "ok"
    assert attempts == [(1, True), (2, False)]
    assert steps_of(db, "sw") == [(1, "activity", "flaky", "completed", 2)]


@pytest.mark.parametrize("where", ["inline", "remote"])
async def test_non_retryable_failures_run_once(
    mf: MemFlow, remote: MemFlow, db: Any, where: str
) -> None:
    runs: list[str] = []

    def fatal() -> None:
        runs.append("fatal")
        raise FatalError("stop right there", type="Refused")

    def missing_key() -> None:
        runs.append("missing_key")
        raise KeyError("nope")

    queue = "q" if where == "inline" else "acts"
    policy = RetryPolicy(
        maximum_attempts=5, initial_interval=0.05, non_retryable_errors=["KeyError"]
    )

    async def careful() -> list[Any]:
        acts = workflow.proxy_activities(
            activities=[fatal, missing_key] if where == "inline" else None,
            task_queue=queue,
            retry_policy=policy,
        )
        caught = []
        for call in (acts.fatal, acts.missing_key):
            try:
                await call()
            except FatalError as error:
                caught.append([error.code, error.type, error.message])
        return caught

    if where == "remote":
        await remote.worker.register_activities(task_queue="acts", activities=[fatal, missing_key])
    await mf.worker.create(task_queue="q", workflow=careful)
    handle = await mf.workflow.start(workflow_name="careful", task_queue="q", workflow_id="nr")
    assert await handle.result(timeout=20) == [
        [598, "Refused", "stop right there"],
        [598, "KeyError", "'nope'"],
    ]
    assert runs == ["fatal", "missing_key"]
    assert steps_of(db, "nr") == [
        (1, "activity", "fatal", "failed", 1),
        (2, "activity", "missing_key", "failed", 1),
    ]


@pytest.mark.parametrize("where", ["inline", "remote"])
async def test_exhausted_retries_caught_in_the_workflow(
    mf: MemFlow, remote: MemFlow, db: Any, where: str
) -> None:
    runs: list[int] = []

    def broken() -> None:
        runs.append(activity.info().attempt)
        raise RuntimeError(f"still broken (run {len(runs)})")

    queue = "q" if where == "inline" else "acts"
    policy = RetryPolicy(maximum_attempts=2, initial_interval=0.05)

    async def tolerant() -> dict[str, Any]:
        acts = workflow.proxy_activities(
            activities=[broken] if where == "inline" else None,
            task_queue=queue,
            retry_policy=policy,
        )
        try:
            await acts.broken()
        except MaxedError as error:
            return {
                "code": error.code,
                "type": error.type,
                "message": error.message,
                "attempts": error.details.get("attempts"),
            }
        return {"code": None}

    if where == "remote":
        await remote.worker.register_activities(task_queue="acts", activities=[broken])
    await mf.worker.create(task_queue="q", workflow=tolerant)
    handle = await mf.workflow.start(workflow_name="tolerant", task_queue="q", workflow_id="ex")
    assert await handle.result(timeout=20) == {
        "code": 597,
        "type": "RuntimeError",
        "message": "still broken (run 2)",
        "attempts": 2,
    }
    assert runs == [1, 2]
    assert await handle.status() == "completed"
    assert steps_of(db, "ex") == [(1, "activity", "broken", "failed", 2)]


async def test_exhausted_retries_uncaught_fail_the_workflow(mf: MemFlow, db: Any) -> None:
    runs: list[int] = []

    async def broken() -> None:
        runs.append(activity.info().attempt)
        raise RuntimeError("always broken")

    async def careless() -> None:
        acts = workflow.proxy_activities(
            activities=[broken],
            retry_policy=RetryPolicy(
                maximum_attempts=3, initial_interval=0.05, backoff_coefficient=1
            ),
        )
        await acts.broken()

    await mf.worker.create(task_queue="q", workflow=careless)
    handle = await mf.workflow.start(
        workflow_name="careless", task_queue="q", retry_policy={"maximum_attempts": 1}
    )
    with pytest.raises(MaxedError, match="always broken") as caught:
        await handle.result(timeout=20)
    assert caught.value.code == 597
    assert runs == [1, 2, 3]
    assert await handle.status() == "failed"
    assert db.one("select error ->> 'code' from jobs where id = %s", handle.workflow_id) == "597"


async def test_workflow_level_retry_reruns_the_body_then_fails(mf: MemFlow, db: Any) -> None:
    attempts: list[int] = []

    async def shaky() -> None:
        attempts.append(workflow.get_context().attempt)
        raise LookupError(f"body failed on attempt {len(attempts)}")

    await mf.worker.create(task_queue="q", workflow=shaky)
    handle = await mf.workflow.start(
        workflow_name="shaky",
        task_queue="q",
        retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=0.05, backoff_coefficient=2),
    )
    with pytest.raises(MaxedError, match="body failed on attempt 3") as caught:
        await handle.result(timeout=20)
    assert caught.value.code == 597
    assert caught.value.type == "LookupError"
    assert attempts == [1, 2, 3]
    assert db.rows("select status, attempt from jobs") == [("failed", 3)]


async def test_workflow_level_retry_can_succeed(mf: MemFlow) -> None:
    attempts: list[int] = []

    async def second_time_lucky() -> int:
        attempt = workflow.get_context().attempt
        attempts.append(attempt)
        if attempt < 2:
            raise RuntimeError("not yet")
        return attempt

    await mf.worker.create(task_queue="q", workflow=second_time_lucky)
    handle = await mf.workflow.start(
        workflow_name="second_time_lucky",
        task_queue="q",
        retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=0.05),
    )
    assert await handle.result(timeout=20) == 2
    assert attempts == [1, 2]


@pytest.mark.parametrize("where", ["inline", "remote"])
async def test_non_serialisable_result_fails_the_step(
    mf: MemFlow, remote: MemFlow, db: Any, where: str
) -> None:
    runs: list[int] = []

    def odd() -> Any:
        runs.append(1)
        return {"when": object()}

    queue = "q" if where == "inline" else "acts"

    async def receiver() -> list[Any]:
        acts = workflow.proxy_activities(
            activities=[odd] if where == "inline" else None, task_queue=queue
        )
        try:
            await acts.odd()
        except FatalError as error:
            return [error.code, error.type, error.message]
        return []

    if where == "remote":
        await remote.worker.register_activities(task_queue="acts", activities=[odd])
    await mf.worker.create(task_queue="q", workflow=receiver)
    handle = await mf.workflow.start(workflow_name="receiver", task_queue="q", workflow_id="ns")
    code, kind, message = await handle.result(timeout=20)
    assert (code, kind) == (598, "SerializationError")
    assert "the result of" in message and "odd" in message and "not JSON-serialisable" in message
    assert runs == [1]  # not retried: retrying cannot make it serialisable
    assert steps_of(db, "ns") == [(1, "activity", "odd", "failed", 1)]


async def test_non_serialisable_argument_fails_at_the_call(mf: MemFlow, db: Any) -> None:
    runs: list[Any] = []

    def store(value: Any) -> Any:
        runs.append(value)
        return value

    async def sender() -> list[Any]:
        acts = workflow.proxy_activities(activities=[store])
        out: list[Any] = []
        try:
            await acts.store({1, 2})
        except FatalError as error:
            out.append([error.code, error.type, "arguments of activity store" in error.message])
        out.append(await acts.store("fine"))
        return out

    await mf.worker.create(task_queue="q", workflow=sender)
    handle = await mf.workflow.start(workflow_name="sender", task_queue="q", workflow_id="na")
    assert await handle.result(timeout=20) == [[598, "SerializationError", True], "fine"]
    assert runs == ["fine"]
    # the refused call took step 1 without recording it; the next call is step 2
    assert steps_of(db, "na") == [(2, "activity", "store", "completed", 1)]


async def test_non_serialisable_activity_result_uncaught(mf: MemFlow) -> None:
    def odd() -> Any:
        return object()

    async def fragile() -> Any:
        acts = workflow.proxy_activities(activities=[odd])
        return await acts.odd()

    await mf.worker.create(task_queue="q", workflow=fragile)
    handle = await mf.workflow.start(workflow_name="fragile", task_queue="q")
    with pytest.raises(FatalError, match="not JSON-serialisable") as caught:
        await handle.result(timeout=20)
    assert caught.value.code == 598
    assert await handle.status() == "failed"


async def test_unknown_activity_on_remote_queue(mf: MemFlow, remote: MemFlow, db: Any) -> None:
    def known() -> str:
        return "known"

    async def confused() -> Any:
        acts = workflow.proxy_activities(task_queue="acts")
        return await acts.no_such_activity(1)

    await remote.worker.register_activities(task_queue="acts", activities=[known])
    await mf.worker.create(task_queue="q", workflow=confused)
    handle = await mf.workflow.start(workflow_name="confused", task_queue="q", workflow_id="ua")
    with pytest.raises(WorkflowError, match="no_such_activity") as caught:
        await handle.result(timeout=20)
    error = caught.value
    assert error.type == "UnknownActivity"
    assert '"acts"' in error.message and "known" in error.message
    assert error.code == 598
    assert steps_of(db, "ua") == [(1, "activity", "no_such_activity", "failed", 1)]


async def test_proxy_with_activities_refuses_other_names(mf: MemFlow) -> None:
    def known() -> str:
        return "known"

    async def typo() -> Any:
        acts = workflow.proxy_activities(activities=[known])
        return await acts.knwon()

    await mf.worker.create(task_queue="q", workflow=typo)
    handle = await mf.workflow.start(
        workflow_name="typo", task_queue="q", retry_policy={"maximum_attempts": 1}
    )
    with pytest.raises(MaxedError, match="knwon") as caught:
        await handle.result(timeout=20)
    assert "known" in caught.value.message


async def test_heartbeat_extends_the_lease(
    mf: MemFlow, remote: MemFlow, dsn: str, app: str
) -> None:
    def beating() -> float:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("set search_path = {}").format(sql.Identifier(app)))

            def lease() -> Any:
                row = conn.execute("select lease_expires_at from tasks where kind = 'activity'")
                return row.fetchone()[0]  # type: ignore[index]

            before = lease()
            activity.heartbeat()
            deadline = time.monotonic() + 10
            while lease() <= before and time.monotonic() < deadline:
                time.sleep(0.02)
            return float((lease() - before).total_seconds())

    async def long_haul() -> Any:
        acts = workflow.proxy_activities(task_queue="acts")
        return await acts.beating()

    # A 60 s lease: the worker's own heartbeat loop would not renew it for 20 s, so only the
    # activity's heartbeat can move lease_expires_at within this test.
    await remote.worker.register_activities(task_queue="acts", activities=[beating], lease=60.0)
    await mf.worker.create(task_queue="q", workflow=long_haul)
    handle = await mf.workflow.start(workflow_name="long_haul", task_queue="q")
    assert await handle.result(timeout=30) > 0


async def test_heartbeat_keeps_a_remote_activity_past_its_lease(
    mf: MemFlow, remote: MemFlow, app: str, dsn: str, db: Any
) -> None:
    runs: list[int] = []

    async def marathon() -> int:
        runs.append(activity.info().attempt)
        for _ in range(25):  # 2.5 s: well past the 1 s lease
            activity.heartbeat()
            await asyncio.sleep(0.1)
        return len(runs)

    async def waits_long() -> Any:
        acts = workflow.proxy_activities(task_queue="acts")
        return await acts.marathon()

    # two workers serve the activity queue with a 1 s lease: a lapsed lease would be claimed
    # by the other one and the activity would run twice
    spare = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    try:
        await remote.worker.register_activities(task_queue="acts", activities=[marathon], lease=1.0)
        await spare.worker.register_activities(task_queue="acts", activities=[marathon], lease=1.0)
        await mf.worker.create(task_queue="q", workflow=waits_long)
        handle = await mf.workflow.start(workflow_name="waits_long", task_queue="q")
        assert await handle.result(timeout=30) == 1
    finally:
        await spare.close(grace=1.0)
    assert runs == [1]


def test_activity_api_outside_an_activity() -> None:
    with pytest.raises(HotMeshError, match="inside an activity"):
        activity.info()
    with pytest.raises(HotMeshError, match="inside an activity"):
        activity.heartbeat()
