"""workflow.continue_as_new end to end: a workflow that continues 200 times (1,000 in
`make test-slow`) keeps its id and its entity (every change in entity_history), its history
stays one run long, and result() returns the last run's result; signals sent while runs turn
over all arrive, once; children of later runs get ids of their own; a hook cannot continue its
workflow; cancelling ends the chain; prune removes the archived runs with the workflow."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import until_row
from hotmesh import CancelledFailure, FatalError, MemFlow, workflow

pytestmark = pytest.mark.timeout(300)


async def counter(n: int, last: int) -> dict[str, int]:
    entity = await workflow.entity()
    await entity.append("seen", n)
    if n < last:
        workflow.continue_as_new(n + 1, last)
    return {"n": n, "run": workflow.get_context().run}


# 1,000 runs in `make test-slow`; 200 make the same point in `make test`.
@pytest.mark.parametrize("last", [200, pytest.param(1000, marks=pytest.mark.slow)])
async def test_many_runs_keep_the_id_and_every_entity_change(
    mf: MemFlow, db: Any, last: int
) -> None:
    await mf.worker.create(task_queue="q", workflow=counter)
    handle = await mf.workflow.start(
        workflow_name="counter", args=[1, last], task_queue="q", workflow_id="agent"
    )
    assert await handle.result(timeout=240) == {"n": last, "run": last}

    # One jobs row, on its last run; the step history holds that run only.
    assert db.rows("select id, run, status, args from jobs") == [
        ("agent", last, "completed", [last, last])
    ]
    assert db.one("select count(*) from steps where job_id = 'agent'") == 1
    runs = db.rows("select run, status, steps, next_args from workflow_runs('agent')")
    assert len(runs) == last
    assert runs[0] == (1, "continued", 1, [2, last])
    assert runs[-1] == (last, "completed", 1, None)
    assert {steps for _, _, steps, _ in runs} == {1}  # bounded: one step per run
    # The entity kept every change, in order, each one in its history.
    assert await mf.entity("agent").get("seen") == list(range(1, last + 1))
    history = await mf.entity.history("agent")
    assert [change["version"] for change in history] == list(range(1, last + 1))
    assert history[-1]["document"] == {"seen": list(range(1, last + 1))}
    # An archived run's timeline: started with its args, ended passing the next ones on.
    assert [
        (kind, name, status, output)
        for _, _, _, kind, name, status, output in db.rows(
            "select at, thread, seq, kind, name, status, output from run_history('agent', 7)"
        )
    ] == [
        ("workflow", "counter", "started", None),
        ("entity", "append", "completed", list(range(1, 8))),
        ("workflow", "counter", "continued", [8, last]),
    ]


async def racer(total: int) -> list[int]:
    """Each run waits for a message or a zero-second timer, whichever comes first, and
    continues as new either way: messages arrive while the runs turn over."""
    entity = await workflow.entity()
    message = workflow.wait_for("msg")
    await asyncio.wait([message, workflow.sleep_for(0)], return_when=asyncio.FIRST_COMPLETED)
    if message.done():
        got = await entity.append("got", message.result())
        if len(got) == total:
            return list(got)
    workflow.continue_as_new(total)


async def test_signals_sent_while_runs_turn_over_all_arrive_once(mf: MemFlow, db: Any) -> None:
    await mf.worker.create(task_queue="q", workflow=racer)
    handle = await mf.workflow.start(
        workflow_name="racer", args=[40], task_queue="q", workflow_id="inbox"
    )
    for n in range(40):
        await handle.signal("msg", n)
        await asyncio.sleep(0.005)  # spread over many runs (pacing only; nothing is timed)
    assert sorted(await handle.result(timeout=120)) == list(range(40))
    assert db.one("select count(*) from signals") == 0
    assert db.one("select run from jobs where id = 'inbox'") > 1
    # Every message was taken by exactly one run's wait.
    delivered = db.rows(
        "select output from run_steps where kind = 'signal' and status = 'completed'"
        " union all select output from steps where kind = 'signal' and status = 'completed'"
    )
    assert sorted(row[0] for row in delivered) == list(range(40))


async def child(n: int) -> int:
    return n * 10


async def parent(n: int) -> list[Any]:
    entity = await workflow.entity()
    await entity.append("children", await workflow.exec_child(workflow_name="child", args=[n]))
    if n < 3:
        workflow.continue_as_new(n + 1)
    return [await entity.get("children"), workflow.get_context().run]


async def test_each_run_names_its_children_apart(mf: MemFlow, db: Any) -> None:
    await mf.worker.create(task_queue="q", workflow=[parent, child])
    handle = await mf.workflow.start(
        workflow_name="parent", args=[1], task_queue="q", workflow_id="p"
    )
    assert await handle.result(timeout=60) == [[10, 20, 30], 3]
    assert db.rows("select id from jobs where parent_id = 'p' order by id") == [
        ("p-main-1",),
        ("p-main-1-run2",),
        ("p-main-1-run3",),
    ]


async def restless_hook() -> None:
    workflow.continue_as_new()


async def host() -> str:
    try:
        await workflow.exec_hook(workflow_name="restless_hook")
    except FatalError as error:
        return error.message
    return "continued"


async def test_a_hook_cannot_continue_its_workflow(mf: MemFlow) -> None:
    await mf.worker.create(task_queue="q", workflow=[host, restless_hook])
    handle = await mf.workflow.start(workflow_name="host", task_queue="q", workflow_id="h")
    message = await handle.result(timeout=30)
    assert "only its main thread can call it, not hook thread h1" in message


async def patient(n: int) -> None:
    await workflow.wait_for("never")
    workflow.continue_as_new(n + 1)


async def test_cancel_ends_the_chain_and_prune_removes_its_runs(mf: MemFlow, db: Any) -> None:
    await mf.worker.create(task_queue="q", workflow=patient)
    handle = await mf.workflow.start(
        workflow_name="patient", args=[1], task_queue="q", workflow_id="c", expire=0
    )
    for n in range(2):
        await handle.signal("never", n)
        await until_row(db, "select run = %s from jobs where id = 'c'", n + 2)
    await handle.interrupt("enough")
    with pytest.raises(CancelledFailure):
        await handle.result(timeout=10)
    assert db.rows("select run, status from workflow_runs('c')") == [
        (1, "continued"),
        (2, "continued"),
        (3, "cancelled"),
    ]
    assert await mf.prune() == 1
    assert db.one("select (select count(*) from runs) + (select count(*) from run_steps)") == 0
