"""Upgrades under load (docs/upgrading.md): `hotmesh migrate` of this checkout runs while
worker processes of the previous release serve the app, and nothing is lost, failed or done
twice.

The previous release is PREVIOUS (tests/test_schema.py's RELEASES: there are no tags yet).
Its package, sql/ and migrations/ come from this checkout's git history (`git archive`; a
shallow clone needs `git fetch --unshallow`). Its own installer installs the app; its own
code runs the workers (tests/workers/upgrade.py with PYTHONPATH=<its tree>/python and this
virtualenv's dependencies). While three kinds of workflow run (inline activities around
durable sleeps, a remote activity followed by a signal wait, a parent with a child), this
checkout's `hotmesh migrate` upgrades the schema; more workflows start on the upgraded schema;
one old worker is replaced by a worker of this release (a rolling restart) while the other
old processes keep serving. The engine serves workers of PREVIOUS's protocol
(engine_version().oldest_worker), so they go on without a restart.

Checked: every workflow completed, none failed, each step recorded once (the step count per
workflow is what its code makes), each side effect ran exactly once, old workers ran tasks on
the upgraded schema, and no worker logged a database error, crash or lease loss.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from helpers import SQL, Workers, create_effects, drop_app, new_app_id, sleep_until
from test_schema import RELEASES, install_release

PREVIOUS = RELEASES[-1]
QUEUE = "uq"
KINDS = ("up_steps", "up_remote", "up_parent")
# Steps each workflow records (its main thread): what its code makes, no more.
STEPS = {"up_steps": 4, "up_remote": 2, "up_parent": 1, "up_child": 2}
EFFECTS = {"up_steps": ["a", "b"], "up_remote": ["r"], "up_child": ["c"]}
# A worker's log must not show any of these: a failed call, a crash, a parked workflow, a
# lost lease, a traceback.
TROUBLE = re.compile(r"event=(db_error|crash|stuck|lease_lost)|Traceback", re.IGNORECASE)


@pytest.fixture
def old_app(dsn: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An app installed by PREVIOUS's own installer; returns it and PREVIOUS's tree."""
    app = new_app_id()
    try:
        install_release(dsn, app, PREVIOUS, tmp_path)
        yield app, tmp_path / PREVIOUS
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            drop_app(conn, app)


def start(db: SQL, first: int, last: int) -> None:
    """Workflows u-<i> for i in [first, last], of kind KINDS[i % 3], from SQL."""
    db.rows(
        "select start_workflow((%s::text[])[i %% 3 + 1], jsonb_build_array(i), %s, 'u-' || i)"
        " from generate_series(%s::integer, %s::integer) as i",
        list(KINDS),
        QUEUE,
        first,
        last,
    )


def signal(db: SQL, numbers: list[int]) -> None:
    db.rows(
        "select signal('go-' || i, to_jsonb(i), 'u-' || i) from unnest(%s::integer[]) as i",
        [i for i in numbers if KINDS[i % 3] == "up_remote"],
    )


def ready(workers: Workers, count: int, limit: float = 60.0) -> list[str]:
    """The package paths the first `count` processes report once they serve."""
    found = sleep_until(
        lambda: (
            (len(lines := re.findall(r"^ready (\S+)$", workers.log(), re.M)) >= count) and lines
        ),
        limit,
    )
    assert found and len(found) >= count, f"workers did not start:\n{workers.log()}"
    return list(found)


