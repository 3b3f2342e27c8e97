"""Four versions of one workflow, `order`, for the versioning tests (tests/test_versions.py)
and `hotmesh replay order_versions:v2` (run in tests/): each is registered and replayed under
the workflow name "order".

v1 prepares the order and waits for its approval. v2 inserts a fraud check before the wait,
guarded by `patched`, so runs parked on v1 finish on the old branch. v3 removed the patch
too early (the fraud check is unconditional): the replayer must refuse it while v1 runs
live. v4 deprecated the patch once no v1 run was left.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from hotmesh import workflow

Order = Callable[[int], Coroutine[Any, Any, dict[str, Any]]]


def prepare(n: int) -> int:
    return n * 10


def fraud_check(n: int) -> str:
    return f"clean-{n}"


def _order(fn: Order) -> Order:
    fn.__name__ = fn.__qualname__ = "order"
    return fn


@_order
async def v1(n: int) -> dict[str, Any]:
    acts = workflow.proxy_activities(activities=[prepare])
    amount = await acts.prepare(n)
    approval = await workflow.wait_for(f"approve-{n}")
    return {"n": n, "amount": amount, "approval": approval, "branch": "old"}


@_order
async def v2(n: int) -> dict[str, Any]:
    acts = workflow.proxy_activities(activities=[prepare, fraud_check])
    amount = await acts.prepare(n)
    branch = "old"
    if workflow.patched("fraud-check"):
        await acts.fraud_check(n)
        branch = "new"
    assert workflow.patched("fraud-check") is (branch == "new")  # the same answer, asked again
    approval = await workflow.wait_for(f"approve-{n}")
    return {"n": n, "amount": amount, "approval": approval, "branch": branch}


@_order
async def v3(n: int) -> dict[str, Any]:
    acts = workflow.proxy_activities(activities=[prepare, fraud_check])
    amount = await acts.prepare(n)
    await acts.fraud_check(n)
    approval = await workflow.wait_for(f"approve-{n}")
    return {"n": n, "amount": amount, "approval": approval, "branch": "new"}


@_order
async def v4(n: int) -> dict[str, Any]:
    acts = workflow.proxy_activities(activities=[prepare, fraud_check])
    amount = await acts.prepare(n)
    workflow.deprecate_patch("fraud-check")
    await acts.fraud_check(n)
    approval = await workflow.wait_for(f"approve-{n}")
    return {"n": n, "amount": amount, "approval": approval, "branch": "new"}
