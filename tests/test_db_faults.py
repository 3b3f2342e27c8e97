"""Database faults under load: the server crashes and restarts (`pg_ctl restart -m immediate`),
every worker connection is terminated (`pg_terminate_backend`), again and again, and the
listener connections are dropped. Two worker processes (tests/workers/fleet.py) serve the
workflows throughout; nothing helps them: they reconnect on their own (pool, claim loop,
listener).

Every workflow completes with its expected result; none is lost and none doubled: each has
exactly its steps, its entity was changed exactly three times, every side effect ran, and none
ran again after its step was recorded (re-runs of unrecorded activities are counted and
reported: activities run at least once).

The restart needs the cluster the tests run against (HOTMESH_PGDIR, set by `make test` /
`hotmesh db run`); with an external DATABASE_URL those tests are skipped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from fleet_harness import (
    FATAL,
    Fleet,
    Observer,
    expect_clean,
    outcome,
    pgdir,
    send_signals,
    start_workflows,
    wait_until,
    with_application_name,
)
from helpers import sleep_until
from hotmesh import MemFlow
from hotmesh._db import Database
from hotmesh.devtools import pgcluster

LEASE = 2.0  # an activation cut off by a fault runs again once its lease expires
COMPLETED = "select count(*) from jobs where status = 'completed'"
HOOKS_DONE = "select count(*) from threads where status = 'completed'"
# The workers' connections (pools, listeners, the effects' pools), not the observer's.
TERMINATE = (
    "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity"
    " where application_name = %s and pid <> pg_backend_pid()"
)
TERMINATE_LISTENERS = TERMINATE + " and query like 'listen %%'"

needs_cluster = pytest.mark.skipif(
    pgdir() is None, reason="needs the cluster's directory (HOTMESH_PGDIR): run under make test"
)


def finish(obs: Observer, fleet: Fleet, total: int, limit: float, what: str) -> dict[str, int]:
    """Send the second half of the signals, wait for every workflow, check and report."""
    send_signals(obs, list(range(1, total + 1, 2)))
    wait_until(obs, COMPLETED, total, limit)
    assert fleet.alive(), fleet.log()[-3000:]
    figures = outcome(obs, total)
    figures["db_errors"] = fleet.count(r"event=db_error")
    # Every workflow may be done before a listener's backoff (0.1 s doubling to 5 s) brings it
    # back: give both processes' listeners that long to report their reconnect.
    sleep_until(lambda: fleet.count(r"event=reconnect") >= 2, 12)
    figures["reconnects"] = fleet.count(r"event=reconnect")
    print(f"{what}: {figures}")
    expect_clean(figures)
    assert not FATAL.search(fleet.log()), FATAL.findall(fleet.log())[:5]
    return figures


def begin(obs: Observer, fleet: Fleet, total: int) -> None:
    start_workflows(obs, 1, total)
    send_signals(obs, list(range(2, total + 1, 2)))  # kept until their workflows wait
    fleet.start(processes=2, concurrency=16, lease=LEASE)


def restart_mid_load(obs: Observer, fleet: Fleet, total: int, limit: float) -> dict[str, int]:
    directory = pgdir()
    assert directory is not None
    begin(obs, fleet, total)
    # In the middle: a third of the hooks are done, most workflows are in flight.
    wait_until(obs, HOOKS_DONE, total // 3, limit)
    in_flight = total - int(obs.one(COMPLETED))
    pgcluster.restart(directory, "immediate")
    figures = finish(obs, fleet, total, limit, "restart")
    figures["unfinished_at_restart"] = in_flight
    print(f"restart: {in_flight} of {total} workflows unfinished when the server restarted")
    # Both processes lost their connections and came back by themselves.
    assert figures["db_errors"] > 0 and figures["reconnects"] >= 2, figures
    return figures


@needs_cluster
@pytest.mark.serial  # the restart cuts off every connection of the cluster
@pytest.mark.timeout(300)
async def test_immediate_restart_mid_load_200(obs: Observer, fleet: Fleet) -> None:
    await asyncio.to_thread(restart_mid_load, obs, fleet, 200, 120.0)


@needs_cluster
@pytest.mark.slow
@pytest.mark.serial
@pytest.mark.timeout(900)
async def test_immediate_restart_mid_load_1000(obs: Observer, fleet: Fleet) -> None:
    await asyncio.to_thread(restart_mid_load, obs, fleet, 1000, 600.0)


def terminate_storm(
    obs: Observer, fleet: Fleet, total: int, rounds: int, query: str, limit: float
) -> tuple[dict[str, int], int]:
    """Terminate the matching worker connections `rounds` times while the load runs;
    returns the figures and how many connections were terminated."""
    begin(obs, fleet, total)
    wait_until(obs, HOOKS_DONE, 1, limit)  # the workers are connected and busy
    terminated = 0
    for _ in range(rounds):
        terminated += int(obs.one(query, fleet.application_name))
        # Once the workers have reconnected, terminate the new connections.
        time.sleep(0.5)
    return finish(obs, fleet, total, limit, "terminate"), terminated


async def test_terminate_every_worker_connection_repeatedly(obs: Observer, fleet: Fleet) -> None:
    figures, terminated = await asyncio.to_thread(
        terminate_storm, obs, fleet, 200, 6, TERMINATE, 120.0
    )
    assert terminated > 0 and figures["reconnects"] >= 2, (terminated, figures)


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_terminate_storm_1000(obs: Observer, fleet: Fleet) -> None:
    figures, terminated = await asyncio.to_thread(
        terminate_storm, obs, fleet, 1000, 30, TERMINATE, 600.0
    )
    assert terminated > 0 and figures["reconnects"] >= 2, (terminated, figures)


async def test_listener_connection_dropped(obs: Observer, fleet: Fleet) -> None:
    figures, terminated = await asyncio.to_thread(
        terminate_storm, obs, fleet, 200, 4, TERMINATE_LISTENERS, 120.0
    )
    assert terminated >= 2, terminated
    # Every dropped listener came back (one reconnect each); nothing else was cut off.
    dropped = fleet.count(r"event=db_error during=listen")
    listener_reconnects = fleet.count(r"event=reconnect channel=")
    assert dropped == listener_reconnects == terminated, (dropped, listener_reconnects, figures)
    assert fleet.count(r"event=db_error during=(claim|run|heartbeat)") == 0, figures


async def test_calls_after_terminated_connections_get_live_ones(dsn: str, app: str) -> None:
    """Every idle connection of a pool is terminated; the next calls get live ones at once:
    the dead ones are discarded and replaced without the pool's per-connection backoff (1, 2,
    4, ... s), which with six dead connections would outlast this pool's 3 s timeout."""
    tag = f"hm-dead-pool-{app}"  # this test's connections only (`pytest -n` runs others beside)
    pool = AsyncConnectionPool(
        with_application_name(dsn, tag),
        min_size=6,
        max_size=6,
        timeout=3.0,
        kwargs={"autocommit": True},
        open=False,
    )
    await pool.open(wait=True)
    try:
        db = Database(pool, app)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            pids = [
                row[0]
                for row in await (
                    await admin.execute(
                        "select pid from pg_stat_activity where application_name = %s", [tag]
                    )
                ).fetchall()
            ]
            assert len(pids) == 6
            await admin.execute(
                "select pg_terminate_backend(pid) from unnest(%s::int[]) pid", [pids]
            )
            async with asyncio.timeout(10):  # the backends are gone: their sockets closed
                while (  # noqa: ASYNC110 (server processes: no event to wait on)
                    await (
                        await admin.execute(
                            "select count(*) from pg_stat_activity where pid = any(%s)", [pids]
                        )
                    ).fetchone()
                )[0]:
                    await asyncio.sleep(0.02)
        workflow_id = await db.start_workflow("w", [], "q", "after-terminate", None, {})
        statuses = await asyncio.gather(*(db.workflow_status(workflow_id) for _ in range(6)))
        assert statuses == ["pending"] * 6
    finally:
        await pool.close()


