"""A history recorded by a real database replays with no database: every kind of durable
call, read back from `workflow_history` with its inputs, matches what the code asks (so the
inputs the commands say they record are the ones the stored functions record), and a changed
argument is reported as a divergence."""

from __future__ import annotations

from typing import Any

import pytest

from hotmesh import MemFlow, workflow
from hotmesh._runner import Completed, Diverged, replay

pytestmark = pytest.mark.timeout(60)


def charge(order_id: str, amount: int) -> str:
    return f"receipt-{order_id}-{amount}"


async def notify(order_id: str) -> str:
    return f"notified {order_id}"


async def reviewer(order_id: str) -> str:
    e = await workflow.entity()
    await e.append("reviews", order_id)
    return "looks good"


async def idle(order_id: str) -> None:
    await workflow.wait_for(f"never-{order_id}")


async def ship(order_id: str) -> str:
    return f"shipped {order_id}"


async def audited(order_id: str, amount: int) -> dict[str, Any]:
    inline = workflow.proxy_activities(activities=[charge])
    remote = workflow.proxy_activities(task_queue="remote")
    e = await workflow.entity()
    await e.set({"order": order_id})
    await e.merge({"stage": "new"})
    await e.increment(["totals", "eur"], amount)
    await e.toggle("flags.rush")
    await e.set_if_not_exists("a.b", [1, {"c": None}])
    await e.delete("flags")
    order = await e.get("order")
    receipt = await inline.charge(order_id, amount)
    notified = await remote.notify(order_id)
    await workflow.sleep_for(0.05)
    await workflow.search().set({"stage": "paid", "amount": amount})
    await workflow.search().incr("n", 2)
    review = await workflow.exec_hook(workflow_name="reviewer", args=[order_id])
    await workflow.signal("note", {"order": order_id}, workflow_id="*")
    kid = await workflow.start_child(workflow_name="idle", args=[order_id])
    await workflow.interrupt(kid, reason="not needed")
    shipped = await workflow.exec_child(workflow_name="ship", args=[order_id])
    await workflow.emit({"progress": {"order": order_id}})
    approval = await workflow.wait_for("approve", timeout=30)
    return {
        "order": order,
        "receipt": receipt,
        "notified": notified,
        "review": review,
        "shipped": shipped,
        "approval": approval,
    }


async def test_a_recorded_history_replays_with_no_database(mf: MemFlow, db: Any) -> None:
    await mf.worker.register_activities(task_queue="remote", activities=[notify])
    await mf.worker.create(task_queue="q", workflow=[audited, reviewer, idle, ship])
    handle = await mf.workflow.start(
        workflow_name="audited", args=["A1", 100], task_queue="q", workflow_id="A1"
    )
    await handle.signal("approve", {"by": "ann"})  # kept until the workflow waits for it
    result = await handle.result(timeout=30)

    history = [row[0] for row in db.rows("select to_jsonb(h) from workflow_history('A1') h")]
    main = [s for s in history if s["thread"] == "main" and s["seq"] is not None]
    assert {s["kind"] for s in main} == {
        "entity", "activity", "sleep", "search", "hook", "signal", "send", "child", "cancel",
        "emit",
    }  # fmt: skip
    assert all(s["input"] is not None for s in main)

    assert await replay(audited, history, args=["A1", 100], workflow_id="A1") == Completed(result)
    # The hook's thread replays alone as well.
    hook_thread = next(s["thread"] for s in history if s["thread"] not in ("main", None))
    assert await replay(
        reviewer, history, args=["A1"], workflow_id="A1", thread=hook_thread
    ) == Completed("looks good")

    changed = await replay(audited, history, args=["A1", 250], workflow_id="A1")
    assert isinstance(changed, Diverged)
    assert changed.error.sqlstate == "HM006"
    assert changed.error.message == (
        'non-determinism in workflow "A1" thread main: step 3 was recorded as entity '
        '"increment" with input {"path": ["totals", "eur"], "value": 100} but the code now '
        'calls entity "increment" with input {"path": ["totals", "eur"], "value": 250}'
    )
    # Without the inputs (the claim's history), only kind and name are compared.
    claimed = [{k: v for k, v in s.items() if k != "input"} for s in main]
    assert await replay(audited, claimed, args=["A1", 250], workflow_id="A1") == Completed(result)


async def parent_of_one() -> Any:
    return await workflow.exec_child(workflow_name="ship", args=["o-1"])


@pytest.mark.parametrize("run", [1, 2, 3])
async def test_a_later_runs_default_child_id_replays(run: int) -> None:
    """From the second run on (continue_as_new), a default child id names the run
    (`<id>-main-1-run<n>`): the replay of that run's history expects the same id, and the
    history of another run diverges."""
    suffix = f"-run{run}" if run > 1 else ""
    history = [
        {"thread": "main", "seq": 1, "kind": "child", "name": "ship", "status": "completed",
         "input": {"workflow_id": f"wf-main-1{suffix}", "await": True}, "output": "shipped"},
    ]  # fmt: skip
    outcome = await replay(parent_of_one, history, workflow_id="wf", run=run)
    assert isinstance(outcome, Completed), outcome
    other = await replay(parent_of_one, history, workflow_id="wf", run=run + 1)
    assert isinstance(other, Diverged) and f"wf-main-1-run{run + 1}" in str(other.error), other
