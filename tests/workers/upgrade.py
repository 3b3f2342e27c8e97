"""A worker process for the upgrade-under-load test (tests/test_upgrade.py). The same file runs
with the previous release's package (PYTHONPATH=<its checkout>/python) and with this one's, so
it uses only the API both have.

    python tests/workers/upgrade.py DSN APP ROLE

ROLE "workflows" serves queue "uq" with three kinds of workflow and the activity `effect`
(run inline): `up_steps` (inline activities around a durable sleep, an entity increment),
`up_remote` (an activity on queue "ua", run by another process, then a wait for signal
"go-<i>") and `up_parent` (a child, `up_child`, that sleeps and runs an activity). ROLE
"activities" serves `effect` on queue "ua". Every `effect` run inserts one row into the app's
`effects` table (tests/helpers.py, create_effects) with this process's pid, so the test can
tell which release ran it. Prints "ready <path of the hotmesh package>" once serving; logs
warnings and errors of the engine to stderr.

`up_slow` (an activity, `pause`, between two effects) is served by `hotmesh worker
upgrade:up_slow` too (PYTHONPATH=tests/workers; DATABASE_URL and HOTMESH_APP name the app):
`pause` sleeps UPGRADE_PAUSE seconds (0 when unset), so a test chooses which process holds it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from _effects import CONFIG, close_pool, pooled_effect

import hotmesh
from hotmesh import MemFlow, workflow

# Served by `hotmesh worker upgrade:up_slow` too, with no __main__: the environment names the app.
CONFIG.update(dsn=os.environ.get("DATABASE_URL", ""), app=os.environ.get("HOTMESH_APP", ""))


async def effect(name: str) -> str:
    """The side effect: one row per run (tests/workers/_effects.py)."""
    return await pooled_effect(name)


async def up_steps(i: int) -> Any:
    acts = workflow.proxy_activities(activities=[effect])
    await acts.effect("a")
    await workflow.sleep_for(1)
    await acts.effect("b")
    e = await workflow.entity()
    await e.increment("n")
    return {"i": i}


async def up_remote(i: int) -> Any:
    remote = workflow.proxy_activities(task_queue="ua")
    got = await remote.effect("r")
    signal = await workflow.wait_for(f"go-{i}")
    return {"i": i, "got": got, "signal": signal}


async def up_child(i: int) -> Any:
    acts = workflow.proxy_activities(activities=[effect])
    await workflow.sleep_for(0.5)
    await acts.effect("c")
    return {"child": i}


async def up_parent(i: int) -> Any:
    child = await workflow.exec_child(workflow_name="up_child", args=[i], task_queue="uq")
    return {"i": i, **child}


async def pause() -> float:
    seconds = float(os.environ.get("UPGRADE_PAUSE", "0"))
    await asyncio.sleep(seconds)
    return seconds


async def up_slow(i: int) -> Any:
    acts = workflow.proxy_activities(activities=[effect, pause])
    await acts.effect("s1")
    await acts.pause()
    await acts.effect("s2")
    return {"i": i}


async def main(dsn: str, app: str, role: str) -> None:
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    if role == "activities":
        await mf.worker.register_activities(task_queue="ua", activities=[effect], lease=10)
    else:
        await mf.worker.register_activities(task_queue="uq", activities=[effect], lease=10)
        await mf.worker.create(
            task_queue="uq",
            workflow=[up_steps, up_remote, up_child, up_parent, up_slow],
            concurrency=8,
            lease=10,
        )
    print("ready", hotmesh.__file__, flush=True)
    try:
        await mf.run_until_signal(grace=5.0)
    finally:
        await close_pool()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    CONFIG.update(dsn=sys.argv[1], app=sys.argv[2])
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