async def test_heartbeat_never_waits_for_a_row_lock(mf: MemFlow, db: Any, dsn: str) -> None:
    """A task row locked by another transaction (a completion, a wake-up, a takeover in
    progress) does not block the heartbeat: it is reported held by its committed token and its
    lease is left for the next beat. (Waiting deadlocked with group commits.)"""
    await mf.workflow.start(workflow_name="w", task_queue="q", workflow_id="beat")
    await mf.workflow.start(workflow_name="w", task_queue="q", workflow_id="beat-2")
    claimed = db.rows("select task_id, lease_token from claim_tasks(array['q'], 'me', 2)")
    (locked_id, locked_token), (free_id, free_token) = sorted(claimed)
    before = dict(db.rows("select id, lease_expires_at from tasks"))
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        await holder.execute(
            sql.SQL("select from {}.tasks where id = %s for update").format(
                sql.Identifier(mf.app_id)
            ),
            [locked_id],
        )
        db.conn.execute("set lock_timeout = '5s'")  # waiting would fail the call, not hang
        held = db.one(
            "select heartbeat(%s::bigint[], %s::uuid[], interval '1 hour')",
            [locked_id, free_id],
            [locked_token, free_token],
        )
        await holder.rollback()
    assert sorted(held) == [locked_id, free_id]
    after = dict(db.rows("select id, lease_expires_at from tasks"))
    assert after[locked_id] == before[locked_id]  # skipped this time
    assert after[free_id] > before[free_id]  # extended
    # Once the lock is gone the next beat extends it too; a wrong token holds nothing.
    assert db.one(
        "select heartbeat(%s::bigint[], %s::uuid[], interval '1 hour')",
        [locked_id],
        [locked_token],
    ) == [locked_id]
    assert db.one("select lease_expires_at from tasks where id = %s", locked_id) > before[locked_id]
    assert (
        db.one(
            "select heartbeat(%s::bigint[], %s::uuid[], interval '1 hour')",
            [locked_id, free_id],
            [free_token, locked_token],
        )
        == []
    )
