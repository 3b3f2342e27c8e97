"""Replay: recorded calls are not performed again, non-determinism is detected and parks the
job, suspension cannot be swallowed by user code, random() and get_context() are stable, and
a workflow whose activities all run inline completes in one activation.

The tests that watch replays run their workers with sticky_cache=0, so that every wake-up
replays; the cache, which resumes a workflow instead, is tested in test_sticky.py."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import until
from hotmesh import MemFlow, RetryPolicy, workflow
from hotmesh._db import Claimed

pytestmark = pytest.mark.timeout(60)


def count_claims(mf: MemFlow) -> list[Claimed]:
    """Record every task mf's workers claim (the real claim_tasks still runs)."""
    claimed: list[Claimed] = []
    real = mf._db.claim_tasks

    async def claim_tasks(*args: Any) -> list[Claimed]:
        tasks = await real(*args)
        claimed.extend(tasks)
        return tasks

    mf._db.claim_tasks = claim_tasks  # type: ignore[method-assign]
    return claimed


async def test_recorded_calls_are_not_performed_again(mf: MemFlow, db: Any) -> None:
    runs: list[str] = []
    contexts: list[list[Any]] = []

    def effect(name: str) -> str:
        runs.append(name)
        return f"did {name}"

    async def twice() -> list[Any]:
        ctx = workflow.get_context()
        contexts.append([ctx.replaying, ctx.attempt])
        acts = workflow.proxy_activities(activities=[effect])
        first = await acts.effect("one")
        await workflow.sleep_for(0.2)
        return [first, await acts.effect("two"), workflow.get_context().replaying]

    claimed = count_claims(mf)
    await mf.worker.create(task_queue="q", workflow=twice, sticky_cache=0)
    handle = await mf.workflow.start(workflow_name="twice", task_queue="q", workflow_id="tw")
    assert await handle.result(timeout=20) == ["did one", "did two", False]
    assert runs == ["one", "two"]  # the replay returned "did one" from history
    assert contexts == [[False, 1], [True, 1]]  # first activation, then the replay after the timer
    assert [t.kind for t in claimed] == ["workflow", "workflow"]
    assert [len(t.steps or []) for t in claimed] == [0, 2]  # the replay got its history at claim


async def test_first_run_sees_what_a_replay_sees(mf: MemFlow) -> None:
    seen: list[Any] = []

    def shaped() -> Any:
        return {"pair": (1, 2), 3: "int key", "nested": [(4, 5)]}

    async def shapes() -> Any:
        acts = workflow.proxy_activities(activities=[shaped])
        value = await acts.shaped()
        seen.append(value)  # once live, once replayed
        await workflow.sleep_for(0.1)
        return value

    await mf.worker.create(task_queue="q", workflow=shapes, sticky_cache=0)
    handle = await mf.workflow.start(workflow_name="shapes", task_queue="q")
    stored = {"pair": [1, 2], "3": "int key", "nested": [[4, 5]]}
    assert await handle.result(timeout=20) == stored
    assert seen == [stored, stored]  # the live run got the JSON round trip too


@pytest.mark.parametrize("change", ["kind", "name"])
async def test_non_determinism_parks_the_job(
    mf: MemFlow, app: str, dsn: str, db: Any, change: str
) -> None:
    performed: list[str] = []

    def first_call() -> str:
        performed.append("first_call")
        return "first"

    def other_call() -> str:
        performed.append("other_call")
        return "other"

    async def evolving() -> str:
        acts = workflow.proxy_activities(activities=[first_call])
        if change == "name":
            await acts.first_call()
        else:
            await workflow.sleep_for(0.3)
        await workflow.sleep_for(0.3)
        return "v1"

    async def evolving_v2() -> str:
        acts = workflow.proxy_activities(activities=[other_call])
        await acts.other_call()  # step 1 is now a different call
        await workflow.sleep_for(0.3)
        return "v2"

    evolving_v2.__name__ = "evolving"

    worker = await mf.worker.create(task_queue="q", workflow=evolving)
    handle = await mf.workflow.start(workflow_name="evolving", task_queue="q", workflow_id="nd")
    await until(
        lambda: db.one("select status from jobs where id = 'nd'") == "waiting", "the job to wait"
    )
    await worker.stop(grace=1.0)  # v1 is no longer served; the timer is pending in the DB
    recorded = db.rows("select seq, kind, name from steps where job_id = 'nd' order by seq")
    assert recorded[0] == ((1, "activity", "first_call") if change == "name" else (1, "sleep", ""))

    v2 = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    try:
        await v2.worker.create(task_queue="q", workflow=evolving_v2)
        await until(
            lambda: db.one("select state from tasks where job_id = 'nd'") == "dead",
            "the activation to be buried",
        )
    finally:
        await v2.close(grace=1.0)

    status, result, error = db.rows("select status, result, error from jobs where id = 'nd'")[0]
    assert status in ("running", "waiting") and result is None
    assert error["sqlstate"] == "HM006"
    was = 'activity "first_call"' if change == "name" else 'sleep ""'
    assert (
        f'step 1 was recorded as {was} but the code now calls activity "other_call"'
        in (error["message"])
    )
    assert db.one("select error ->> 'sqlstate' from tasks where job_id = 'nd'") == "HM006"
    # the history is untouched and the new code's call was never performed
    assert db.rows("select seq, kind, name from steps where job_id = 'nd' order by seq") == recorded
    assert "other_call" not in performed
    assert await handle.status() == status
    with pytest.raises(TimeoutError):
        await handle.result(timeout=0.3)


