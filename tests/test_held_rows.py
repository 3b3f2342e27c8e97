"""No caller's transaction stops the workers (issue 13, D1): an application that changed a
workflow's entity and left its transaction open holds that workflow's row. The claim skips the
held row instead of waiting for it, so that workflow alone is delayed: proven from the lock
state (nobody waits on the holder), not from timing."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg import sql

from hotmesh import MemFlow

pytestmark = pytest.mark.timeout(90)


async def double(n: int) -> int:
    return n * 2


async def test_a_held_workflow_row_delays_that_workflow_alone(
    mf: MemFlow, db: Any, dsn: str, app: str
) -> None:
    held = await mf.workflow.start(
        workflow_name="double", args=[0], task_queue="d1", workflow_id="held"
    )
    holder = psycopg.connect(dsn)  # not autocommit: the transaction stays open
    try:
        holder.execute(
            sql.SQL("select {}.entity_merge('held', '{{\"held\": true}}')").format(
                sql.Identifier(app)
            )
        )
        holder_pid = holder.info.backend_pid
        blocked: list[Any] = []

        async def watch() -> None:
            # Every backend that waits on a lock the holder has (a claim would, at the job row).
            while True:
                blocked.extend(
                    db.rows(
                        "select pid, query from pg_stat_activity"
                        " where wait_event_type = 'Lock' and %s = any(pg_blocking_pids(pid))",
                        holder_pid,
                    )
                )
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        # One slot: the held workflow's activation is the oldest due task, first in every claim.
        await mf.worker.create(task_queue="d1", workflow=double, concurrency=1)
        others = [
            await mf.workflow.start(
                workflow_name="double", args=[i], task_queue="d1", workflow_id=f"other-{i}"
            )
            for i in range(1, 21)
        ]
        results = [await h.result(timeout=60) for h in others]
        watcher.cancel()
        assert results == [2 * i for i in range(1, 21)]
        assert blocked == []
        # The held workflow waited alone: still pending, its activation ready, not leased.
        assert await held.status() == "pending"
        assert db.rows(
            "select kind, thread, state, lease_owner from tasks where job_id = 'held'"
        ) == [("workflow", "main", "ready", None)]
        holder.commit()
        assert await held.result(timeout=30) == 0
        assert db.one("select context -> 'held' from jobs where id = 'held'") is True
    finally:
        holder.close()
