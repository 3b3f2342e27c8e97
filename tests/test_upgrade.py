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
the upgraded schema, and no worker logged a database error, crash or lease loss. `make test`
runs 60 workflows, `make test-slow` 3,000.

The other side of the rule: a release that drops the protocol of running workers. FUTURE is
this checkout with `claim_tasks` renamed and the protocol raised (what such a release does,
sql/05_version.sql); installed by its own installer while `hotmesh worker` of this checkout
holds a task, it makes that worker log one "schema ... is newer than this worker" error and
exit with status 75; a worker of FUTURE takes the task over and every workflow completes once.
This checkout's installer refuses to install its older engine over FUTURE's, and a worker
refuses a schema older than it. A migrate that must wait for a lock (an application's open
transaction) waits in turns of lock_timeout, so the calls queued behind it go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from helpers import (
    SQL,
    WORKERS,
    Workers,
    create_effects,
    drop_app,
    new_app_id,
    sleep_until,
    until,
    until_lock_wait,
)
from hotmesh import _install
from hotmesh._install import WORKER_PROTOCOL, migrate
from hotmesh.errors import SchemaMismatch
from test_schema import RELEASES, REPO, install_releases

PREVIOUS = RELEASES[-1]
QUEUE = "uq"
KINDS = ("up_steps", "up_remote", "up_parent")
# Steps each workflow records (its main thread): what its code makes, no more.
STEPS = {"up_steps": 4, "up_remote": 2, "up_parent": 1, "up_child": 2}
EFFECTS = {"up_steps": ["a", "b"], "up_remote": ["r"], "up_child": ["c"]}
# A worker's log must not show any of these: a failed call, a crash, a parked workflow, a
# lost lease, a traceback.
TROUBLE = re.compile(r"event=(db_error|crash|stuck|lease_lost)|Traceback", re.IGNORECASE)
# Not trouble: 0.1.0's workers claim with lock_timeout 1 s and log a claim the timeout cut off
# as a db_error (this release logs lock_busy); the migrate holds `tasks` longer than that. Nor
# a claim running the previous release's claim_tasks body at the migrate's commit: it then
# calls the _transitions signature 0.6.0 replaced (one failed statement, rolled back). Either
# claim took no task and is sent again 0.1 s later.
OLD_CLAIM_CUT_OFF = re.compile(
    r"^.*event=db_error during=claim .*"
    r"(lock timeout|function _transitions\(.*\) does not exist).*$",
    re.M,
)


# The newest release whose workers speak an older protocol than this package's: an engine this
# package's worker must refuse (0.5.0 and 0.6.0 kept 0.4.0's protocol 4, so PREVIOUS is not one).
OLDER_PROTOCOL = "2a4ff67bba6cef77a261b627bc4cf4cc492eba6f"  # 0.3.0: protocol 3


