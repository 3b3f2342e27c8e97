"""Timeouts and start options end to end (docs/timeouts.md, docs/python-api.md): a hung
activity that keeps heartbeating is failed by start_to_close and runs again on another worker;
heartbeat_timeout; a workflow's execution_timeout (596) raised in its parent, a hook's in its
caller; and each start option: id_reuse, idempotency_key, debounce, start_at / start_in, search."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest

from helpers import until
from hotmesh import (
    DuplicateJobError,
    InvalidArgument,
    MemFlow,
    RetryPolicy,
    TimeoutFailure,
    activity,
    workflow,
)
from hotmesh.retry import policy_json

pytestmark = pytest.mark.timeout(60)

QUICK = RetryPolicy(maximum_attempts=5, initial_interval=0.1, backoff_coefficient=1.0)


async def patient() -> Any:
    acts = workflow.proxy_activities(task_queue="acts", start_to_close=1, retry_policy=QUICK)
    return await acts.work()


async def test_hung_activity_fails_by_start_to_close_and_runs_on_another_worker(
    mf: MemFlow, remote: MemFlow, app: str, dsn: str, db: Any
) -> None:
    hung: list[int] = []

    async def hang() -> str:  # alive and heartbeating, but never done
        hung.append(activity.info().attempt)
        while True:
            activity.heartbeat()
            await asyncio.sleep(0.05)

    async def finish() -> str:
        return f"finished on attempt {activity.info().attempt}"

    # One slot: the hung run keeps it (its worker notices the lost lease only at its next
    # heartbeat round, 10 s on), so the run after the timeout goes to the other worker.
    await remote.worker.register_activities(
        task_queue="acts", activities={"work": hang}, concurrency=1
    )
    await mf.worker.create(task_queue="q", workflow=patient)
    handle = await mf.workflow.start(workflow_name="patient", task_queue="q")
    await until(lambda: hung, "the hung worker to take attempt 1")
    other = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    try:
        await other.worker.register_activities(task_queue="acts", activities={"work": finish})
        assert await handle.result(timeout=30) == "finished on attempt 2"
    finally:
        await other.close(grace=1.0)
    assert hung == [1]
    assert db.rows(
        "select status, attempt from steps where job_id = %s and kind = 'activity'",
        handle.workflow_id,
    ) == [("completed", 2)]


async def test_activity_that_stops_heartbeating_times_out(mf: MemFlow, remote: MemFlow) -> None:
    async def quiet() -> str:
        activity.heartbeat()
        await asyncio.sleep(3600)  # beats once, then never again
        return "never"

    async def caller() -> Any:
        acts = workflow.proxy_activities(
            task_queue="acts", heartbeat_timeout=0.5, retry_policy={"maximum_attempts": 1}
        )
        try:
            return await acts.quiet()
        except TimeoutFailure as error:
            return [error.code, error.type, error.message]

    await remote.worker.register_activities(task_queue="acts", activities=[quiet])
    await mf.worker.create(task_queue="q", workflow=caller)
    handle = await mf.workflow.start(workflow_name="caller", task_queue="q")
    code, kind, message = await handle.result(timeout=30)
    assert (code, kind) == (596, "TimeoutFailure")
    assert "sent no heartbeat for its heartbeat_timeout" in message


async def test_execution_timeout_fails_the_child_in_its_parent(mf: MemFlow, db: Any) -> None:
    async def forever() -> None:
        await workflow.wait_for("never")

    async def parent() -> Any:
        try:
            await workflow.exec_child(
                workflow_name="forever", task_queue="q", workflow_id="slow-child",
                execution_timeout=0.5,
            )  # fmt: skip
        except TimeoutFailure as error:
            return [error.code, error.message]

    await mf.worker.create(task_queue="q", workflow=[forever, parent])
    handle = await mf.workflow.start(workflow_name="parent", task_queue="q")
    code, message = await handle.result(timeout=30)
    assert code == 596
    assert message == (
        'workflow "slow-child" did not finish within its execution_timeout of 00:00:00.5'
    )
    assert db.one("select status from jobs where id = 'slow-child'") == "failed"


async def test_hook_execution_timeout_ends_the_hook_not_the_workflow(mf: MemFlow, db: Any) -> None:
    async def stuck() -> None:
        await workflow.wait_for("never")

    async def host() -> Any:
        try:
            await workflow.exec_hook(workflow_name="stuck", execution_timeout=0.5)
        except TimeoutFailure as error:
            return [error.code, error.message]

    await mf.worker.create(task_queue="q", workflow=[stuck, host])
    handle = await mf.workflow.start(workflow_name="host", task_queue="q")
    code, message = await handle.result(timeout=30)
    assert code == 596
    assert message == (
        f'hook "stuck" (thread h1 of workflow "{handle.workflow_id}") did not finish within '
        "its execution_timeout of 00:00:00.5"
    )
    assert db.rows("select thread, status from threads where job_id = %s", handle.workflow_id) == [
        ("h1", "failed")
    ]


async def test_hook_from_outside_takes_execution_timeout(mf: MemFlow, db: Any) -> None:
    async def waiter() -> str:
        return str(await workflow.wait_for("go"))

    await mf.worker.create(task_queue="q", workflow=[waiter])
    handle = await mf.workflow.start(workflow_name="waiter", task_queue="q")
    with pytest.raises(InvalidArgument, match="execution_timeout must be a number of seconds"):
        await mf.workflow.hook(
            workflow_id=handle.workflow_id, workflow_name="waiter", execution_timeout=0.0001
        )
    thread = await mf.workflow.hook(
        workflow_id=handle.workflow_id, workflow_name="waiter", execution_timeout="1s"
    )
    await until(
        lambda: db.one(
            "select status from threads where job_id = %s and thread = %s",
            handle.workflow_id, thread,
        ) == "failed",
        "the hook to time out",
    )  # fmt: skip
    await mf.workflow.signal("go", "on", workflow_id=handle.workflow_id)
    assert await handle.result(timeout=30) == "on"


# ------------------------------------------------------------------------- start options


async def test_id_reuse(mf: MemFlow, db: Any) -> None:
    async def echo(value: str) -> str:
        return value

    async def stay() -> None:
        await workflow.wait_for("never")

    await mf.worker.create(task_queue="q", workflow=[echo, stay])
    first = await mf.workflow.start(
        workflow_name="echo", args=["1"], workflow_id="r", task_queue="q"
    )
    assert await first.result(timeout=20) == "1"
    with pytest.raises(DuplicateJobError, match='workflow id "r" is already taken'):
        await mf.workflow.start(workflow_name="echo", args=["2"], workflow_id="r", task_queue="q")
    again = await mf.workflow.start(
        workflow_name="echo", args=["2"], workflow_id="r", task_queue="q", id_reuse="allow_finished"
    )
    assert await again.result(timeout=20) == "2"

    running = await mf.workflow.start(workflow_name="stay", workflow_id="s", task_queue="q")
    await until(lambda: db.one("select status from jobs where id = 's'") == "waiting")
    with pytest.raises(DuplicateJobError):
        await mf.workflow.start(
            workflow_name="echo", args=["3"], workflow_id="s", task_queue="q",
            id_reuse="allow_finished",
        )  # fmt: skip
    replaced = await mf.workflow.start(
        workflow_name="echo", args=["3"], workflow_id="s", task_queue="q", id_reuse="terminate"
    )
    assert replaced.workflow_id == running.workflow_id
    assert await replaced.result(timeout=20) == "3"
    with pytest.raises(InvalidArgument, match="id_reuse must be reject, allow_finished or"):
        await mf.workflow.start(
            workflow_name="echo", workflow_id="t", task_queue="q",
            id_reuse="sometimes",  # type: ignore[arg-type]
        )  # fmt: skip
    assert db.one("select count(*) from jobs where id = 't'") == 0


async def test_idempotency_key_returns_the_existing_run(mf: MemFlow, db: Any) -> None:
    first = await mf.workflow.start(
        workflow_name="echo", args=["a"], task_queue="nobody", idempotency_key="order-7"
    )
    second = await mf.workflow.start(
        workflow_name="echo", args=["b"], task_queue="nobody", idempotency_key="order-7"
    )
    assert second.workflow_id == first.workflow_id
    assert db.rows("select args from jobs") == [(["a"],)]


async def test_debounce_collapses_starts_into_one_run_with_the_last_args(
    mf: MemFlow, db: Any
) -> None:
    for n in range(3):
        await mf.workflow.start(
            workflow_name="echo", args=[n], workflow_id="d", task_queue="nobody",
            debounce="5 seconds",
        )  # fmt: skip
    assert db.rows("select id, args, status from jobs") == [("d", [2], "pending")]
    # due 5 s after the last start
    assert db.one(
        "select t.run_at - j.updated_at from jobs as j join tasks as t on t.job_id = j.id"
    ) == timedelta(seconds=5)
    with pytest.raises(InvalidArgument, match="debounce needs a workflow id"):
        await mf.workflow.start(workflow_name="echo", task_queue="nobody", debounce=5)


async def test_start_at_and_start_in_delay_the_first_run(mf: MemFlow, db: Any) -> None:
    at = datetime.fromisoformat("2100-01-01T00:00:00+00:00")
    await mf.workflow.start(workflow_name="echo", workflow_id="at", task_queue="n", start_at=at)
    await mf.workflow.start(workflow_name="echo", workflow_id="in", task_queue="n", start_in="1h")
    assert db.one("select run_at from tasks where job_id = 'at'") == at
    assert db.one(
        "select t.run_at - j.created_at from tasks as t join jobs as j on j.id = t.job_id"
        " where j.id = 'in'"
    ) == timedelta(hours=1)
    with pytest.raises(InvalidArgument, match="give start_at or start_in, not both"):
        await mf.workflow.start(workflow_name="echo", task_queue="n", start_at=at, start_in=1)


async def test_search_attributes_seeded_at_start(mf: MemFlow) -> None:
    eu = await mf.workflow.start(
        workflow_name="echo", task_queue="n", search={"region": "eu", "tier": 2}
    )
    await mf.workflow.start(workflow_name="echo", task_queue="n", search={"region": "us"})
    assert await eu.search_attributes() == {"region": "eu", "tier": 2}
    found = await mf.workflow.list(search={"region": "eu"})
    assert [w.id for w in found] == [eu.workflow_id]
    with pytest.raises(InvalidArgument, match="search must be an object"):
        await mf.workflow.start(workflow_name="echo", task_queue="n", search=["x"])  # type: ignore[arg-type]


async def test_an_activity_with_a_timeout_never_runs_inline(mf: MemFlow) -> None:
    async def where() -> bool:
        return activity.info().inline

    async def both() -> list[bool]:
        plain = workflow.proxy_activities(activities=[where])
        bounded = workflow.proxy_activities(activities=[where], start_to_close="1m")
        return [await plain.where(), await bounded.where()]

    await mf.worker.create(task_queue="q", workflow=both)
    handle = await mf.workflow.start(workflow_name="both", task_queue="q")
    assert await handle.result(timeout=20) == [True, False]


def test_seed_style_policy_carries_the_timeouts() -> None:
    policy = {"maximumAttempts": 4, "startToCloseTimeout": "30s", "heartbeatTimeout": 10}
    assert policy_json(policy) == {
        "maximum_attempts": 4,
        "start_to_close": 30.0,
        "heartbeat_timeout": 10.0,
    }