def migrate(dsn: str, app: str) -> str:
    """This checkout's `hotmesh migrate`, in a process of its own."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "hotmesh.cli", "migrate", "--app", app, "--dsn", dsn],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def expected_effects(db: SQL) -> list[tuple[Any, ...]]:
    return [
        (job, name)
        for job, kind in db.rows("select id, workflow_name from jobs order by id")
        for name in EFFECTS.get(kind, [])
    ]


def run_upgrade(dsn: str, app: str, old_tree: Path, logs: Path, total: int) -> None:
    db = SQL(dsn, app)
    create_effects(db.conn.execute)
    old = {"PYTHONPATH": str(old_tree / "python")}
    old_workers = Workers("upgrade", dsn, app, logs=logs, **old)
    new_workers = Workers("upgrade", dsn, app, logs=logs)
    try:
        first = old_workers.spawn("workflows")
        old_workers.spawn("workflows")
        old_workers.spawn("activities")
        paths = ready(old_workers, 3)
        assert all(p.startswith(str(old_tree)) for p in paths), paths

        half = total // 2
        start(db, 1, half)
        early = list(range(1, half + 1, 2))
        signal(db, early)  # some kept before anyone waits
        sleep_until(lambda: db.one("select count(*) from jobs where status = 'completed'"), 60)
        unfinished = db.one("select count(*) from jobs where status <> 'completed'")
        assert unfinished > 0, "every workflow finished before the migrate: nothing in flight"
        before = db.one("select max(version) from schema_migrations")

        out = migrate(dsn, app)
        migrated_at = db.one("select clock_timestamp()")
        assert db.one("select max(version) from schema_migrations") > before, out

        start(db, half + 1, total)
        # A rolling restart: one old worker makes way for one of this release; the other old
        # processes keep serving the upgraded schema.
        old_workers.stop(first)
        assert first.returncode == 0, old_workers.log()
        new_workers.spawn("workflows")
        [path] = ready(new_workers, 1)
        assert not path.startswith(str(old_tree)), path
        signal(db, sorted(set(range(1, total + 1)) - set(early)))

        done = sleep_until(
            lambda: (
                db.one("select count(*) from jobs where status = 'completed'")
                == total + sum(KINDS[i % 3] == "up_parent" for i in range(1, total + 1))
            ),
            max(60.0, total / 5),
        )
        statuses = dict(db.rows("select status, count(*) from jobs group by status"))
        assert done, f"not every workflow completed: {statuses}\n{old_workers.log()}"
        assert set(statuses) == {"completed"}

        wrong_steps = db.rows(
            "select j.id, j.workflow_name, count(s.seq) from jobs as j"
            " left join steps as s on s.job_id = j.id and s.status = 'completed'"
            " group by j.id having count(s.seq) <> (%s::jsonb ->> j.workflow_name)::integer",
            psycopg.types.json.Jsonb(STEPS),
        )
        assert wrong_steps == []
        assert db.one("select count(*) from steps where status <> 'completed'") == 0
        assert db.one("select count(*) from tasks") == 0
        ran = db.rows("select job_id, name from effects order by job_id, name")
        assert ran == expected_effects(db), "a side effect was lost or ran twice"

        old_pids = [p.pid for p, _, _ in old_workers.procs]
        after = db.one(
            "select count(*) from effects where pid = any(%s) and at > %s", old_pids, migrated_at
        )
        assert after > 0, "no worker of the previous release ran a task on the upgraded schema"
        new_pids = [p.pid for p, _, _ in new_workers.procs]
        assert db.one("select count(*) from effects where pid = any(%s)", new_pids) > 0
        assert old_workers.alive() is False  # the first was stopped; the others still run
        assert all(p.poll() is None for p, _, _ in old_workers.procs[1:])
    finally:
        new_workers.close()
        old_workers.close()
        db.close()
    trouble = TROUBLE.findall(old_workers.log() + new_workers.log())
    assert trouble == [], old_workers.log() + new_workers.log()


def test_old_workers_serve_through_an_upgrade(
    dsn: str, old_app: tuple[str, Path], tmp_path: Path
) -> None:
    app, tree = old_app
    run_upgrade(dsn, app, tree, tmp_path, total=60)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_old_workers_serve_through_an_upgrade_at_scale(
    dsn: str, old_app: tuple[str, Path], tmp_path: Path
) -> None:
    app, tree = old_app
    run_upgrade(dsn, app, tree, tmp_path, total=900)
