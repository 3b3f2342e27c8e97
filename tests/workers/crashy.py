"""A worker process for the crash tests (tests/test_crash.py), killed with SIGKILL mid-run.

    python tests/workers/crashy.py DSN APP MODE [HANG]

MODE "inline": serves queue "wq" with `crashy_inline`, whose activities run inline.
MODE "activities": serves queue "aq" with the activities only (they are remote there).
MODE "remote": serves queue "wq" with `crashy_remote`, whose activities run on queue "aq".
HANG: the name of the `effect` call that blocks forever after recording its side effect,
so the test can kill the process in the middle of it ("" for none).
Every `effect` call inserts one row into the app's `effects` table: the side-effect counter.
The lease is short (CRASHY_LEASE seconds, default 1) so a killed worker's work is taken over
quickly.
"""

from __future__ import annotations

import asyncio
import os
import sys

from _effects import CONFIG, effect

from hotmesh import MemFlow, workflow

NAMES = ("a", "b", "c", "d")


async def crashy_inline() -> list[str]:
    acts = workflow.proxy_activities(activities=[effect])
    return [await acts.effect(name) for name in NAMES]


async def crashy_remote() -> list[str]:
    acts = workflow.proxy_activities(task_queue="aq")
    return [await acts.effect(name) for name in NAMES]


async def main(dsn: str, app: str, mode: str) -> None:
    lease = float(os.environ.get("CRASHY_LEASE", "1.0"))
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    if mode == "inline":
        await mf.worker.create(task_queue="wq", workflow=crashy_inline, lease=lease)
    elif mode == "remote":
        await mf.worker.create(task_queue="wq", workflow=crashy_remote, lease=lease)
    elif mode == "activities":
        await mf.worker.register_activities(task_queue="aq", activities=[effect], lease=lease)
    else:
        raise SystemExit(f"unknown mode {mode!r}: use inline, remote or activities")
    print("ready", flush=True)
    await mf.run_until_signal(grace=1.0)


if __name__ == "__main__":
    CONFIG.update(dsn=sys.argv[1], app=sys.argv[2], hang=sys.argv[4] if len(sys.argv) > 4 else "")
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
