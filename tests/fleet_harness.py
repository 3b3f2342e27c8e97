"""Shared by the load and database-fault tests: worker processes (tests/workers/fleet.py)
serving one queue, an observer connection that outlives database restarts, and the checks
that no workflow was lost or doubled.

The harness never helps the workers: they reconnect on their own (pool, claim loop,
listener). Only the test's own observer connection reconnects, like any monitoring client.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

import helpers
from helpers import Workers, sleep_until

# The workers' connections, for pg_terminate_backend: "hm-fleet-<app>", so that a test cuts off
# its own fleet only, not that of a test running beside it (`pytest -n`).
APPLICATION_NAME = "hm-fleet"
STEPS_PER_WORKFLOW = 9  # fleet_main: 7 steps; its hook thread: 2
EFFECTS = ("a", "h")
# Log lines that must never appear: a crashed runner, a parked workflow, a lock error.
FATAL = re.compile(r"event=(crash|stuck)|deadlock|could not serialize", re.IGNORECASE)


def with_application_name(dsn: str, name: str) -> str:
    """The DSN (URL or key=value) with application_name set."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        query = parts.query + ("&" if parts.query else "") + urlencode({"application_name": name})
        return urlunsplit(parts._replace(query=query))
    return f"{dsn} application_name={name}"


class Observer:
    """The test's view of the database: one autocommit connection, re-opened (for up to
    `patience` seconds) when a restart or a terminate broke it."""

    def __init__(self, dsn: str, app: str, patience: float = 60.0) -> None:
        self.dsn, self.app, self.patience = dsn, app, patience
        self.conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.dsn, autocommit=True)
        conn.execute(sql.SQL("set search_path = {}, public").format(sql.Identifier(self.app)))
        return conn

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + self.patience
        while True:
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = self._connect()
                cur = self.conn.execute(query, params)  # type: ignore[arg-type]
                return cur.fetchall() if cur.description is not None else []
            except psycopg.OperationalError:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def one(self, query: str, *params: Any) -> Any:
        rows = self.rows(query, *params)
        return rows[0][0] if rows else None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class Fleet:
    """N worker processes serving `queue` of `app`; stopped (SIGTERM) at the end."""

    def __init__(self, dsn: str, app: str, logs: Path, queue: str = "lq") -> None:
        self.application_name = f"{APPLICATION_NAME}-{app}"
        self.workers = Workers(
            "fleet", with_application_name(dsn, self.application_name), app, logs=logs, grace=15.0
        )
        self.queue = queue

    def start(
        self,
        processes: int = 2,
        concurrency: int = 16,
        lease: float = 3.0,
        role: str = "workflows",
        queue: str | None = None,
    ) -> None:
        for _ in range(processes):
            self.workers.spawn(queue or self.queue, str(concurrency), str(lease), role)

    def alive(self) -> bool:
        return self.workers.alive()

    def stop(self) -> None:
        self.workers.close()

    def log(self) -> str:
        return self.workers.log()

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))


def start_workflows(obs: Observer, first: int, last: int, queue: str = "lq") -> None:
    """Start fleet_main i for i in [first, last] from SQL, in one statement."""
    obs.rows(
        "select start_workflow('fleet_main', jsonb_build_array(i), %s, 'f-' || i)"
        " from generate_series(%s::integer, %s::integer) as i",
        queue,
        first,
        last,
    )


def send_signals(obs: Observer, numbers: list[int]) -> None:
    """Signal "go-<i>" to workflow f-<i> (kept when it does not wait yet), from SQL."""
    obs.rows(
        "select signal('go-' || i, to_jsonb(i), 'f-' || i) from unnest(%s::integer[]) as i",
        numbers,
    )


def wait_until(obs: Observer, query: str, target: int, limit: float, *params: Any) -> int:
    """Poll `query` (one count) until it reaches target; returns the last value."""
    counts: list[int] = []

    def reached() -> bool:
        counts.append(int(obs.one(query, *params) or 0))
        return counts[-1] >= target

    sleep_until(reached, limit)
    return counts[-1]


def completed(obs: Observer) -> int:
    return int(obs.one("select count(*) from jobs where status = 'completed'"))


def outcome(obs: Observer, total: int) -> dict[str, int]:
    """The figures of a run of workflows f-1 .. f-<total>: every one must be completed with
    the expected result, steps, entity and side effects."""
    figures = {
        "workflows": total,
        "completed": obs.one("select count(*) from jobs where status = 'completed'"),
        "not_completed": obs.one("select count(*) from jobs where status <> 'completed'"),
        "wrong_result": obs.one(
            "select count(*) from jobs where result is distinct from jsonb_build_object("
            "'i', args -> 0, 'hook', 'hook ' || (args ->> 0), 'got', args -> 0, 'n', 3)"
        ),
        # every step recorded once: the primary key forbids a second record of a position,
        # so a doubled call would show as a workflow with more steps than its code makes
        "wrong_step_count": obs.one(
            "select count(*) from (select j.id from jobs as j left join steps as s"
            " on s.job_id = j.id group by j.id having count(s.seq) <> %s) as x",
            STEPS_PER_WORKFLOW,
        ),
        # three increments, each applied exactly once
        "wrong_entity": obs.one(
            "select count(*) from jobs where context <> '{\"n\": 3}' or entity_version <> 3"
        ),
        "tasks_left": obs.one("select count(*) from tasks"),
        "signals_left": obs.one("select count(*) from signals"),
        "threads_not_completed": obs.one(
            "select count(*) from threads where status <> 'completed'"
        ),
        # lost: a side effect that never ran
        "effects_lost": obs.one(
            "select count(*) from jobs as j cross join unnest(%s::text[]) as n (name)"
            " where not exists (select from effects as e"
            " where e.job_id = j.id and e.name = n.name)",
            list(EFFECTS),
        ),
        # doubled: a side effect that ran after its step was recorded (a re-run that should
        # have replayed the recorded outcome instead)
        "effects_doubled": obs.one(
            "select count(*) from effects as e join steps as s on s.job_id = e.job_id"
            " and s.kind = 'activity' and s.input ->> 0 = e.name and s.status = 'completed'"
            " where e.at > s.completed_at"
        ),
        # re-runs of an activity whose outcome was not recorded yet when its worker lost it
        # (at-least-once: allowed, reported)
        "effects_rerun": obs.one("select count(*) from effects") - total * len(EFFECTS),
    }
    return {k: int(v) for k, v in figures.items()}


MUST_BE_ZERO = (
    "not_completed",
    "wrong_result",
    "wrong_step_count",
    "wrong_entity",
    "tasks_left",
    "signals_left",
    "threads_not_completed",
    "effects_lost",
    "effects_doubled",
)


def expect_clean(figures: dict[str, int]) -> None:
    bad = {k: figures[k] for k in MUST_BE_ZERO if figures[k] != 0}
    assert figures["completed"] == figures["workflows"] and not bad, figures


def create_effects(obs: Observer) -> None:
    helpers.create_effects(obs.rows)
    obs.rows("create index effects_job on effects (job_id, name)")


def deadlocks(obs: Observer) -> int:
    return int(obs.one("select deadlocks from pg_stat_database where datname = current_database()"))


def pgdir() -> str | None:
    return os.environ.get("HOTMESH_PGDIR") or None
