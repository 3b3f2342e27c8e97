"""Schedules fired by the engine (sql/48_schedules.sql, docs/schedules.md): from worker
processes that are killed and restarted, no fire inside the catch-up window is lost and none
runs twice; the Python API and the CLI steer them.

The fast test moves the engine's clock (hotmesh.fake_now, set for each worker process through
PGOPTIONS) ten seconds per round, so a minute of a schedule firing every second takes a few
rounds of process starts, not a wall-clock minute. The real-time version is marked slow.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from helpers import SQL, Workers, kill9, until
from hotmesh import MemFlow, errors

pytestmark = pytest.mark.timeout(240)

T0 = datetime(2031, 1, 1, tzinfo=UTC)  # in the future: an idle worker sleeps, not spins


@pytest.fixture
def workers(dsn: str, app: str, tmp_path: Path) -> Iterator[Workers]:
    """tests/workers/scheduled.py processes serving queue "sq" of the test's app."""
    procs = Workers("scheduled", dsn, app, "sq", logs=tmp_path, grace=5.0)
    yield procs
    procs.close()


def clock(at: datetime) -> dict[str, str]:
    """The environment that sets a worker process's engine clock to `at`."""
    return {"PGOPTIONS": f"-c hotmesh.fake_now={at.isoformat()}"}


def run_ids(schedule_id: str, fires: list[datetime]) -> list[str]:
    return [f"{schedule_id}@{at.astimezone(UTC):%Y-%m-%dT%H:%M:%S}Z" for at in fires]


def completed_runs(db: SQL, schedule_id: str) -> int:
    return int(
        db.one(
            "select count(*) from workflows where schedule_id = %s and status = 'completed'",
            schedule_id,
        )
    )


async def test_every_second_for_a_minute_across_killed_workers(db: SQL, workers: Workers) -> None:
    db.one("select set_config('hotmesh.fake_now', %s, false)", T0.isoformat())
    db.one(
        "select create_schedule('tick', '@every 1s', 'scheduled_run', '[\"t\"]', 'sq',"
        ' \'{"overlap": "allow", "catchup_window": 30}\')'
    )
    for round_ in range(1, 7):
        now = T0 + timedelta(seconds=10 * round_)
        pair = [workers.spawn(**clock(now)) for _ in range(2)]
        if round_ % 2:
            # Killed at once, whatever they did: the next round catches up.
            await asyncio.sleep(0.5)
        else:
            target = 10 * round_
            await until(lambda t=target: completed_runs(db, "tick") >= t, "runs", limit=60)
        for proc in pair:
            kill9(proc)
    # Two more workers at the last round's clock finish what the kills interrupted.
    pair = [workers.spawn(**clock(T0 + timedelta(seconds=60))) for _ in range(2)]
    await until(lambda: completed_runs(db, "tick") >= 60, "all 60 runs", limit=60)

    expected = run_ids("tick", [T0 + timedelta(seconds=s) for s in range(1, 61)])
    ids = [r[0] for r in db.rows("select id from jobs where schedule_id = 'tick' order by id")]
    assert ids == expected  # every fire of the minute, each once
    assert db.rows("select fires, skipped from schedules where id = 'tick'") == [(60, 0)]
    results = db.rows("select result from jobs where schedule_id = 'tick' order by id")
    assert [r[0] for r in results] == [f"t {i}" for i in expected]
    for proc in pair:
        kill9(proc)


def test_concurrent_claims_fire_each_fire_once(dsn: str, app: str, db: SQL) -> None:
    """Five claims at the same moment: the first holds the schedule, the others pass it by
    (SKIP LOCKED, no wait); once it commits nothing is due any more. A claim that fired and
    then rolled back (a worker killed mid-claim) leaves the fires to the next one."""
    db.one("select set_config('hotmesh.fake_now', %s, false)", T0.isoformat())
    db.one(
        "select create_schedule('five', '@every 1s', 'scheduled_run', '[\"f\"]', 'sq',"
        ' \'{"overlap": "allow"}\')'
    )
    conns = [psycopg.connect(dsn) for _ in range(5)]
    try:
        for conn in conns:
            conn.execute(sql.SQL("set search_path = {}").format(sql.Identifier(app)))
            conn.execute(
                "select set_config('hotmesh.fake_now', %s, false)",
                ((T0 + timedelta(seconds=5)).isoformat(),),
            )
            conn.commit()
        claim = "select count(*) from claim_tasks(array['other'], 'w', 1)"
        conns[0].execute(claim)  # fires 5 runs, holds the schedule row
        for conn in conns[1:]:
            conn.execute(claim)  # passes it by, does not wait
            assert conn.execute("select count(*) from jobs").fetchone() == (0,)
        conns[0].rollback()  # killed mid-claim: nothing of it stays
        for conn in conns[1:]:
            conn.rollback()
        conns[1].execute(claim)
        conns[1].commit()
        for conn in conns:
            conn.execute(claim)
            conn.commit()
    finally:
        for conn in conns:
            conn.close()
    ids = [r[0] for r in db.rows("select id from jobs where schedule_id = 'five' order by id")]
    assert ids == run_ids("five", [T0 + timedelta(seconds=s) for s in range(1, 6)])
    assert db.rows("select fires, skipped from schedules where id = 'five'") == [(5, 0)]


