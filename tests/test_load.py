"""Load: many concurrent workflows with hooks and signals, served by two worker processes
(tests/workers/fleet.py) at once. All of them are started in one statement, so they compete
for the same queue, the same signal lock and their own job rows from the first moment; half of
the signals arrive before their wait exists (kept), half while the workflows wait (delivered).

Everything completes: no stuck job, no task or signal left over, each step and each entity
change recorded exactly once, each side effect run and none run again after its step was
recorded; no deadlock (pg_stat_database) and no error surfaced in the workers' logs.
`make test` runs 200 workflows (32 worker slots on one queue, so every claim, signal and
completion still contends); `make test-slow` runs 500 and 10,000.

A fan-out load (each workflow runs 8 remote activities at once, completed by two activity
workers) checks the same of group commits that wake the same workflows concurrently: 100
workflows in `make test`, 250 in `make test-slow`.
"""

from __future__ import annotations

import asyncio

import pytest
from psycopg.types.json import Jsonb

from fleet_harness import (
    FATAL,
    Fleet,
    Observer,
    completed,
    deadlocks,
    expect_clean,
    outcome,
    send_signals,
    start_workflows,
    wait_until,
)


def run_load(obs: Observer, fleet: Fleet, total: int, limit: float) -> dict[str, int]:
    before = deadlocks(obs)
    start_workflows(obs, 1, total)
    send_signals(obs, list(range(2, total + 1, 2)))  # before anyone waits: kept
    fleet.start(processes=2, concurrency=16)
    # The other half once their workflows are well under way: most are delivered to a wait.
    wait_until(obs, "select count(*) from threads where status = 'completed'", total // 2, limit)
    send_signals(obs, list(range(1, total + 1, 2)))
    done = wait_until(obs, "select count(*) from jobs where status = 'completed'", total, limit)
    assert fleet.alive(), fleet.log()[-2000:]
    figures = outcome(obs, total)
    figures["deadlocks"] = deadlocks(obs) - before
    figures["delivered"] = int(
        obs.one("select count(*) from steps where kind = 'signal' and name like 'go-%%'")
    )
    print(f"load: {figures}")
    assert done == total == completed(obs), figures
    expect_clean(figures)
    assert figures["deadlocks"] == 0, figures
    assert not FATAL.search(fleet.log()), FATAL.findall(fleet.log())[:5]
    # Nothing went wrong that the workers had to recover from.
    assert fleet.count(r"event=(db_error|lease_lost)") == 0, fleet.log()[-2000:]
    return figures


@pytest.mark.timeout(300)
async def test_load_200_workflows_two_workers(obs: Observer, fleet: Fleet) -> None:
    await asyncio.to_thread(run_load, obs, fleet, 200, 240.0)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_load_500_workflows_two_workers(obs: Observer, fleet: Fleet) -> None:
    await asyncio.to_thread(run_load, obs, fleet, 500, 240.0)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_load_10000_workflows_two_workers(obs: Observer, fleet: Fleet) -> None:
    await asyncio.to_thread(run_load, obs, fleet, 10_000, 1500.0)


def run_fanout(obs: Observer, fleet: Fleet, total: int, width: int, limit: float) -> None:
    before = deadlocks(obs)
    obs.rows(
        "select start_workflow('fleet_fanout', jsonb_build_array(%s, 'fq'), 'lq', 'f-' || i)"
        " from generate_series(1, %s) as i",
        width,
        total,
    )
    fleet.start(processes=2, concurrency=16)
    fleet.start(processes=2, concurrency=16, role="activities", queue="fq")
    done = wait_until(obs, "select count(*) from jobs where status = 'completed'", total, limit)
    expected = [f"r{k} done" for k in range(width)]
    figures = {
        "workflows": total,
        "completed": done,
        "wrong_result": obs.one(
            "select count(*) from jobs where result is distinct from %s::jsonb", Jsonb(expected)
        ),
        "wrong_step_count": obs.one(
            "select count(*) from (select j.id from jobs as j left join steps as s"
            " on s.job_id = j.id and s.status = 'completed' group by j.id"
            " having count(s.seq) <> %s) as x",
            width,
        ),
        "tasks_left": obs.one("select count(*) from tasks"),
        "effects_lost": obs.one(
            "select count(*) from steps as s where not exists (select from effects as e"
            " where e.job_id = s.job_id and e.name = s.input ->> 0)"
        ),
        "effects_doubled": obs.one(
            "select count(*) from effects as e join steps as s on s.job_id = e.job_id"
            " and s.input ->> 0 = e.name where e.at > s.completed_at"
        ),
        "deadlocks": deadlocks(obs) - before,
    }
    print(f"fan-out: {figures}")
    assert done == total, figures
    assert all(figures[k] == 0 for k in figures if k not in ("workflows", "completed")), figures
    assert not FATAL.search(fleet.log()), FATAL.findall(fleet.log())[:5]
    assert fleet.count(r"event=(db_error|lease_lost)") == 0, fleet.log()[-2000:]


@pytest.mark.timeout(300)
async def test_fanout_completions_by_two_activity_workers(obs: Observer, fleet: Fleet) -> None:
    await asyncio.to_thread(run_fanout, obs, fleet, 100, 8, 240.0)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_fanout_250_workflows_by_two_activity_workers(obs: Observer, fleet: Fleet) -> None:
    await asyncio.to_thread(run_fanout, obs, fleet, 250, 8, 240.0)
