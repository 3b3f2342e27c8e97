"""A worker process for the human task tests (tests/test_human_tasks.py), killed with SIGKILL
while people resolve tasks.

    python tests/workers/people.py DSN APP

Serves queue "pq" with `people_main(n)`: it asks role "reviewer" to approve item n (a form
with a required integer `n` and a boolean `ok`), then returns the answer with its own n. The
lease is short (PEOPLE_LEASE seconds, default 1) so a killed worker's activations are taken
over quickly.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from hotmesh import MemFlow, workflow

FORM = {
    "type": "object",
    "required": ["n", "ok"],
    "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
}


async def people_main(n: int) -> dict[str, Any]:
    answer = await workflow.ask_human(
        f"Approve item {n}", role="reviewer", metadata={"n": n}, form=FORM, due="1 hour"
    )
    return {"n": n, "answer": answer}


async def main(dsn: str, app: str) -> None:
    lease = float(os.environ.get("PEOPLE_LEASE", "1.0"))
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    await mf.worker.create(task_queue="pq", workflow=people_main, lease=lease)
    print("ready", flush=True)
    await mf.run_until_signal(grace=1.0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
