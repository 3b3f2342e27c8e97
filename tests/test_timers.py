"""Durable timers and parallel durable calls: sleep_for never fires early (checked on the
recorded times, not the wall clock), its duration forms, bad durations refused before anything
is recorded, and asyncio.gather over activities and timers."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from hotmesh import FatalError, InvalidArgument, MemFlow, RetryPolicy, WorkflowError, workflow

pytestmark = pytest.mark.timeout(60)


def sleeps_of(db: Any, job_id: str) -> list[tuple[Any, ...]]:
    return db.rows(
        "select seq, (input ->> 'seconds')::numeric, output, status, created_at, wake_at,"
        " completed_at from steps where job_id = %s and kind = 'sleep' order by seq",
        job_id,
    )


def assert_never_early(rows: list[tuple[Any, ...]]) -> None:
    for seq, secs, output, status, created_at, wake_at, completed_at in rows:
        assert status == "completed", seq
        assert wake_at == created_at + timedelta(seconds=float(secs)), seq
        assert completed_at >= wake_at, f"step {seq} completed before it was due"
        assert float(output) == float(secs)


async def test_sleep_for_forms_and_never_early(mf: MemFlow, db: Any) -> None:
    async def napper() -> list[Any]:
        return [
            await workflow.sleep_for("1 second"),
            await workflow.sleep_for(timedelta(milliseconds=500)),
            await workflow.sleep_for(0.25),
            await workflow.sleep_for("0 seconds"),
        ]

    await mf.worker.create(task_queue="q", workflow=napper)
    handle = await mf.workflow.start(workflow_name="napper", task_queue="q", workflow_id="nap")
    assert await handle.result(timeout=30) == [1.0, 0.5, 0.25, 0.0]
    rows = sleeps_of(db, "nap")
    assert [row[0] for row in rows] == [1, 2, 3, 4]
    assert [float(row[1]) for row in rows] == [1.0, 0.5, 0.25, 0.0]
    assert_never_early(rows)
    # the timers were durable: the job waited between them (it is not a sleeping coroutine)
    assert db.one("select count(*) from tasks") == 0


async def test_timer_not_due_when_woken_early(mf: MemFlow, remote: MemFlow, db: Any) -> None:
    claims: list[int] = []
    claim_tasks = mf._db.claim_tasks

    async def counting(*args: Any) -> Any:
        claimed = await claim_tasks(*args)
        claims.extend(1 for task in claimed if task.kind == "workflow")
        return claimed

    mf._db.claim_tasks = counting  # type: ignore[method-assign]

    def quick() -> str:
        return "quick"

    async def mixed() -> list[Any]:
        acts = workflow.proxy_activities(task_queue="acts")
        return list(await asyncio.gather(workflow.sleep_for(1.0), acts.quick()))

    await remote.worker.register_activities(task_queue="acts", activities=[quick])
    await mf.worker.create(task_queue="q", workflow=mixed)
    handle = await mf.workflow.start(workflow_name="mixed", task_queue="q", workflow_id="mx")
    assert await handle.result(timeout=30) == [1.0, "quick"]
    assert_never_early(sleeps_of(db, "mx"))
    # start, the activity's completion (timer not yet due), the timer
    assert len(claims) >= 2


@pytest.mark.parametrize("bad", [-1, -0.5, "soon", "3 fortnights", "", "-2 seconds", True, None])
async def test_bad_duration_refused_before_anything_is_recorded(
    mf: MemFlow, db: Any, bad: Any
) -> None:
    async def bad_nap(value: Any) -> list[Any]:
        out: list[Any] = []
        try:
            await workflow.sleep_for(value)
        except InvalidArgument as error:
            out.append(["refused", error.sqlstate, str(error)])
        out.append(await workflow.sleep_for(0))  # takes step 1: the refused call took none
        return out

    await mf.worker.create(task_queue="q", workflow=bad_nap)
    handle = await mf.workflow.start(
        workflow_name="bad_nap", args=[bad], task_queue="q", workflow_id="bn"
    )
    (refused, sqlstate, message), slept = await handle.result(timeout=20)
    assert (refused, sqlstate, slept) == ("refused", "22023", 0.0)
    assert "sleep_for duration" in message
    assert db.rows("select seq, kind from steps where job_id = 'bn'") == [(1, "sleep")]


async def test_non_finite_duration_refused(mf: MemFlow, db: Any) -> None:
    async def odd_nap() -> list[str]:
        out = []
        for value in (float("nan"), float("inf"), float("-inf")):
            try:
                await workflow.sleep_for(value)
            except InvalidArgument as error:
                out.append(str(error))
        return out

    await mf.worker.create(task_queue="q", workflow=odd_nap)
    handle = await mf.workflow.start(workflow_name="odd_nap", task_queue="q", workflow_id="on")
    messages = await handle.result(timeout=20)
    assert len(messages) == 3 and all("finite" in m for m in messages)
    assert db.one("select count(*) from steps") == 0


async def test_bad_duration_uncaught_fails_the_workflow(mf: MemFlow, db: Any) -> None:
    async def careless_nap() -> None:
        await workflow.sleep_for("a while")

    await mf.worker.create(task_queue="q", workflow=careless_nap)
    handle = await mf.workflow.start(
        workflow_name="careless_nap", task_queue="q", retry_policy=RetryPolicy(maximum_attempts=1)
    )
    with pytest.raises(WorkflowError, match='"a while" is not a duration') as caught:
        await handle.result(timeout=20)
    assert caught.value.type == "InvalidArgument"
    assert db.one("select count(*) from steps") == 0


async def test_gather_numbers_calls_in_order(mf: MemFlow, remote: MemFlow, db: Any) -> None:
    async def slow_double(x: int) -> int:
        await asyncio.sleep(0.2)  # finishes after the calls made after it
        return 2 * x

    def square(x: int) -> int:
        return x * x

    def remote_neg(x: int) -> int:
        return -x

    async def fan_out() -> list[Any]:
        acts = workflow.proxy_activities(activities=[slow_double, square])
        far = workflow.proxy_activities(task_queue="acts")
        results = await asyncio.gather(
            acts.slow_double(5),
            acts.square(4),
            workflow.sleep_for(0.3),
            far.remote_neg(7),
            acts.square(3),
        )
        return list(results)

    await remote.worker.register_activities(task_queue="acts", activities=[remote_neg])
    await mf.worker.create(task_queue="q", workflow=fan_out)
    handle = await mf.workflow.start(workflow_name="fan_out", task_queue="q", workflow_id="fo")
    assert await handle.result(timeout=30) == [10, 16, 0.3, -7, 9]
    assert db.rows(
        "select seq, kind, name, output from steps where job_id = 'fo' order by seq"
    ) == [
        (1, "activity", "slow_double", 10),
        (2, "activity", "square", 16),
        (3, "sleep", "", 0.3),
        (4, "activity", "remote_neg", -7),
        (5, "activity", "square", 9),
    ]
    assert_never_early(sleeps_of(db, "fo"))
    # square(4) was recorded before slow_double(5), yet it is step 2: numbered by call order
    first, second = (
        db.one("select created_at from steps where job_id = 'fo' and seq = %s", seq)
        for seq in (1, 2)
    )
    assert second <= first


async def test_failed_branch_raises_at_its_own_call_site(mf: MemFlow, remote: MemFlow) -> None:
    def ok(x: int) -> int:
        return x + 1

    def bad(x: int) -> int:
        raise FatalError(f"bad {x}")

    async def guarded(label: str, call: Any) -> Any:
        try:
            return [label, await call]
        except FatalError as error:
            return [label, "caught", error.message]

    async def branches() -> dict[str, Any]:
        acts = workflow.proxy_activities(activities=[ok, bad])
        far = workflow.proxy_activities(task_queue="acts")
        each = await asyncio.gather(
            guarded("a", acts.ok(1)),
            guarded("b", acts.bad(2)),
            guarded("c", workflow.sleep_for(0.1)),
            guarded("d", far.bad(3)),
            guarded("e", far.ok(4)),
        )
        flat = await asyncio.gather(acts.ok(10), acts.bad(11), return_exceptions=True)
        try:
            await asyncio.gather(acts.ok(20), acts.bad(21))
            raised = None
        except FatalError as error:
            raised = error.message
        return {
            "each": list(each),
            "flat": [flat[0], type(flat[1]).__name__, str(flat[1])],
            "raised": raised,
        }

    await remote.worker.register_activities(task_queue="acts", activities=[ok, bad])
    await mf.worker.create(task_queue="q", workflow=branches)
    handle = await mf.workflow.start(workflow_name="branches", task_queue="q")
    assert await handle.result(timeout=30) == {
        "each": [
            ["a", 2],
            ["b", "caught", "bad 2"],
            ["c", 0.1],
            ["d", "caught", "bad 3"],
            ["e", 5],
        ],
        "flat": [11, "FatalError", "bad 11"],
        "raised": "bad 21",
    }
