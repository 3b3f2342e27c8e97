"""No caller's transaction stalls the workers (issue 13): while two worker processes serve
workflows, another connection, as the `<app>_app` role, calls each function that role may
execute (read from the catalog, so a new function is covered or this test names it) on one
workflow and leaves its transaction open. Unrelated workflows keep completing at >= 50 % of
the rate measured with nothing held just before (half as long as the hold, at least 0.5 s),
and the held workflow finishes after the COMMIT. An unrelated workflow holds its worker slot
for an inline activity of 0.1 s, so the rate counts free slots (what a stall would take) more
than CPU time on a shared machine.

The rates are measured here and printed as a table (`pytest -s`, or the report on failure);
they are compared with each other, never with a wall-clock bound. Lock waits are observed in
pg_stat_activity / pg_blocking_pids: how many worker backends waited on the holder at once.

`make test` runs a short version: every call held at once, each on its own parked workflow, for
2 s, against the rate of the 2 s before (about 6 s in all); it shows that no held call takes a
worker slot from unrelated workflows. `make test-slow` holds each call alone for 10 s while
batches of 30 workflows run back to back (about 1,000 workflows and more), on a workflow that
is running: it writes its entity and sleeps in rounds during the hold, so its worker meets the
held row; the table counts those lock waits (`waiters`) and the calls that gave up after
lock_timeout (`lock_busy`). test_a_worker_waits_for_a_held_row_at_most_lock_timeout shows
that meeting in `make test`.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import LiteralString

import psycopg
import pytest
from psycopg import sql

from fleet_harness import Observer, with_application_name
from helpers import Workers, sleep_until, until
from hotmesh import MemFlow
from hotmesh._db import LOCK_TIMEOUT_MS

WORKER_APP_NAME = "hm-chaos"
# One call per function the app role may execute; %(id)s is the held workflow. A function that
# is missing here fails the test: add the call that holds what it locks.
CALLS: dict[str, LiteralString] = {
    "engine_version": "select * from engine_version()",
    "engine_clock": "select * from engine_clock()",
    "retry_delay": "select * from retry_delay('{}'::jsonb, 2)",
    "get_setting": "select * from get_setting('default_retention')",
    "start_workflow": "select * from start_workflow('chaos_main', '[0]', 'cq',"
    " %(id)s || '-started', null, '{}')",
    "start_workflows": "select * from start_workflows(jsonb_build_array(jsonb_build_object("
    "'workflow_name', 'chaos_main', 'args', '[0]'::jsonb, 'task_queue', 'cq',"
    " 'workflow_id', %(id)s || '-batch')))",
    "workflow_status": "select * from workflow_status(%(id)s)",
    "workflow_outcome": "select * from workflow_outcome(%(id)s)",
    "get_workflow": "select * from get_workflow(%(id)s)",
    "workflow_waits": "select * from workflow_waits(%(id)s)",
    "workflow_history": "select * from workflow_history(%(id)s)",
    "waits_text": "select * from waits_text('[]')",
    "workflow_blocker": "select * from workflow_blocker('1'::xid)",
    "signal": "select * from signal('done', '\"held\"', %(id)s, %(id)s || '-done')",
    "hook": "select * from hook(%(id)s, 'chaos_hook', '[]', 'cq', null)",
    "cancel_workflow": "select * from cancel_workflow(%(id)s, 'chaos test', false, false)",
    "entity_set": "select * from entity_set(%(id)s, '1', 'set', null)",
    "entity_merge": "select * from entity_merge(%(id)s, '{\"held\": true}', null)",
    "entity_get": "select * from entity_get(%(id)s, null)",
    "entity_delete": "select * from entity_delete(%(id)s, 'flag', null)",
    "entity_append": "select * from entity_append(%(id)s, 'list', '4', null)",
    "entity_prepend": "select * from entity_prepend(%(id)s, 'list', '0', null)",
    "entity_remove": "select * from entity_remove(%(id)s, 'list', 0, null)",
    "entity_increment": "select * from entity_increment(%(id)s, 'k', 1, null)",
    "entity_toggle": "select * from entity_toggle(%(id)s, 'flag', null)",
    "entity_set_if_not_exists": "select * from entity_set_if_not_exists(%(id)s, 'once', '1', null)",
    "entity_history": "select * from entity_history(%(id)s)",
    "entity_find": "select * from entity_find('chaos', '{}', 10, 0)",
    "entity_find_by_condition": "select * from entity_find_by_condition('chaos', 'k', '>=',"
    " '0', 10, 0)",
    "entity_find_by_id": "select * from entity_find_by_id('chaos', %(id)s)",
    "export_workflow": "select * from export_workflow(%(id)s)",
    "workflow_runs": "select * from workflow_runs(%(id)s)",
    "run_history": "select * from run_history(%(id)s, 1)",
    "get_queue_limits": "select * from get_queue_limits()",
    "queue_keys": "select * from queue_keys('cq')",
    "export_workflows": "select * from export_workflows(array['chaos_held'], null, null, 5)",
    "cron_next": "select * from cron_next('*/5 * * * *', 'UTC', now())",
    "create_schedule": "select * from create_schedule(%(id)s || '-c', '@every 1h', 'chaos_main',"
    " '[0]', 'cq')",
    # The others on a schedule of their own, created first (a materialized CTE runs first).
    "update_schedule": "with s as materialized (select create_schedule(%(id)s || '-u',"
    " '@every 1h', 'chaos_main', '[0]', 'cq')) select update_schedule(%(id)s || '-u',"
    " '@every 2h', 'chaos_main', '[1]', 'cq') from s",
    "pause_schedule": "with s as materialized (select create_schedule(%(id)s || '-p',"
    " '@every 1h', 'chaos_main', '[0]', 'cq')) select pause_schedule(%(id)s || '-p') from s",
    "resume_schedule": "with s as materialized (select create_schedule(%(id)s || '-r',"
    " '@every 1h', 'chaos_main', '[0]', 'cq', '{\"paused\": true}'))"
    " select resume_schedule(%(id)s || '-r') from s",
    "trigger_schedule": "with s as materialized (select create_schedule(%(id)s || '-t',"
    " '@every 1h', 'chaos_main', '[0]', 'cq')) select trigger_schedule(%(id)s || '-t') from s",
    "delete_schedule": "with s as materialized (select create_schedule(%(id)s || '-d',"
    " '@every 1h', 'chaos_main', '[0]', 'cq')) select delete_schedule(%(id)s || '-d') from s",
}
# The human task functions need a task, which the held workflows here do not ask for: they are
# held, each on a task of its own, by tests/test_human_tasks.py
# (test_reviewers_open_transactions_never_stall_the_workers).
HELD_ELSEWHERE = {
    "list_human_tasks",
    "get_human_task",
    "claim_human_task",
    "claim_next_human_task",
    "release_human_task",
    "reassign_human_task",
    "comment_human_task",
    "resolve_human_task",
}
FATAL = re.compile(r"event=(crash|stuck)|deadlock", re.IGNORECASE)


@dataclass
class Phase:
    call: str
    started: int = 0
    seconds: float = 0.0
    waiters: int = 0  # most worker backends seen waiting on the holder at once
    busy: int = 0  # worker calls that met the lock_timeout (event=lock_busy) meanwhile
    held_status: str = ""
    unheld: float = 0.0  # the rate measured just before, with nothing held

    @property
    def rate(self) -> float:
        return self.started / self.seconds


class Chaos:
    """The test's side: the observer connection, the workflows it starts and counts."""

    def __init__(
        self, obs: Observer, batch: int, hold: float, rounds: int, pause: float = 0.1
    ) -> None:
        self.obs, self.batch, self.hold, self.rounds = obs, batch, hold, rounds
        self.pause = pause
        self.next = 1

    def run_batches(
        self, phase: Phase, holders: Sequence[int] = (), seconds: float | None = None
    ) -> None:
        """Batches of unrelated workflows, back to back, until `seconds` (default: `hold`)
        have passed: each batch starts in one statement and is counted once all of it
        completed."""
        seconds = self.hold if seconds is None else seconds
        began = time.monotonic()
        while True:
            first, last = self.next, self.next + self.batch - 1
            self.next = last + 1
            self.obs.rows(
                "select start_workflow('chaos_main', jsonb_build_array(i), 'cq', 'c-' || i)"
                " from generate_series(%s::integer, %s::integer) as i",
                first,
                last,
            )
            ids = [f"c-{i}" for i in range(first, last + 1)]

            def done(ids: list[str] = ids) -> bool:
                if holders:
                    phase.waiters = max(phase.waiters, self.waiters(*holders))
                left = self.obs.one(
                    "select count(*) from jobs where id = any(%s) and status <> 'completed'", ids
                )
                return int(left) == 0

            assert sleep_until(done, 120, every=0.01), f"batch {first}..{last} did not complete"
            phase.started += len(ids)
            phase.seconds = time.monotonic() - began
            if phase.seconds >= seconds:
                return

    def waiters(self, *holders: int) -> int:
        """Worker backends waiting for a lock that one of `holders` holds."""
        return int(
            self.obs.one(
                "select count(*) from pg_stat_activity where application_name = %s"
                " and wait_event_type = 'Lock' and pg_blocking_pids(pid) && %s::integer[]",
                WORKER_APP_NAME,
                list(holders),
            )
        )

    def start_held(self, workflow_id: str, rounds: int | None = None) -> None:
        self.obs.rows(
            "select start_workflow('chaos_held', jsonb_build_array(%s::integer, %s::float),"
            " 'cq', %s, 'chaos', '{}')",
            self.rounds if rounds is None else rounds,
            self.pause,
            workflow_id,
        )
        self.obs.rows('select entity_merge(%s, \'{"list": [1, 2, 3], "flag": true}\')', workflow_id)


