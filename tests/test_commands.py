"""Durable calls as data: the runner replays a workflow against a recorded history with no
database (no connection, no worker, no activity run) and reports the first divergence in
kind, name or arguments. Nothing here touches Postgres; test_replay_recorded.py checks the
same against histories a real database recorded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from hotmesh import errors, workflow
from hotmesh._commands import (
    EntityOp,
    RecordedStep,
    ScheduleActivity,
    StartTimer,
    WaitSignal,
    divergence,
)
from hotmesh._runner import Completed, Diverged, Failed, Suspended, replay

charged: list[Any] = []


async def charge(order_id: str, amount: int) -> str:
    charged.append((order_id, amount))  # must never run in a replay
    return f"receipt-{order_id}"


async def order(order_id: str, amount: int) -> dict[str, Any]:
    acts = workflow.proxy_activities(activities=[charge], task_queue="payments")
    e = await workflow.entity()
    await e.set({"order": order_id, "stage": "new"})
    receipt = await acts.charge(order_id, amount)
    await workflow.sleep_for("5s")
    approval = await workflow.wait_for("approve", timeout=60)
    await workflow.search().set({"stage": "approved"})
    await e.increment(["totals", "eur"], amount)
    await workflow.signal("paid", {"receipt": receipt}, workflow_id="shop")
    child = await workflow.start_child(workflow_name="ship", args=[order_id])
    await workflow.emit({"order": {"id": order_id}})
    return {"receipt": receipt, "approval": approval, "child": child}


def step(seq: int, kind: str, name: str, input: Any, output: Any = None) -> dict[str, Any]:
    """A completed step as the `workflow_history` view shows it (with its input)."""
    return {
        "thread": "main",
        "seq": seq,
        "kind": kind,
        "name": name,
        "status": "completed",
        "attempt": 0,
        "input": input,
        "output": output,
        "error": None,
    }


# What the stored functions record for order("A1", 100) run as workflow "order-A1".
HISTORY = [
    {"thread": "main", "seq": None, "kind": "workflow", "name": "order", "status": "started"},
    step(1, "entity", "set", {"path": None, "value": {"order": "A1", "stage": "new"}, "by": "w"}),
    step(2, "activity", "charge", ["A1", 100], "receipt-A1"),
    step(3, "sleep", "", {"seconds": 5}, 5),
    step(4, "signal", "approve", {"timeout": 60}, {"by": "ann"}),
    step(5, "search", "set", {"stage": "approved"}, 1),
    step(6, "entity", "increment", {"path": ["totals", "eur"], "value": 100, "by": "w"}, 100),
    step(7, "send", "paid", {"payload": {"receipt": "receipt-A1"}, "workflow_id": "shop"}),
    step(8, "child", "ship", {"workflow_id": "order-A1-main-8", "await": False}, "order-A1-main-8"),
    step(9, "emit", "", {"order": {"id": "A1"}}, True),
]
RESULT = {"receipt": "receipt-A1", "approval": {"by": "ann"}, "child": "order-A1-main-8"}


def claim_shape(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history as claim_tasks hands it to a worker: no inputs, no start rows."""
    return [
        {k: v for k, v in s.items() if k not in ("input", "thread")}
        for s in history
        if s["seq"] is not None
    ]


async def replay_order(history: list[dict[str, Any]], amount: int = 100, **options: Any) -> Any:
    return await replay(order, history, args=["A1", amount], workflow_id="order-A1", **options)


async def test_a_recorded_history_replays_with_no_database_and_no_activity() -> None:
    outcome = await replay_order(HISTORY)
    assert outcome == Completed(RESULT)
    assert charged == []


async def test_a_changed_argument_is_a_divergence_that_names_both_inputs() -> None:
    outcome = await replay_order(HISTORY, amount=250)
    assert isinstance(outcome, Diverged)
    assert isinstance(outcome.error, errors.NonDeterminismError)
    assert outcome.error.sqlstate == "HM006"
    assert outcome.error.message == (
        'non-determinism in workflow "order-A1" thread main: step 2 was recorded as activity '
        '"charge" with input ["A1", 100] but the code now calls activity "charge" with input '
        '["A1", 250]'
    )
    assert charged == []


async def test_argument_checks_can_be_left_out() -> None:
    # The amount reaches step 6 too; the outputs recorded stand either way.
    assert await replay_order(HISTORY, amount=250, check_input=False) == Completed(RESULT)


async def test_a_history_without_inputs_is_checked_by_kind_and_name() -> None:
    # What the live worker gets at claim time: changed arguments go unnoticed there.
    assert await replay_order(claim_shape(HISTORY), amount=250) == Completed(RESULT)
    swapped = claim_shape(HISTORY)
    swapped[1] = {**swapped[1], "name": "refund"}
    outcome = await replay_order(swapped)
    assert isinstance(outcome, Diverged)
    assert outcome.error.message == (
        'non-determinism in workflow "order-A1" thread main: step 2 was recorded as activity '
        '"refund" but the code now calls activity "charge"'
    )


