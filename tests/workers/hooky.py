"""A worker process for the hook crash test (tests/test_hooks_children.py), killed with
SIGKILL while hooks run.

    python tests/workers/hooky.py DSN APP [HANG]

Serves queue "hq" with `hooky_main` and its hook `hooky_hook`. The main function runs three
hooks at once with exec_hook_batch; each hook runs the inline activity `effect` (one row in
the app's `effects` table per run) and then writes its name into the shared entity. HANG: the
hook whose `effect` blocks forever after recording its row, so the test can kill the process
while that hook runs ("" for none). The lease is short (HOOKY_LEASE seconds, default 1) so a
killed worker's hook is taken over quickly.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from _effects import CONFIG, effect

from hotmesh import MemFlow, workflow

HOOKS = ("a", "b", "c")


async def hooky_hook(name: str) -> str:
    acts = workflow.proxy_activities(activities=[effect])
    done = await acts.effect(name)
    entity = await workflow.entity()
    await entity.merge({name: workflow.get_context().thread})
    return str(done)


async def hooky_main() -> dict[str, Any]:
    results = await workflow.exec_hook_batch(
        [{"key": n, "options": {"workflow_name": "hooky_hook", "args": [n]}} for n in HOOKS]
    )
    entity = await workflow.entity()
    return {"results": results, "entity": await entity.get()}


async def main(dsn: str, app: str) -> None:
    lease = float(os.environ.get("HOOKY_LEASE", "1.0"))
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    await mf.worker.create(task_queue="hq", workflow=[hooky_main, hooky_hook], lease=lease)
    print("ready", flush=True)
    await mf.run_until_signal(grace=1.0)


if __name__ == "__main__":
    CONFIG.update(dsn=sys.argv[1], app=sys.argv[2], hang=sys.argv[3] if len(sys.argv) > 3 else "")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