@contextlib.contextmanager
def installed(dsn: str, release: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An app installed by `release`'s own installer; yields it and the release's tree."""
    app = new_app_id()
    try:
        install_releases(dsn, app, [release], tmp_path)
        yield app, tmp_path / release
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            drop_app(conn, app)


@pytest.fixture
def old_app(dsn: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An app installed by PREVIOUS's own installer; returns it and PREVIOUS's tree."""
    with installed(dsn, PREVIOUS, tmp_path) as app_and_tree:
        yield app_and_tree


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


def hotmesh_migrate(dsn: str, app: str) -> str:
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

        out = hotmesh_migrate(dsn, app)
        migrated_at = db.one("select clock_timestamp()")
        assert db.one("select max(version) from schema_migrations") > before, out
        assert db.one("select oldest_worker from engine_version()") == 0

        # A rolling restart: one old worker makes way for one of this release; the other old
        # processes keep serving the upgraded schema, next to it.
        old_workers.stop(first)
        assert first.returncode == 0, old_workers.log()
        new_workers.spawn("workflows")
        [path] = ready(new_workers, 1)
        assert not path.startswith(str(old_tree)), path
        start(db, half + 1, total)
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
    old_log = OLD_CLAIM_CUT_OFF.sub("", old_workers.log())
    trouble = TROUBLE.findall(old_log + new_workers.log())
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
    run_upgrade(dsn, app, tree, tmp_path, total=3000)


# ------------------------------------------------------------------------ protocols


def test_the_package_speaks_the_engines_protocol(db: SQL) -> None:
    """WORKER_PROTOCOL and sql/05_version.sql change together; this engine still serves the
    previous release's workers (protocol 4, 0.4.0: the test above runs them) and protocols 3,
    2, 1 and 0."""
    assert db.rows("select protocol, oldest_worker from engine_version()") == [(WORKER_PROTOCOL, 0)]


def _edit(path: Path, pattern: str, new: str, count: int = 1) -> None:
    text, made = re.subn(pattern, new, path.read_text())
    assert made == count, f"{path}: {pattern!r} matched {made} times, not {count}"
    path.write_text(text)


FUTURE_PROTOCOL = WORKER_PROTOCOL + 1


def future_release(into: Path) -> Path:
    """This checkout as a next release that drops this one's protocol: `claim_tasks` renamed
    (its workers call the new name), protocol and oldest_worker WORKER_PROTOCOL + 1, version
    9.0.0."""
    root = into / "future"
    for part in ("python/hotmesh", "sql", "migrations"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    _edit(
        root / "sql/05_version.sql",
        r"select '[0-9.]+', (\(select max\(m\.version\) from schema_migrations as m\)), \d+, \d+",
        rf"select '9.0.0', \1, {FUTURE_PROTOCOL}, {FUTURE_PROTOCOL}",
    )
    _edit(
        root / "python/hotmesh/_install.py",
        rf"\nWORKER_PROTOCOL = {WORKER_PROTOCOL}\n",
        f"\nWORKER_PROTOCOL = {FUTURE_PROTOCOL}\n",
    )
    _edit(root / "python/hotmesh/_db.py", r"\{\}\.claim_tasks\(", "{}.claim_tasks_v2(")
    for path in (root / "sql").glob("*.sql"):
        text = path.read_text()
        path.write_text(re.sub(r"\bclaim_tasks\b", "claim_tasks_v2", text))
    return root


_INSTALL = """
import asyncio, sys
from hotmesh import _install
assert _install.__file__.startswith(sys.argv[3]), _install.__file__
asyncio.run(_install.migrate(sys.argv[1], sys.argv[2]))
"""


def install(root: Path, dsn: str, app: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(root / "python")}
    done = subprocess.run(
        [sys.executable, "-c", _INSTALL, dsn, app, str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def this_release(*args: str) -> list[str]:
    """The command line of this checkout's `hotmesh`."""
    return [sys.executable, "-m", "hotmesh.cli", *args]


def cli_env(dsn: str, app: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(WORKERS), "DATABASE_URL": dsn, "HOTMESH_APP": app, **extra}


def test_a_worker_exits_when_the_schema_is_newer_than_it(
    dsn: str, app: str, db: SQL, tmp_path: Path
) -> None:
    create_effects(db.conn.execute)
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        old = subprocess.Popen(
            # --grace 1: its exit waits no longer than that for u-1's paused activity
            this_release(
                "worker", "upgrade:up_slow", "--queue", QUEUE, "--lease", "2", "--grace", "1"
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=cli_env(dsn, app, UPGRADE_PAUSE="120"),
        )
    future = Workers("upgrade", dsn, app, logs=tmp_path, PYTHONPATH=str(tmp_path / "future/python"))
    try:
        assert sleep_until(lambda: "worker serving" in log_path.read_text(), 30), (
            log_path.read_text()
        )
        db.one("select start_workflow('up_slow', '[1]', %s, 'u-1')", QUEUE)
        # It holds u-1's task, in `pause`.
        assert sleep_until(lambda: db.one("select count(*) from effects"), 30)
        holder = db.one("select lease_owner from tasks where job_id = 'u-1'")
        assert holder is not None and holder.split(":")[1] == str(old.pid), holder

        root = future_release(tmp_path)
        install(root, dsn, app)
        assert db.rows("select version, protocol, oldest_worker from engine_version()") == [
            ("9.0.0", FUTURE_PROTOCOL, FUTURE_PROTOCOL)
        ]
        # This checkout's installer will not put its older engine back.
        back = subprocess.run(
            this_release("migrate"), env=cli_env(dsn, app), capture_output=True, text=True
        )
        assert back.returncode == SchemaMismatch.exit_code, back.stderr
        assert f"schema {app} is newer than this hotmesh" in back.stderr
        assert db.one("select version from engine_version()") == "9.0.0"

        # Its next claim (u-2 is ready) fails: claim_tasks is gone. It checks and exits.
        db.one("select start_workflow('up_slow', '[2]', %s, 'u-2')", QUEUE)
        assert old.wait(60) == SchemaMismatch.exit_code, log_path.read_text()
        text = log_path.read_text()
        assert len(re.findall("event=schema_mismatch", text)) == 1, text
        assert f"schema {app} is newer than this worker" in text
        assert re.search(
            rf"^hotmesh: schema {app} is newer than this worker: .*restart it with the new "
            "release$",
            text,
            re.M,
        ), text
        # Nothing failed: u-1 and u-2 wait for a worker that serves the engine.
        assert db.rows("select status from jobs where status in ('failed', 'cancelled')") == []

        future.spawn("workflows")
        [path] = ready(future, 1)
        assert path.startswith(str(root)), path
        assert sleep_until(
            lambda: db.one("select count(*) from jobs where status = 'completed'") == 2, 60
        ), dict(db.rows("select id, status from jobs"))
        assert db.rows("select job_id, name from effects order by 1, 2") == [
            ("u-1", "s1"), ("u-1", "s2"), ("u-2", "s1"), ("u-2", "s2")
        ]  # fmt: skip
        # u-1 was taken over: its second effect ran in FUTURE's worker.
        assert db.one("select pid from effects where job_id = 'u-1' and name = 's2'") == (
            future.procs[0][0].pid
        )
        assert db.one("select count(*) from steps where status <> 'completed'") == 0
        assert db.one("select count(*) from steps") == 6
    finally:
        if old.poll() is None:
            old.kill()
            old.wait()
        future.close()
    assert TROUBLE.findall(future.log()) == [], future.log()


def test_a_worker_refuses_a_schema_older_than_it(dsn: str, tmp_path: Path) -> None:
    with installed(dsn, OLDER_PROTOCOL, tmp_path) as (app, _):
        with psycopg.connect(dsn) as conn:
            protocol = conn.execute(
                sql.SQL("select protocol from {}.engine_version()").format(sql.Identifier(app))
            ).fetchone()
        assert protocol is not None and protocol[0] < WORKER_PROTOCOL
        done = subprocess.run(
            this_release("worker", "upgrade:up_steps", "--queue", QUEUE),
            env=cli_env(dsn, app),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == SchemaMismatch.exit_code, done.stderr
        assert f"schema {app} is older than this worker" in done.stderr
        assert f"run `hotmesh migrate --app {app}` with this release" in done.stderr


# ------------------------------------------------------------------------ locks


async def test_migrate_waits_for_a_lock_in_turns_of_lock_timeout(
    dsn: str, old_app: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Upgrading the previous release adds a column to tasks (migration 0024). An application
    holds a hook() open (it has written a task): the migrate's ALTER TABLE waits for it, and a
    hook sent meanwhile waits behind the migrate, but only until the migrate's lock_timeout: it
    returns while the application's transaction is still open. The migrate tries again and
    succeeds after the COMMIT."""
    app, _ = old_app
    caplog.set_level(logging.WARNING, "hotmesh.install")
    schema = sql.Identifier(app)
    holder = await psycopg.AsyncConnection.connect(dsn)
    other = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    watch = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        for workflow_id in ("held", "other"):
            await other.execute(
                sql.SQL("select {}.start_workflow('w', '[]', 'q', %s)").format(schema),
                (workflow_id,),
            )
        await holder.execute(sql.SQL("select {}.hook('held', 'h', '[]', 'q')").format(schema))
        upgrading = asyncio.create_task(migrate(dsn, app, lock_timeout=3.0, patience=120))

        async def migrate_waits() -> bool:
            cur = await watch.execute(
                "select count(*) from pg_stat_activity where application_name = %s"
                " and wait_event_type = 'Lock' and datname = current_database()",
                (_install.APPLICATION_NAME,),
            )
            return (await cur.fetchone() or [0])[0] == 1

        await until(migrate_waits, "the migrate to wait for a lock")
        sending = asyncio.create_task(
            other.execute(sql.SQL("select {}.hook('other', 'h', '[]', 'q')").format(schema))
        )
        await until_lock_wait(watch, other.info.backend_pid)
        await asyncio.wait_for(sending, 30)  # the migrate gave way: the call went on
        assert holder.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert not upgrading.done()
        await holder.commit()
        applied = await asyncio.wait_for(upgrading, 60)
        assert 24 in applied
        assert "rolled back so as not to hold up the workers" in caplog.text
    finally:
        for conn in (holder, other, watch):
            await conn.close()
