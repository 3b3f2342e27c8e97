"""A worker process for the load and database-fault tests (tests/test_load.py,
tests/test_db_faults.py): several of them serve one queue together.

    python tests/workers/fleet.py DSN APP QUEUE CONCURRENCY LEASE [ROLE]

ROLE "workflows" (the default) serves QUEUE with `fleet_main`, its hook `fleet_hook` and
`fleet_fanout`, until SIGTERM. `fleet_main` runs an inline activity, increments its entity,
runs a hook (another inline activity and increment), waits for its signal "go-<i>" (sent by
the test, before or after the wait exists), increments again and returns. `fleet_fanout`
runs `effect` on another queue, several calls at once. ROLE "activities" serves `effect` on
QUEUE (for `fleet_fanout`). Every `effect` call inserts one row into the app's `effects`
table (the side-effect counter, keyed by workflow and step name; `at` is the database's
clock, so a test can tell whether an effect ran after its step was recorded).

Warnings and errors of the engine (db_error, reconnect, lease_lost, crash, stuck) go to
stderr, one line each, so a test can count them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from _effects import CONFIG, close_pool, pooled_effect

from hotmesh import MemFlow, RetryPolicy, workflow

# The effect writes to the database the test restarts: a failed write is retried like any
# failing activity, often enough to outlast a restart.
RETRY = RetryPolicy(maximum_attempts=30, initial_interval=0.2, backoff_coefficient=2,
                    maximum_interval=1.0)  # fmt: skip


async def effect(name: str) -> str:
    """The side effect: one row per run (tests/workers/_effects.py)."""
    return await pooled_effect(name)


async def fleet_main(i: int) -> Any:
    acts = workflow.proxy_activities(activities=[effect], retry_policy=RETRY)
    e = await workflow.entity()
    await acts.effect("a")
    await e.increment("n")
    hooked = await workflow.exec_hook(workflow_name="fleet_hook", args=[i])
    got = await workflow.wait_for(f"go-{i}")
    await e.increment("n")
    return {"i": i, "hook": hooked, "got": got, "n": await e.get("n")}


async def fleet_hook(i: int) -> str:
    acts = workflow.proxy_activities(activities=[effect], retry_policy=RETRY)
    await acts.effect("h")
    e = await workflow.entity()
    await e.increment("n")
    return f"hook {i}"


async def fleet_fanout(width: int, activity_queue: str) -> list[str]:
    """`width` remote activities at once: their completions, by several activity workers,
    wake the same workflow thread concurrently."""
    acts = workflow.proxy_activities(task_queue=activity_queue, retry_policy=RETRY)
    return list(await asyncio.gather(*(acts.effect(f"r{k}") for k in range(width))))


async def main(dsn: str, app: str, queue: str, concurrency: int, lease: float, role: str) -> None:
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    if role == "activities":
        await mf.worker.register_activities(
            task_queue=queue, activities=[effect], concurrency=concurrency, lease=lease
        )
    else:
        await mf.worker.create(
            task_queue=queue,
            workflow=[fleet_main, fleet_hook, fleet_fanout],
            concurrency=concurrency,
            lease=lease,
        )
    print("ready", flush=True)
    try:
        await mf.run_until_signal(grace=2.0)
    finally:
        await close_pool()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    CONFIG.update(dsn=sys.argv[1], app=sys.argv[2])
    role = sys.argv[6] if len(sys.argv) > 6 else "workflows"
    asyncio.run(main(*sys.argv[1:4], int(sys.argv[4]), float(sys.argv[5]), role))
