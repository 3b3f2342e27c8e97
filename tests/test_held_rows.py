"""No caller's transaction stops the workers (issue 13, D1): an application that changed a
workflow's entity and left its transaction open holds that workflow's row. The claim skips the
held row instead of waiting for it, so that workflow alone is delayed: proven from the lock
state (nobody waits on the holder), not from timing. And more held rows than a worker's pool has
connections take no more than its patient lane (docs/reliability.md)."""

from __future__ import annotations

import asyncio
from typing import Any, LiteralString

import psycopg
import pytest
from psycopg import sql

from helpers import until
from hotmesh import MemFlow, _db, workflow

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


# More held rows than a worker's pool has connections: the workflows of
# test_held_rows_never_take_the_workers_pool. `stall_held` runs an activity that waits at
# the gate (the test opens it once their rows are held), then, with `write`, writes its
# entity (a call in the middle of an activation) and ends (its completion). The gate runs
# inline (its queue is served in the same process), in the activation's slot.
GATE: dict[str, asyncio.Event] = {}
ARRIVED: list[str] = []


async def stall_gate() -> str:
    ARRIVED.append("gate")
    await GATE["open"].wait()
    return "through"


async def stall_held(write: bool) -> str:
    passed = str(await workflow.proxy_activities(task_queue="stall-gate").stall_gate())
    if write:
        await (await workflow.entity()).increment("n")
    return passed


async def stall_quick(i: int) -> int:
    return i


async def test_held_rows_never_take_the_workers_pool(
    app: str, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An application holds, in one open transaction, the rows of 8 workflows running on a
    worker whose pool has 4 connections (16 slots); each of them then meets its row, 6 with
    an entity write mid-activation and 2 with their completion. 20 unrelated workflows on the
    same worker all complete meanwhile, at most `Database.lane` of its connections wait long
    for the holder at any time, and the held workflows complete after the COMMIT.

    The patient lane's lock_timeout is raised to 60 s here, as if the held calls waited for
    the holder for as long as it holds: a held call that waited with one of the pool's
    connections, or inside a group commit, would then stop every other workflow for the whole
    hold, and the unrelated ones could not complete (checked by outcome, not by speed)."""
    monkeypatch.setattr(_db, "LOCK_TIMEOUT_MS", 60_000)
    GATE["open"] = asyncio.Event()
    ARRIVED.clear()
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False, pool_size=4)
    schema = sql.Identifier(app)
    try:
        await mf.worker.create(
            task_queue="stall", workflow=[stall_held, stall_quick], concurrency=16
        )
        await mf.worker.register_activities(task_queue="stall-gate", activities=[stall_gate])
        held = [f"held-{n}" for n in range(8)]
        for n, workflow_id in enumerate(held):
            await mf.workflow.start(
                workflow_name="stall_held", args=[n < 6], task_queue="stall",
                workflow_id=workflow_id,
            )  # fmt: skip
        async with (
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as watcher,
            await psycopg.AsyncConnection.connect(dsn) as holder,
        ):

            async def count(query: LiteralString, *params: object) -> int:
                cur = await watcher.execute(sql.SQL(query).format(schema), params)
                return int((await cur.fetchone() or [0])[0])

            await until(lambda: len(ARRIVED) == len(held), "the held ones at the gate")
            for workflow_id in held:
                await holder.execute(
                    sql.SQL("select {}.entity_merge(%s, '{{\"held\": true}}')").format(schema),
                    (workflow_id,),
                )
            GATE["open"].set()
            # Each held workflow's call meets its row (or waits for the lane's connection).
            blocked = "select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))"
            await until(
                lambda: count(blocked, holder.info.backend_pid), "a call to wait for the holder"
            )
            # Started by SQL: a client call on the worker's pool would wait for it too.
            unrelated = [f"quick-{i}" for i in range(20)]
            await watcher.execute(
                sql.SQL(
                    "select {}.start_workflow('stall_quick', jsonb_build_array(i), 'stall',"
                    " 'quick-' || i) from generate_series(0, 19) as i"
                ).format(schema)
            )
            most = 0

            async def unrelated_done() -> bool:
                nonlocal most
                most = max(
                    most,
                    await count(
                        blocked + " and now() - query_start > interval '1 second'",
                        holder.info.backend_pid,
                    ),
                )
                done = "select count(*) from {}.jobs where id = any(%s) and status = 'completed'"
                return await count(done, unrelated) == len(unrelated)

            await until(unrelated_done, "the unrelated workflows to complete while held")
            assert holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
            assert (
                await count(
                    "select count(*) from {}.jobs where id = any(%s) and status = 'completed'", held
                )
                == 0
            )
            assert most <= mf._db.lane, f"{most} connections waited for the holder at once"
            await holder.commit()
            for workflow_id in held:
                assert await mf.workflow.get_handle(workflow_id).result() == "through"
            assert (
                await count(
                    "select count(*) from {}.jobs where id = any(%s) and context -> 'n' = '1'", held
                )
                == 6
            )
    finally:
        await mf.close(grace=2.0)