async def test_a_different_kind_is_reported_with_the_existing_message() -> None:
    history = list(HISTORY)
    history[2] = step(2, "sleep", "", {"seconds": 1}, 1)
    outcome = await replay_order(history)
    assert isinstance(outcome, Diverged)
    assert outcome.error.message == (
        'non-determinism in workflow "order-A1" thread main: step 2 was recorded as sleep "" '
        'but the code now calls activity "charge"'
    )


@pytest.mark.parametrize(
    ("seq", "recorded", "now"),
    [
        (1, '{"path": null, "value": {"order": "A0", "stage": "new"}}', None),
        (3, '{"seconds": 9}', '{"seconds": 5.0}'),
        (4, '{"timeout": null}', '{"timeout": 60.0}'),
        (6, '{"path": ["totals", "usd"], "value": 100}', None),
        (7, '{"payload": {"receipt": "receipt-A1"}, "workflow_id": null}', None),
        (8, '{"await": true, "workflow_id": "order-A1-main-8"}', None),
    ],
)
async def test_every_kind_of_call_compares_its_arguments(
    seq: int, recorded: str, now: str | None
) -> None:
    history = list(HISTORY)
    original = history[seq]
    history[seq] = {**original, "input": json.loads(recorded)}
    outcome = await replay_order(history)
    assert isinstance(outcome, Diverged), outcome
    message = outcome.error.message
    assert f'step {seq} was recorded as {original["kind"]} "{original["name"]}" with input' in (
        message
    )
    if now is not None:
        assert message.endswith(f"with input {now}")


async def test_the_calls_beyond_the_history_are_what_the_code_would_do_next() -> None:
    outcome = await replay_order(HISTORY[:4])
    assert outcome == Suspended(((4, WaitSignal("approve", 60.0)),))
    assert charged == []


async def test_a_call_still_waiting_suspends_with_nothing_to_do() -> None:
    waiting = {**HISTORY[4], "status": "scheduled", "output": None}
    assert await replay_order([*HISTORY[:4], waiting]) == Suspended()


async def test_a_recorded_failure_raises_in_the_code_as_on_a_worker() -> None:
    error = {"message": "card declined", "type": "CardError", "code": 598}
    failed = {**HISTORY[2], "status": "failed", "output": None, "error": error}
    outcome = await replay_order([*HISTORY[:2], failed])
    assert isinstance(outcome, Failed)
    assert isinstance(outcome.error, errors.WorkflowError)
    assert (outcome.error.message, outcome.error.type) == ("card declined", "CardError")


async def test_an_inline_retry_that_is_due_would_run_again() -> None:
    error = {"message": "timeout", "type": "OSError"}
    retrying = {**HISTORY[2], "status": "retrying", "output": None, "error": error}
    outcome = await replay_order([*HISTORY[:2], {**retrying, "attempt": 1, "due": True}])
    assert outcome == Suspended(((2, ScheduleActivity("charge", ["A1", 100], "payments")),))
    outcome = await replay_order([*HISTORY[:2], {**retrying, "attempt": 1, "due": False}])
    assert outcome == Suspended()


async def fan_out() -> list[Any]:
    acts = workflow.proxy_activities(task_queue="q")
    return list(await asyncio.gather(acts.a(1), workflow.sleep_for(2), acts.b([2])))


async def test_concurrent_calls_are_numbered_in_call_order() -> None:
    outcome = await replay(fan_out, [])
    assert outcome == Suspended(
        (
            (1, ScheduleActivity("a", [1], "q")),
            (2, StartTimer(2.0)),
            (3, ScheduleActivity("b", [[2]], "q")),
        )
    )
    history = [
        step(1, "activity", "a", [1], "A"),
        step(2, "sleep", "", {"seconds": 2}, 2),
        step(3, "activity", "b", [[2]], "B"),
    ]
    assert await replay(fan_out, history) == Completed(["A", 2, "B"])


def test_entity_paths_compare_as_the_database_records_them() -> None:
    recorded = RecordedStep(
        1, "entity", "set", "completed", input={"path": ["a.b", "0"], "value": 1, "by": "w"}
    )
    assert divergence(recorded, EntityOp("set", '["a.b", 0]', 1), "j", "main") is None
    assert divergence(recorded, EntityOp("set", '["a.b", 0]', 2), "j", "main") is not None
    dotted = recorded._replace(input={"path": ["a", "b"], "value": 1})
    assert divergence(dotted, EntityOp("set", "a.b", 1), "j", "main") is None
    assert divergence(dotted, EntityOp("set", "a.c", 1), "j", "main") is not None
    # A path the database refused is recorded as given (the step failed).
    refused = recorded._replace(name="get", status="failed", input={"path": "a..b"})
    assert divergence(refused, EntityOp("get", "a..b", None, has_value=False), "j", "main") is None
    # An operation without operand records no value: one with a value is another call.
    assert divergence(refused, EntityOp("get", "a..b", None), "j", "main") is not None


def test_a_long_input_is_cut_in_the_message() -> None:
    recorded = RecordedStep(1, "activity", "a", "completed", input=["x" * 1000])
    message = divergence(recorded, ScheduleActivity("a", ["y" * 1000], "q"), "j", "main")
    assert message is not None and len(message) < 600
    assert '["xxx' in message and '["yyy' in message and "..." in message