@pytest.mark.parametrize("suspend_on", ["sleep", "remote", "retry"])
async def test_except_exception_cannot_swallow_suspension(
    mf: MemFlow, remote: MemFlow, suspend_on: str
) -> None:
    runs: list[int] = []

    def flaky() -> str:
        runs.append(1)
        if len(runs) == 1:
            raise ConnectionError("first run fails")
        return "flaky done"

    def far() -> str:
        runs.append(1)
        return "far done"

    async def stubborn() -> Any:
        local = workflow.proxy_activities(
            activities=[flaky], retry_policy=RetryPolicy(initial_interval=0.1)
        )
        distant = workflow.proxy_activities(task_queue="acts")
        try:
            if suspend_on == "sleep":
                value = await workflow.sleep_for(0.2)
            elif suspend_on == "remote":
                value = await distant.far()
            else:
                value = await local.flaky()
        except Exception as error:
            return f"swallowed {type(error).__name__}: {error}"
        return value

    await remote.worker.register_activities(task_queue="acts", activities=[far])
    claimed = count_claims(mf)
    await mf.worker.create(task_queue="q", workflow=stubborn)
    handle = await mf.workflow.start(workflow_name="stubborn", task_queue="q")
    expected = {"sleep": 0.2, "remote": "far done", "retry": "flaky done"}[suspend_on]
    assert await handle.result(timeout=20) == expected
    assert len([t for t in claimed if t.kind == "workflow"]) >= 2  # it did suspend and resume
    assert len(runs) == {"sleep": 0, "remote": 1, "retry": 2}[suspend_on]


async def test_random_is_equal_across_replays(mf: MemFlow) -> None:
    seen: list[float] = []

    async def dice() -> list[float]:
        first = workflow.random()
        seen.append(first)
        await workflow.sleep_for(0.1)
        second = workflow.random()
        await workflow.sleep_for(0.1)
        return [first, second, workflow.random()]

    await mf.worker.create(task_queue="q", workflow=dice, sticky_cache=0)
    one = await mf.workflow.start(workflow_name="dice", task_queue="q", workflow_id="d1")
    first, second, third = await one.result(timeout=20)
    assert len(seen) == 3 and set(seen) == {first}  # three activations, one value
    assert len({first, second, third}) == 3
    assert all(0.0 <= value < 1.0 for value in (first, second, third))
    # another workflow draws other numbers
    two = await mf.workflow.start(workflow_name="dice", task_queue="q", workflow_id="d2")
    assert (await two.result(timeout=20))[0] != first


async def test_get_context(mf: MemFlow) -> None:
    async def introspect(tag: str) -> list[Any]:
        start = workflow.get_context()
        await workflow.sleep_for(0.1)
        end = workflow.get_context()
        return [
            tag,
            start.workflow_id,
            start.workflow_name,
            start.task_queue,
            start.thread,
            start.attempt,
            start.replaying,
            end.replaying,
        ]

    await mf.worker.create(task_queue="ctxq", workflow=introspect, sticky_cache=0)
    handle = await mf.workflow.start(
        workflow_name="introspect", args=["t"], task_queue="ctxq", workflow_id="ctx-1"
    )
    # the final activation replayed the timer: replaying at the top, live after it
    assert await handle.result(timeout=20) == [
        "t",
        "ctx-1",
        "introspect",
        "ctxq",
        "main",
        1,
        True,
        False,
    ]


def test_workflow_api_outside_a_workflow() -> None:
    from hotmesh._runner import SandboxError

    for call in (workflow.random, workflow.get_context, lambda: workflow.sleep_for(1)):
        with pytest.raises(SandboxError, match="inside a workflow function"):
            call()
    acts = workflow.proxy_activities(activities=[len])
    with pytest.raises(SandboxError, match="inside a workflow function"):
        acts.len("x")


async def test_thousand_inline_steps_in_one_activation(mf: MemFlow, db: Any) -> None:
    bodies: list[int] = []

    def step(i: int) -> int:
        return i

    async def long_flow(n: int) -> int:
        bodies.append(1)
        acts = workflow.proxy_activities(activities=[step])
        total = 0
        for i in range(n):
            total += await acts.step(i)
        return total

    claimed = count_claims(mf)
    await mf.worker.create(task_queue="q", workflow=long_flow)
    handle = await mf.workflow.start(
        workflow_name="long_flow", args=[1000], task_queue="q", workflow_id="long"
    )
    assert await handle.result(timeout=50) == sum(range(1000))
    assert db.rows(
        "select count(*), min(seq), max(seq), count(distinct seq) from steps"
        " where job_id = 'long' and status = 'completed' and kind = 'activity'"
    ) == [(1000, 1, 1000, 1000)]
    # one claim, one run of the body: no replay at all
    assert [(t.kind, t.job_id, t.attempt) for t in claimed] == [("workflow", "long", 1)]
    assert bodies == [1]
