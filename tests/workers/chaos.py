"""A worker process for the chaos test (tests/test_chaos.py): two of them serve queue "cq"
while the test holds open transactions on every function an application may call.

    python tests/workers/chaos.py DSN APP CONCURRENCY LEASE

`chaos_main` is an unrelated workflow: an entity increment and an inline activity of 0.1 s.
`chaos_held` is the workflow the held calls address: it writes its entity and runs an inline
activity of `seconds`, round after round, so it is running (not waiting: the claim would skip
its held row) when the call is held and its next entity write meets the held row; once the
test sets `stop` in its entity (the hold is over), or after `rounds` rounds, it waits for
signal "done".
`chaos_hook` is the hook a held `hook(...)` call starts on it.

Warnings (lock_busy, db_error) and errors (crash, stuck) go to stderr, one line each.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from hotmesh import MemFlow, workflow


async def bump(n: int) -> int:
    await asyncio.sleep(0.1)  # holds the worker slot: the rate the test measures is slots
    return n + 1


async def chaos_main(i: int) -> int:
    acts = workflow.proxy_activities(activities=[bump])
    e = await workflow.entity()
    await e.increment("n")
    return int(await acts.bump(i))


async def pause(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def chaos_held(rounds: int, seconds: float) -> Any:
    acts = workflow.proxy_activities(activities=[pause])
    e = await workflow.entity()
    for _ in range(rounds):
        await e.increment("n")
        if await e.get("stop"):
            break
        await acts.pause(seconds)
    return await workflow.wait_for("done")


async def chaos_hook() -> str:
    e = await workflow.entity()
    await e.increment("hooked")
    return "hooked"


async def main(dsn: str, app: str, concurrency: int, lease: float) -> None:
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    await mf.worker.create(
        task_queue="cq",
        workflow=[chaos_main, chaos_held, chaos_hook],
        concurrency=concurrency,
        lease=lease,
    )
    print("ready", flush=True)
    await mf.run_until_signal(grace=2.0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
