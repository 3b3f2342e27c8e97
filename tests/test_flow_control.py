"""Flow control (docs/flow-control.md): queue and per-key limits held by worker processes
claiming at once, keys served in rotation, and the Python and CLI ways to set limits. The
token bucket and the claim's rules under a fake clock are in tests/sql/34_queue_limits.sql.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from helpers import SQL, Workers, until, until_row
from hotmesh import InvalidArgument, MemFlow, activity, workflow
from test_cli import hotmesh


async def fan_out(key: str, width: int) -> list[int]:
    """`width` calls of the activity `tracked` at once, all under concurrency key `key`."""
    acts = workflow.proxy_activities(task_queue="llm", concurrency_key=key)
    return list(await asyncio.gather(*(acts.tracked(key) for _ in range(width))))


async def test_limits_hold_across_worker_processes(
    mf: MemFlow, db: SQL, dsn: str, app: str, tmp_path: Path
) -> None:
    """4 processes claim from one queue limited to 4 running, 2 per key: what the activities
    count from inside never exceeds either limit, and reaches both (they bind)."""
    db.conn.execute("create table inside (id bigint generated always as identity, key text)")
    db.conn.execute("create table observed (key text, on_queue integer, on_key integer)")
    await mf.queue.set_limits("llm", max_running=4, key_max_running=2)
    procs = Workers("limited", dsn, app, "llm", "8", logs=tmp_path)
    try:
        for _ in range(4):
            procs.spawn()
        await mf.worker.create(task_queue="main", workflow=fan_out)
        handles = [
            await mf.workflow.start(workflow_name="fan_out", args=[k, 16], task_queue="main")
            for k in ("a", "b", "c")
        ]
        for handle in handles:
            assert len(await handle.result(timeout=120)) == 16
        assert procs.alive(), procs.log()
    finally:
        procs.close()
    on_queue, on_key, runs = db.conn.execute(
        "select max(on_queue), max(on_key), count(*) from observed"
    ).fetchone() or (None, None, None)
    assert runs == 48
    assert (on_queue, on_key) == (4, 2), "the limits hold, and bind"


async def note(key: str) -> None:
    """Records that a workflow of `key` started (an inline activity: one row per run)."""
    await workflow.proxy_activities(activities=[noted]).noted(key)


async def noted(key: str) -> None:
    _NOTED.append((key, activity.info().workflow_id))


_NOTED: list[tuple[str, str]] = []  # (key, workflow id) of each run of `noted`, in order


@pytest.mark.parametrize(
    ("big", "small_keys", "per_key"),
    [pytest.param(400, 20, 5), pytest.param(10_000, 50, 10, marks=pytest.mark.slow)],
)
async def test_busy_key_does_not_starve_others(
    mf: MemFlow, db: SQL, big: int, small_keys: int, per_key: int
) -> None:
    """One key with a long backlog, queued first, and many keys with a few tasks each: every
    small key starts before the big key's backlog is half done (in plain order it would start
    after all of it)."""
    _NOTED.clear()
    await mf.queue.set_limits("fair", max_running=8)
    db.conn.execute(
        "select start_workflow('note', jsonb_build_array('big'), 'fair', null, null,"
        ' \'{"concurrency_key": "big"}\') from generate_series(1, %s)',
        (big,),
    )
    db.conn.execute(
        "select start_workflow('note', jsonb_build_array(k), 'fair', null, null,"
        " jsonb_build_object('concurrency_key', k))"
        " from generate_series(1, %s) as s, lateral (select 'k' || s as k) as key,"
        " generate_series(1, %s)",
        (small_keys, per_key),
    )
    await mf.worker.create(task_queue="fair", workflow=note, concurrency=8)
    total = big + small_keys * per_key
    await until(lambda: len(_NOTED) >= total, f"{total} workflows started", limit=600)
    order = [key for key, _ in _NOTED]
    half_done = [i for i, key in enumerate(order) if key == "big"][big // 2]
    last_first_start = max(order.index(f"k{s}") for s in range(1, small_keys + 1))
    assert last_first_start < half_done
    await until_row(db, "select count(*) = 0 from tasks where task_queue = 'fair'")


async def test_set_limits_python(mf: MemFlow, db: SQL) -> None:
    """mf.queue.set_limits / limits, and bad input: a clear error, nothing changed."""
    await mf.queue.set_limits("llm", max_running=4, rate=60, per="1 minute")
    [row] = await mf.queue.limits()
    assert (row.task_queue, row.max_running, row.rate, row.per.total_seconds()) == (
        "llm", 4, 60, 60.0,
    )  # fmt: skip
    assert (row.running, row.tokens, row.key_max_running) == (0, 60.0, None)
    assert (row.key_rate, row.key_per) == (None, None)
    await mf.queue.set_limits("keyed", key_rate=5, key_per="1s")
    assert [
        (r.key_rate, r.key_per) for r in await mf.queue.limits() if r.task_queue == "keyed"
    ] == [(5, timedelta(seconds=1))]
    await mf.queue.set_limits("keyed")
    bad_inputs: list[dict[str, Any]] = [
        {"max_running": 0}, {"max_running": -1}, {"rate": 5}, {"rate": 0, "per": 1},
        {"key_rate": 0, "key_per": 1}, {"key_rate": 5}, {"key_rate": 5, "key_per": 0},
    ]  # fmt: skip
    for bad in bad_inputs:
        with pytest.raises(InvalidArgument):
            await mf.queue.set_limits("llm", **bad)
    assert [r.max_running for r in await mf.queue.limits()] == [4], "nothing changed"
    with pytest.raises(InvalidArgument):
        await mf.queue.set_limits("llm", rate=1, per="soon")
    with pytest.raises(InvalidArgument):
        await mf.workflow.start(workflow_name="w", task_queue="llm", concurrency_key="")
    await mf.queue.set_limits("llm")
    assert await mf.queue.limits() == []


async def test_set_limits_cli(dsn: str, app: str, db: SQL) -> None:
    """`hotmesh queue limits`: set, show, refuse bad input, clear."""
    done = await hotmesh(dsn, app, "queue", "limits", "llm", "--max-running", "4", "--rate",
                         "60", "--per", "1m", "--key-max-running", "2", "--key-rate", "5",
                         "--key-per", "1s")  # fmt: skip
    assert done.code == 0, done.err
    assert done.out.splitlines()[1].split() == [
        "llm", "0", "4", "60/1m00s", "60.00", "2", "5/1s"
    ]  # fmt: skip
    bad = await hotmesh(dsn, app, "queue", "limits", "llm", "--max-running", "0")
    assert bad.code != 0
    assert "max_running must be >= 1" in bad.err
    assert db.one("select max_running from queue_limits") == 4, "nothing changed"
    cleared = await hotmesh(dsn, app, "queue", "limits", "llm", "--clear")
    assert (cleared.code, cleared.out.strip()) == (0, "no limits on queue llm")