def app_functions(obs: Observer, app: str) -> list[str]:
    """The functions the app role may execute, by name."""
    rows = obs.rows(
        "select distinct p.proname::text from pg_proc as p"
        " where p.pronamespace = %s::regnamespace"
        " and has_function_privilege(%s, p.oid, 'execute') order by 1",
        app,
        f"{app}_app",
    )
    return [name for (name,) in rows]


@pytest.fixture
def chaos_workers(dsn: str, app: str, tmp_path: Path) -> Iterator[Workers]:
    workers = Workers(
        "chaos", with_application_name(dsn, WORKER_APP_NAME), app, logs=tmp_path, grace=10.0
    )
    for _ in range(2):
        workers.spawn("8", "5")
    yield workers
    workers.close()


def covered_calls(obs: Observer, app: str) -> list[str]:
    names = app_functions(obs, app)
    assert names, "the app role may execute no function"
    uncovered = sorted(set(names) - set(CALLS) - HELD_ELSEWHERE)
    assert not uncovered, f"functions of the app role with no held call in CALLS: {uncovered}"
    return [name for name in names if name not in HELD_ELSEWHERE]


@contextmanager
def held(dsn: str, app: str, name: str, workflow_id: str) -> Iterator[int]:
    """`name`'s call on `workflow_id` as the app role, its transaction open until the block
    ends (then committed); yields the holder's backend pid."""
    with psycopg.connect(dsn) as holder:  # not autocommit: the transaction stays open
        holder.execute(sql.SQL("set role {}").format(sql.Identifier(f"{app}_app")))
        holder.execute(sql.SQL("set search_path = {}").format(sql.Identifier(app)))
        holder.execute(CALLS[name], {"id": workflow_id})
        yield holder.info.backend_pid
        holder.commit()


