"""A worker process for the schedule tests (tests/test_schedules.py): serves QUEUE with
`scheduled_run` until SIGTERM (or the SIGKILL the test sends).

    python tests/workers/scheduled.py DSN APP QUEUE

The test moves the engine's clock for the whole process with PGOPTIONS
(`-c hotmesh.fake_now=...`), so every claim of this process fires the schedules due by then.
"""

from __future__ import annotations

import asyncio
import sys

from hotmesh import MemFlow, workflow


async def scheduled_run(tag: str) -> str:
    """One run of a schedule: its id is the schedule id and the fire time."""
    return f"{tag} {workflow.get_context().workflow_id}"


async def main(dsn: str, app: str, queue: str) -> None:
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    # A short lease: the test kills workers mid-run and moves the clock 10 s per round, so the
    # tasks a killed worker held are taken over by the next round's workers.
    await mf.worker.create(task_queue=queue, workflow=scheduled_run, lease=5.0)
    print("ready", flush=True)
    await mf.run_until_signal(grace=1.0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