async def test_fires_older_than_the_catchup_window_are_dropped(db: SQL, workers: Workers) -> None:
    db.one("select set_config('hotmesh.fake_now', %s, false)", T0.isoformat())
    db.one(
        "select create_schedule('late', '@every 1s', 'scheduled_run', '[\"l\"]', 'sq',"
        ' \'{"overlap": "allow", "catchup_window": 5}\')'
    )
    # No worker for 20 s: the one that starts fires the last 5 s only.
    workers.spawn(**clock(T0 + timedelta(seconds=20)))
    await until(lambda: completed_runs(db, "late") >= 6, "the caught-up runs")
    ids = [r[0] for r in db.rows("select id from jobs where schedule_id = 'late' order by id")]
    assert ids == run_ids("late", [T0 + timedelta(seconds=s) for s in range(15, 21)])


async def test_python_api(mf: MemFlow, db: SQL) -> None:
    db.one("select set_config('hotmesh.fake_now', %s, false)", T0.isoformat())
    next_fire = await mf.schedule.create(
        "digest",
        "0 9 * * mon-fri",
        workflow_name="scheduled_run",
        args=["d"],
        task_queue="sq",
        timezone="America/New_York",
        overlap="buffer_one",
        catchup_window="10m",
        note="weekday mornings",
    )
    assert next_fire > datetime.now(UTC)
    row = await mf.schedule.get("digest")
    assert (
        row is not None
        and row.overlap == "buffer_one"
        and row.catchup_window == timedelta(minutes=10)
    )
    with pytest.raises(errors.DuplicateJobError):
        await mf.schedule.create("digest", "@daily", workflow_name="w", task_queue="sq")
    with pytest.raises(errors.InvalidArgument, match='minute field: "99"'):
        await mf.schedule.create("bad", "99 * * * *", workflow_name="w", task_queue="sq")
    with pytest.raises(errors.InvalidArgument, match="overlap must be"):
        await mf.schedule.create("bad", "@daily", workflow_name="w", task_queue="sq",
                                 overlap="queue")  # fmt: skip
    await mf.schedule.pause("digest")
    with pytest.raises(errors.IllegalTransition):
        await mf.schedule.pause("digest")
    assert (await mf.schedule.get("digest")).status == "paused"  # type: ignore[union-attr]
    await mf.schedule.resume("digest")
    handle = await mf.schedule.trigger("digest")
    assert handle.workflow_id.startswith("digest@")
    runs = await mf.workflow.list(task_queue="sq")
    assert [(r.id, r.schedule_id) for r in runs] == [(handle.workflow_id, "digest")]
    await mf.schedule.update("digest", "@every 1h", workflow_name="scheduled_run", task_queue="sq")
    assert (await mf.schedule.get("digest")).spec == "@every 1h"  # type: ignore[union-attr]
    with pytest.raises(errors.InvalidArgument, match=r"unknown option\(s\) \['overlaps'\]"):
        await mf.schedule.update("digest", "@daily", workflow_name="w", overlaps="skip")
    await mf.schedule.delete("digest")
    assert await mf.schedule.list() == []
    with pytest.raises(errors.WorkflowNotFound):
        await mf.schedule.delete("digest")


def test_cli(dsn: str, app: str) -> None:
    def hotmesh(*args: str) -> Any:
        out = subprocess.run(
            [sys.executable, "-m", "hotmesh.cli", *args, "--app", app, "--dsn", dsn, "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout)

    created = hotmesh("schedule", "create", "h", "@hourly", "scheduled_run", "--queue", "sq")
    assert created["next_fire_at"]
    assert [s["id"] for s in hotmesh("schedule", "list")] == ["h"]
    assert hotmesh("schedule", "trigger", "h")["workflow_id"].startswith("h@")
    hotmesh("schedule", "pause", "h")
    assert hotmesh("schedule", "list")[0]["status"] == "paused"
    hotmesh("schedule", "delete", "h")
    assert hotmesh("schedule", "list") == []


@pytest.mark.slow
async def test_every_second_for_a_real_minute(db: SQL, workers: Workers) -> None:
    """The real clock: killed every 10 s, restarted 3 s later (inside the window)."""
    start = db.one("select date_trunc('second', now()) + interval '2 seconds'")
    db.one(
        "select create_schedule('real', '@every 1s', 'scheduled_run', '[\"r\"]', 'sq',"
        ' \'{"overlap": "allow", "catchup_window": 30}\')'
    )
    for _ in range(6):
        pair = [workers.spawn() for _ in range(2)]
        await asyncio.sleep(10)
        for proc in pair:
            kill9(proc)
        await asyncio.sleep(3)
    end = db.one("select date_trunc('second', now())")
    fires = [start + timedelta(seconds=s) for s in range(int((end - start).total_seconds()))]
    expected = run_ids("real", fires)
    workers.spawn()

    def lost() -> list[str]:
        done = db.rows(
            "select id from workflows where id = any(%s) and status = 'completed'", expected
        )
        return sorted(set(expected) - {r[0] for r in done})

    await until(lambda: not lost(), "a completed run of every fire", limit=60)
    assert db.one("select skipped from schedules where id = 'real'") == 0  # none twice