def stop_rounds(obs: Observer, workflow_id: str) -> None:
    """The hold is over: `chaos_held` ends its rounds now rather than run them all (so a test
    may give it rounds enough to be running whenever its hold comes, at no cost after it)."""
    obs.rows("select entity_merge(%s, '{\"stop\": true}')", workflow_id)


def settle(obs: Observer, name: str, workflow_id: str) -> str:
    """After the COMMIT of `name`'s call: the held workflow ends its rounds, is signalled and
    finishes (or was cancelled by it); returns its status."""
    if name != "cancel_workflow":
        stop_rounds(obs, workflow_id)
        obs.rows("select signal('done', '\"held\"', %s, %s)", workflow_id, f"{workflow_id}-done")
    assert sleep_until(
        lambda: obs.one(
            "select status in ('completed', 'cancelled') from jobs where id = %s", workflow_id
        ),
        60,
        every=0.02,
    ), f"{workflow_id} did not finish after the COMMIT of {name}"
    status = str(obs.one("select status from jobs where id = %s", workflow_id))
    expected = "cancelled" if name == "cancel_workflow" else "completed"
    assert status == expected, f"{workflow_id} ({name}) is {status}"
    if name in ("start_workflow", "start_workflows"):
        started = f"{workflow_id}-{'started' if name == 'start_workflow' else 'batch'}"
        assert sleep_until(
            lambda: obs.one("select status = 'completed' from jobs where id = %s", started),
            60,
        ), "the workflow started in the held transaction did not run after the COMMIT"
    return status


