"""Typed payloads (docs/typed-payloads.md): dataclasses and pydantic models as workflow and
activity arguments and results, stored as JSON and given back as the annotated type, inline,
through a queue, in replay and in the Replayer; datetime, UUID, Decimal and enums round-trip;
a payload that does not fit fails once, naming the field; children's, hooks' and signals'
results typed by `result_type=` or the child's function's annotation."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pydantic
import pytest

from hotmesh import FatalError, MemFlow, RetryPolicy, workflow
from hotmesh._convert import PayloadTypeError, from_json
from hotmesh._runner import encode
from hotmesh.testing import Replayer

pytestmark = pytest.mark.timeout(60)


class Tier(enum.Enum):
    GOLD = "gold"
    SILVER = "silver"


@dataclass(frozen=True)
class Line:
    sku: str
    price: Decimal


@dataclass(frozen=True)
class Order:
    order_id: uuid.UUID
    placed: datetime
    tier: Tier
    lines: list[Line]
    due: date | None = None
    tags: dict[str, int] = field(default_factory=dict)


class Receipt(pydantic.BaseModel):
    order_id: uuid.UUID
    total: Decimal
    tier: Tier
    at: datetime


ORDER = Order(
    order_id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    placed=datetime(2026, 12, 7, 9, 30, 15, 123456, tzinfo=UTC),
    tier=Tier.GOLD,
    lines=[Line("A-1", Decimal("19.99")), Line("B-2", Decimal("0.01"))],
    due=date(2026, 12, 24),
    tags={"rush": 1},
)

SEEN: list[Any] = []


def price(order: Order) -> Receipt:
    SEEN.append(order)
    total = sum((line.price for line in order.lines), Decimal(0))
    return Receipt(order_id=order.order_id, total=total, tier=order.tier, at=order.placed)


async def checkout(order: Order) -> Receipt:
    assert isinstance(order, Order), order  # the annotated type, not a dict
    acts = workflow.proxy_activities(activities=[price])
    receipt: Receipt = await acts.price(order)
    assert isinstance(receipt, Receipt), receipt
    await workflow.sleep_for(0)  # a second activation: the receipt comes from replay
    return receipt


def test_values_round_trip_through_json() -> None:
    stored = encode([ORDER], "args")
    assert stored[0]["placed"] == "2026-12-07T09:30:15.123456+00:00"
    assert stored[0]["lines"][0]["price"] == "19.99"  # every digit kept: text, not a float
    assert stored[0]["tier"] == "gold"
    assert from_json(stored[0], Order, "test") == ORDER


def test_mismatch_names_the_field() -> None:
    stored = encode(ORDER, "arg")
    stored["lines"][1]["price"] = "a lot"
    with pytest.raises(PayloadTypeError, match=r"test: field lines\[1\]\.price: expected a Dec"):
        from_json(stored, Order, "test")
    with pytest.raises(PayloadTypeError, match=r"field tier: 'bronze' is not a Tier"):
        from_json({**encode(ORDER, "arg"), "tier": "bronze"}, Order, "test")
    with pytest.raises(PayloadTypeError, match=r"field total: Input should be a valid decimal"):
        from_json({"order_id": str(uuid.uuid4()), "total": "x", "tier": "gold",
                   "at": "2026-01-01T00:00:00"}, Receipt, "test")  # fmt: skip
    with pytest.raises(PayloadTypeError, match=r"field placed: missing"):
        from_json({k: v for k, v in encode(ORDER, "a").items() if k != "placed"}, Order, "t")


async def test_typed_workflow_inline_and_replayed(mf: MemFlow, db: Any) -> None:
    SEEN.clear()
    await mf.worker.create(task_queue="typed", workflow=checkout)
    handle = await mf.workflow.start(workflow_name="checkout", args=[ORDER], task_queue="typed")
    receipt = await handle.result(timeout=30, result_type=Receipt)
    assert receipt == Receipt(order_id=ORDER.order_id, total=Decimal("20.00"), tier=Tier.GOLD,
                              at=ORDER.placed)  # fmt: skip
    assert SEEN == [ORDER]  # the activity got an Order, once
    # Stored as plain JSON that SQL can read.
    args, result = db.rows("select args, result from jobs where id = %s", handle.workflow_id)[0]
    assert args[0]["lines"][0] == {"sku": "A-1", "price": "19.99"}
    assert result["total"] == "20.00" and result["tier"] == "gold"
    # The Replayer converts the recorded JSON the same way.
    report = await Replayer([checkout]).replay_app(mf, statuses=None)
    assert report.ok, report.text()


async def test_typed_activity_through_a_queue(mf: MemFlow, remote: MemFlow) -> None:
    SEEN.clear()
    await remote.worker.register_activities(task_queue="pricing", activities=[price])

    async def remote_checkout(order: Order) -> Receipt:
        acts = workflow.proxy_activities(activities=[price], task_queue="pricing")
        receipt: Receipt = await acts.price(order)
        assert isinstance(receipt, Receipt)
        return receipt

    await mf.worker.create(task_queue="typed", workflow=remote_checkout)
    handle = await mf.workflow.start(workflow_name="remote_checkout", args=[ORDER],
                                     task_queue="typed")  # fmt: skip
    receipt = await handle.result(timeout=30, result_type=Receipt)
    assert receipt.total == Decimal("20.00") and SEEN == [ORDER]


async def test_bad_payload_fails_once_naming_the_field(mf: MemFlow, db: Any) -> None:
    await mf.worker.create(task_queue="typed", workflow=checkout)
    bad = {**encode(ORDER, "arg"), "placed": "yesterday"}
    handle = await mf.workflow.start(
        workflow_name="checkout", args=[bad], task_queue="typed",
        retry_policy=RetryPolicy(maximum_attempts=5, initial_interval=0.1),
    )  # fmt: skip
    with pytest.raises(FatalError) as caught:
        await handle.result(timeout=30)
    assert caught.value.type == "PayloadTypeError"
    assert "argument order of workflow checkout: field placed: expected an ISO 8601 datetime" in (
        caught.value.message
    )
    assert db.one("select attempt from jobs where id = %s", handle.workflow_id) == 1  # no retry


async def receipt_of(order: Order) -> Receipt:
    return price(order)


async def cheaper(line: Line) -> Line:
    return Line(line.sku, line.price / 2)


async def family(order: Order) -> dict[str, Any]:
    """A typed child (its function's annotation), signal and hooks (result_type=)."""
    receipt = await workflow.exec_child(workflow_name=receipt_of, args=[order])
    line = await workflow.wait_for("line", result_type=Line)
    half = await workflow.exec_hook(workflow_name="cheaper", args=[line], result_type=Line)
    both = await workflow.exec_hook_batch(
        [{"key": "quarter", "options": {"workflow_name": cheaper, "args": [half]}}]
    )
    await workflow.sleep_for(0)  # one more activation: all of them from replay
    for value, tp in ((receipt, Receipt), (line, Line), (half, Line), (both["quarter"], Line)):
        assert isinstance(value, tp), value
    return {"total": receipt.total, "prices": [line.price, half.price, both["quarter"].price]}


async def test_typed_children_hooks_and_signals(mf: MemFlow, db: Any) -> None:
    SEEN.clear()
    await mf.worker.create(task_queue="typed", workflow=[family, receipt_of, cheaper])
    handle = await mf.workflow.start(workflow_name="family", args=[ORDER], task_queue="typed")
    await mf.workflow.signal("line", Line("C-3", Decimal("8")), workflow_id=handle.workflow_id)
    assert await handle.result(timeout=30) == {"total": "20.00", "prices": ["8", "4", "2"]}
    report = await Replayer([family, receipt_of, cheaper]).replay_app(mf, statuses=None)
    assert report.ok, report.text()

    bad = await mf.workflow.start(workflow_name="family", args=[ORDER], task_queue="typed",
                                  retry_policy=RetryPolicy(maximum_attempts=5))  # fmt: skip
    await mf.workflow.signal("line", {"sku": "C-3", "price": "free"}, workflow_id=bad.workflow_id)
    with pytest.raises(FatalError) as caught:
        await bad.result(timeout=30)
    assert caught.value.type == "PayloadTypeError"
    assert "the payload of signal line: field price: expected a Decimal, got 'free'" in (
        caught.value.message
    ), caught.value.message
    assert db.one("select attempt from jobs where id = %s", bad.workflow_id) == 1  # no retry