def check_served(obs: Observer, workers: Workers, phases: list[Phase]) -> None:
    report(phases)
    assert workers.alive()
    assert not FATAL.findall(workers.log())
    slow = [p.call for p in phases if p.rate < 0.5 * p.unheld]
    assert not slow, f"unrelated workflows completed at < 50 % of the unheld rate under {slow}"
    left = obs.one("select count(*) from jobs where status not in ('completed', 'cancelled')")
    assert left == 0


def hold_each_call(
    obs: Observer, app: str, dsn: str, workers: Workers, chaos: Chaos
) -> list[Phase]:
    """Each call alone on a running workflow, the rate under it against the rate just before."""
    names = covered_calls(obs, app)
    chaos.run_batches(Phase("warm-up"))  # the workers' pools connect, plans are cached
    phases: list[Phase] = []
    for n, name in enumerate(names):
        workflow_id = f"held-{n}"
        # The unheld rate right before each hold: the machine is shared and the tables grow
        # over the run, so the rate a held call is compared with is its neighbour's.
        unheld = Phase("(nothing held)")
        chaos.run_batches(unheld, seconds=max(chaos.hold / 2, 0.5))
        chaos.start_held(workflow_id)
        # Held while the workflow runs its rounds (running, not yet waiting for "done"): its
        # next entity write meets the held row.
        assert sleep_until(
            lambda workflow_id=workflow_id: obs.one(
                "select count(*) from steps where job_id = %s and kind = 'activity'", workflow_id
            ),
            30,
            every=0.01,
        ), f"{workflow_id} did not start"
        phase = Phase(name, unheld=unheld.rate)
        busy_before = workers.log().count("event=lock_busy")
        with held(dsn, app, name, workflow_id) as pid:
            chaos.run_batches(phase, [pid])
        phase.busy = workers.log().count("event=lock_busy") - busy_before
        phase.held_status = settle(obs, name, workflow_id)
        phases.append(phase)
    check_served(obs, workers, phases)
    return phases


def hold_every_call_at_once(
    obs: Observer, app: str, dsn: str, workers: Workers, chaos: Chaos
) -> Phase:
    """Every call at once, each on its own workflow parked after its rounds, the rate under
    them all against the rate just before."""
    names = covered_calls(obs, app)
    ids = {name: f"held-{n}" for n, name in enumerate(names)}
    for workflow_id in ids.values():
        chaos.start_held(workflow_id)
    # Parked when held: 43 workflows on 16 slots with rounds lasting through the phases
    # (60) ran in waves for ~20 s and were all parked by the hold all the same (0 waiters,
    # 0 lock_busy in the table). A running workflow meeting a held row is
    # test_a_worker_waits_for_a_held_row_at_most_lock_timeout's (and the slow test's).
    assert sleep_until(
        lambda: obs.one(
            "select count(distinct job_id) = %s from steps where job_id = any(%s)"
            " and kind = 'activity'",
            len(ids),
            list(ids.values()),
        ),
        60,
        every=0.01,
    ), "the held workflows did not start"
    chaos.run_batches(Phase("warm-up"))
    unheld = Phase("(nothing held)")
    chaos.run_batches(unheld)
    phase = Phase(f"all {len(names)} calls", unheld=unheld.rate)
    busy_before = workers.log().count("event=lock_busy")
    with ExitStack() as stack:
        pids = [stack.enter_context(held(dsn, app, name, ids[name])) for name in names]
        chaos.run_batches(phase, pids)
    phase.busy = workers.log().count("event=lock_busy") - busy_before
    phase.held_status = "/".join(sorted({settle(obs, name, ids[name]) for name in names}))
    check_served(obs, workers, [phase])
    return phase


def report(phases: list[Phase]) -> None:
    lines = [
        f"{'held call':26} {'workflows':>9} {'seconds':>8} {'per s':>7} {'unheld/s':>8}"
        f" {'ratio':>6} {'waiters':>7} {'lock_busy':>9}  held workflow",
    ]
    for p in phases:
        lines.append(
            f"{p.call:26} {p.started:9d} {p.seconds:8.2f} {p.rate:7.1f} {p.unheld:8.1f}"
            f" {p.rate / p.unheld:6.0%} {p.waiters:7d} {p.busy:9d}  {p.held_status}"
        )
    print("\n" + "\n".join(lines))


# Serial: it compares completion rates, which tests running beside it would disturb.
@pytest.mark.serial
@pytest.mark.timeout(300)
def test_held_calls_do_not_stall_the_workers_short(
    obs: Observer, app: str, dsn: str, chaos_workers: Workers
) -> None:
    chaos = Chaos(obs, batch=10, hold=2.0, rounds=1)
    hold_every_call_at_once(obs, app, dsn, chaos_workers, chaos)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_held_calls_do_not_stall_the_workers(
    obs: Observer, app: str, dsn: str, chaos_workers: Workers
) -> None:
    chaos = Chaos(obs, batch=30, hold=10.0, rounds=500, pause=0.2)
    phases = hold_each_call(obs, app, dsn, chaos_workers, chaos)
    assert sum(p.started for p in phases) >= 1000


@pytest.mark.timeout(120)
def test_a_worker_waits_for_a_held_row_at_most_lock_timeout(
    obs: Observer, app: str, dsn: str, chaos_workers: Workers
) -> None:
    """A worker that meets a held workflow row waits (a real lock wait, seen in
    pg_stat_activity), stops waiting while the holder still holds it (lock_timeout), logs
    lock_busy and retries later; the `workflows` view and `hotmesh show` name the holder;
    other workflows complete meanwhile, and the held one finishes after the COMMIT."""
    chaos = Chaos(obs, batch=10, hold=0.0, rounds=150, pause=0.2)
    chaos.start_held("held")
    assert sleep_until(
        lambda: obs.one("select count(*) from steps where job_id = 'held' and kind = 'activity'"),
        30,
        every=0.01,
    )
    with psycopg.connect(dsn) as holder:
        holder.execute(sql.SQL("set role {}").format(sql.Identifier(f"{app}_app")))
        holder.execute(sql.SQL("set search_path = {}").format(sql.Identifier(app)))
        holder.execute("select entity_merge('held', '{\"held\": true}')")
        pid = holder.info.backend_pid
        assert obs.one("select blocked_by from workflows where id = 'held'").startswith(
            f"pid {pid} since "
        )
        shown = subprocess.run(
            [sys.executable, "-m", "hotmesh.cli", "show", "held"],
            env={**os.environ, "DATABASE_URL": dsn, "HOTMESH_APP": app},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert re.search(rf"^blocked by +pid {pid} since \S+ \(an open transaction", shown, re.M)
        assert sleep_until(lambda: chaos.waiters(pid), 30, every=0.005), "no worker met the row"
        # Bounded: the wait ends although the holder still holds the row.
        assert sleep_until(
            lambda: chaos.waiters(pid) == 0 and "event=lock_busy" in chaos_workers.log(), 30
        )
        assert holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        chaos.run_batches(Phase("meanwhile"), [pid])  # other workflows complete
        assert obs.one("select status from jobs where id = 'held'") in ("running", "waiting")
        holder.commit()
    stop_rounds(obs, "held")
    obs.rows("select signal('done', '\"ok\"', 'held')")
    assert sleep_until(
        lambda: obs.one("select status = 'completed' from jobs where id = 'held'"), 60
    )
    assert obs.one("select context -> 'held' from jobs where id = 'held'") is True
    assert obs.one("select blocked_by from workflows where id = 'held'") is None
    assert not FATAL.findall(chaos_workers.log())


async def test_an_application_call_outlasts_lock_timeout(mf: MemFlow, dsn: str, app: str) -> None:
    """The pool's lock_timeout bounds the worker's waits, not an application's: its call that
    meets another caller's transaction (55P03 after LOCK_TIMEOUT_MS) is sent again until that
    transaction ends, and then succeeds."""
    await mf.workflow.start(
        workflow_name="chaos_held", args=[1, 0], task_queue="cq", workflow_id="app-held"
    )
    async with await psycopg.AsyncConnection.connect(dsn) as holder:
        await holder.execute(
            sql.SQL("select {}.entity_merge('app-held', '{{\"a\": 1}}')").format(
                sql.Identifier(app)
            )
        )
        call = asyncio.ensure_future(mf.entity("app-held").merge({"b": 2}))
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as watcher:

            async def blocked() -> bool:
                cur = await watcher.execute(
                    "select count(*) from pg_stat_activity"
                    " where wait_event_type = 'Lock' and %s = any(pg_blocking_pids(pid))",
                    (holder.info.backend_pid,),
                )
                return bool((await cur.fetchone() or [0])[0])

            await until(blocked, "the application's call to wait for the holder")
            # Held past two lock timeouts: the first try has surely timed out and been resent.
            await asyncio.sleep(2 * LOCK_TIMEOUT_MS / 1000)
            assert not call.done()
            await holder.commit()
        await call
    doc = await mf.workflow.get_handle("app-held").describe()
    assert {"a": 1, "b": 2}.items() <= doc["context"].items()


def test_a_spent_activity_of_a_held_workflow_is_given_back(dsn: str, app: str) -> None:
    """An activity whose lease expired on its last attempt is failed by the claim, which
    takes its workflow's row: while an application holds that row the claim does not wait,
    it gives the task back (due a second later) and fails it at a claim after the COMMIT."""
    options = f"-c search_path={app}"
    with (
        psycopg.connect(dsn, autocommit=True, options=options) as conn,
        psycopg.connect(dsn, options=options) as holder,
    ):
        conn.execute("select start_workflow('w', '[]', 'q', 'wf')")
        main = conn.execute(
            "select task_id, lease_token from claim_tasks(array['q'], 'test', 1)"
        ).fetchone()
        assert main is not None
        conn.execute(
            "select schedule_activity(%s, %s, 1, 'act', '[]', 'aq', '{\"maximum_attempts\": 1}')",
            main,
        )
        conn.execute("select suspend_task(%s, %s)", main)
        claimed = conn.execute("select count(*) from claim_tasks(array['aq'], 'w1', 1, '1 second')")
        assert claimed.fetchone() == (1,)
        holder.execute("select entity_merge('wf', '{\"held\": true}')")
        conn.execute("set lock_timeout = '5s'")  # a claim that waited would fail with 55P03
        conn.execute(
            "select set_config('hotmesh.fake_now', (now() + interval '1 minute')::text, false)"
        )
        assert conn.execute("select * from claim_tasks(array['aq'], 'w2', 1)").fetchall() == []
        assert conn.execute(
            "select state, attempt, run_at = _now() + interval '1 second' from tasks"
            " where kind = 'activity'"
        ).fetchall() == [("ready", 1, True)]
        assert conn.execute("select status from steps where kind = 'activity'").fetchone() == (
            "scheduled",
        )
        holder.commit()
        conn.execute(
            "select set_config('hotmesh.fake_now', (now() + interval '2 minutes')::text, false)"
        )
        assert conn.execute("select * from claim_tasks(array['aq'], 'w2', 1)").fetchall() == []
        step = conn.execute(
            "select status, error ->> 'code' from steps where kind = 'activity'"
        ).fetchone()
        assert step == ("failed", "597")
