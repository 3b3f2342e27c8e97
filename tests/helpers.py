"""What tests share (graphile-worker's `__tests__/helpers.ts`): polling until the database says
so, a plain SQL handle on an app, the database a test runs in, apps installed for real, and
worker processes started from tests/workers/.

conftest.py turns these into the fixtures `dsn`, `app`, `db`, `mf` and `remote`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from psycopg import sql
from psycopg.conninfo import make_conninfo

from hotmesh._install import migrate
from workers import _spawn

WORKERS = Path(__file__).parent / "workers"

# For the tests that install the app the docs and the demo name, `my_app`: its two roles are
# cluster-wide, so `make pytest` (pytest -n, --dist loadgroup) runs them on one worker, one
# after another, never side by side.
uses_my_app = pytest.mark.xdist_group("my_app")

# ------------------------------------------------------------------------------ polling


async def until(
    check: Callable[[], Any], what: str = "", limit: float = 20.0, every: float = 0.02
) -> None:
    """Poll `check` (sync or async) until it is truthy; fail naming `what` after `limit` s."""
    try:
        async with asyncio.timeout(limit):
            while True:
                value = check()
                if isinstance(value, Awaitable):
                    value = await value
                if value:
                    return
                await asyncio.sleep(every)
    except TimeoutError:
        pytest.fail(f"timed out after {limit} s waiting for {what or check}")


async def until_row(db: SQL, query: str, *params: Any, limit: float = 30.0) -> None:
    """Until `query` returns something true (polling the database the workers write)."""
    await until(lambda: db.one(query, *params), f"{query} {params}", limit)


async def until_lock_wait(
    conn: psycopg.AsyncConnection[Any], pid: int, limit: float = 10.0
) -> None:
    """Until backend `pid` waits for a lock: a real lock wait, not a sleep long enough."""

    async def waits() -> bool:
        cur = await conn.execute(
            "select wait_event_type from pg_stat_activity where pid = %s", (pid,)
        )
        return (await cur.fetchone() or [None])[0] == "Lock"

    await until(waits, f"backend {pid} to wait for a lock", limit, every=0.01)


def sleep_until(check: Callable[[], Any], limit: float, every: float = 0.1) -> Any:
    """Blocking poll for code outside an event loop: the last value of `check`, once it is
    truthy or `limit` seconds have passed (the caller asserts on it)."""
    deadline = time.monotonic() + limit
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(every)


# ------------------------------------------------------------------------------ properties


def fast_and_slow(
    prop: Callable[..., None], fast: int, slow: int, **strategies: Any
) -> tuple[Callable[..., None], Callable[..., None]]:
    """Property `prop` (hypothesis: `strategies` by parameter name) as two tests: `fast`
    examples in `make test`, `slow` examples marked slow (`make test-slow`). Both check the
    same; more examples only give a rare case more chances to turn up."""

    def test(examples: int) -> Callable[..., None]:
        return settings(  # type: ignore[no-any-return]
            max_examples=examples,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )(given(**strategies)(prop))

    return test(fast), pytest.mark.slow(test(slow))


# ------------------------------------------------------------------------------ SQL


class SQL:
    """Run SQL against the test database as an outside application would (autocommit)."""

    def __init__(self, dsn: str, app: str) -> None:
        self.app = app
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute(sql.SQL("set search_path = {}, public").format(sql.Identifier(app)))

    def one(self, query: str, *params: Any) -> Any:
        row = self.conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        return None if row is None else row[0]

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        return self.conn.execute(query, params).fetchall()  # type: ignore[arg-type]

    def close(self) -> None:
        self.conn.close()


def create_effects(execute: Callable[[str], object]) -> None:
    """The side-effect counter the worker processes write (tests/workers/_effects.py); pass
    the `execute` of a connection to the test's app."""
    execute(
        "create table effects (id bigint generated always as identity, job_id text, name text,"
        " attempt integer, pid integer, at timestamptz not null default clock_timestamp())"
    )


# ------------------------------------------------------------------------------ databases


def with_dbname(dsn: str, dbname: str) -> str:
    """The DSN with another database, in the form it came in (URL or key=value)."""
    if "://" in dsn:
        return urlunsplit(urlsplit(dsn)._replace(path="/" + quote(dbname)))
    return make_conninfo(dsn, dbname=dbname)


def new_app_id() -> str:
    return "t_" + uuid.uuid4().hex[:12]


def drop_app(conn: psycopg.Connection[Any], app: str) -> None:
    """Drop schema `app` and the roles the installer made for it (sql/99_grants.sql)."""
    conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(app)))
    drop_roles(conn, f"{app}_app", f"{app}_worker", f"{app}_reader", f"{app}_reviewer")


def drop_roles(conn: psycopg.Connection[Any], *roles: str) -> None:
    """Drop each role that exists, and first its privileges in this database when we may (a
    member of it: a superuser; a CREATEROLE user drops the schema first)."""
    for role in roles:
        row = conn.execute(
            "select pg_has_role(oid, 'usage') from pg_roles where rolname = %s", (role,)
        ).fetchone()
        if row is None:
            continue
        if row[0]:
            conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


@contextlib.asynccontextmanager
async def installed_app(dsn: str) -> AsyncIterator[str]:
    """A new app, installed by the real installer (for tests of the installer and the roles
    it makes); dropped afterwards with its roles."""
    app = new_app_id()
    try:
        await migrate(dsn, app)
        yield app
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            drop_app(conn, app)


class Databases:
    """One database per test, copied from a template in which the real installer installed
    the session's app once (procrastinate's `CREATE DATABASE ... TEMPLATE`): every test starts
    from a fresh, empty, fully installed app, with its roles, without running the installer.

    The app's two roles are cluster-wide, so every copy shares them; a test that drops or
    changes them uses an app of its own (`installed_app`).

    On the private cluster (`hotmesh db run`, HOTMESH_PGDIR) the databases live in a tablespace
    in /dev/shm: a copy writes some 9 MB of files, which on a busy disk took ten times as long
    as running the installer; in memory it takes 0.05 s. (The WAL stays on disk.)

    Each test's create and drop go through one connection kept per process: a connection of
    its own cost the server a backend each time (with file_copy below, a test's `mf` and `db`
    fixtures took 0.08-0.11 s of CPU, now 0.06-0.07; some 420 tests)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        # One template per pytest-xdist worker ("gw0", ...): the name says whose it is.
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        suffix = f"{worker}_{uuid.uuid4().hex[:8]}"
        self.template = "hm_tpl_" + suffix
        self.tablespace = "hm_ts_" + suffix
        self.tablespace_dir: Path | None = None
        self.app = new_app_id()
        self.made = 0
        self.strategy = sql.SQL("wal_log")
        self.kept: psycopg.Connection[Any] | None = None

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, autocommit=True)

    def _execute(self, statement: sql.Composed) -> None:
        """`statement` on the kept connection; on a new one when the server has cut that off
        (a serial test restarts it), where it runs again: nothing of it ran."""
        for attempt in (1, 2):
            if self.kept is None or self.kept.closed:
                self.kept = self.admin()
            try:
                self.kept.execute(statement)
                return
            except psycopg.OperationalError:
                self.kept.close()
                if attempt == 2:
                    raise

    def _in_memory(self, conn: psycopg.Connection[Any]) -> sql.Composable:
        """` tablespace <in /dev/shm>` when the server is the private cluster on this machine
        and we may make one; else nothing."""
        pgdir, shm = os.environ.get("HOTMESH_PGDIR"), Path("/dev/shm")  # noqa: S108 (below)
        if not pgdir or not shm.is_dir():
            return sql.SQL("")
        data = Path(pgdir) / "data"
        try:
            if conn.execute("select current_setting('data_directory')").fetchone() != (str(data),):
                return sql.SQL("")
            where = shm / f"{Path(pgdir).name}-{self.tablespace}"
            where.mkdir(mode=0o700)  # fails if it exists: never someone else's directory
            self.tablespace_dir = where
            owner = data.stat()
            if owner.st_uid != os.getuid():  # the server runs as `postgres`, we as root
                os.chown(where, owner.st_uid, owner.st_gid)
            conn.execute(
                sql.SQL("create tablespace {} location {}").format(
                    sql.Identifier(self.tablespace), sql.Literal(str(where))
                )
            )
        except (OSError, psycopg.Error):
            return sql.SQL("")
        return sql.SQL(" tablespace {}").format(sql.Identifier(self.tablespace))

    def create_template(self) -> None:
        with self.admin() as conn:
            # file_copy copies the files and checkpoints twice; wal_log (PG 15's default)
            # writes the whole copy, 6.8 MB, into the WAL. Without fsync (the private
            # cluster's --fast) the checkpoints are cheaper: 0.01 s of CPU less per test.
            if conn.execute("select current_setting('fsync')").fetchone() == ("off",):
                self.strategy = sql.SQL("file_copy")
            conn.execute(
                sql.SQL("create database {}{}").format(
                    sql.Identifier(self.template), self._in_memory(conn)
                )
            )
        # In a thread of its own: this runs inside the first test's setup, maybe in its loop.
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            installing = migrate(with_dbname(self.dsn, self.template), self.app)
            thread.submit(asyncio.run, installing).result()
        with self.admin() as conn:  # a template must have no sessions when it is copied
            conn.execute(
                sql.SQL("alter database {} with allow_connections false").format(
                    sql.Identifier(self.template)
                )
            )

    def create(self) -> str:
        """A new copy of the template; returns its name."""
        self.made += 1
        name = f"{self.template}_{self.made}"
        self._execute(
            sql.SQL("create database {} template {} strategy {}").format(
                sql.Identifier(name), sql.Identifier(self.template), self.strategy
            )
        )
        return name

    def drop(self, name: str) -> None:
        # force: a worker process a test left behind is cut off
        self._execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )

    def close(self) -> None:
        self.drop(self.template)
        if self.kept is not None:
            self.kept.close()
        with self.admin() as conn:
            drop_roles(
                conn,
                f"{self.app}_app",
                f"{self.app}_worker",
                f"{self.app}_reader",
                f"{self.app}_reviewer",
            )
            if self.tablespace_dir is not None:
                conn.execute(
                    sql.SQL("drop tablespace if exists {}").format(sql.Identifier(self.tablespace))
                )
                shutil.rmtree(self.tablespace_dir, ignore_errors=True)


def may_create_databases(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select rolsuper or rolcreatedb from pg_roles where rolname = current_user"
        ).fetchone()
    return bool(row and row[0])


# ------------------------------------------------------------------------------ processes


class Process(Protocol):
    """A worker process: what the tests use of subprocess.Popen (Forked has the same)."""

    pid: int

    @property
    def returncode(self) -> int | None: ...
    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


# Worker processes are forked by multiprocessing's forkserver, which has imported these once
# (workers/_spawn.py says why). tests/ is on sys.path, so tests/workers is the namespace
# package `workers`.
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["hotmesh", "hotmesh.worker", "psycopg_pool", "workers._spawn"])


def python(
    *argv: str,
    env: dict[str, str],
    stdout: Path,
    stderr: Path | None = None,
    cwd: Path | None = None,
) -> Forked:
    """`python *argv` forked by the forkserver (workers/_spawn.py), output appended to files."""
    process = _FORKS.Process(
        target=_spawn.run,
        args=(list(argv), env, str(stdout), str(stderr or stdout), cwd and str(cwd)),
        name=" ".join(argv),
    )
    process.start()
    return Forked(process)


class Forked:
    """A process forked by the forkserver, with Popen's interface (Process)."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        self.pid = process.pid or 0

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(str(self.process.name), timeout or 0.0)
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Workers:
    """Processes of one script of tests/workers/ that a test started, each logging to a file
    of its own in `logs`; whatever is still running at the end is stopped (SIGTERM, then
    SIGKILL after `grace` seconds). They are forked by the forkserver, unless the environment
    sets PYTHONPATH (another release's code): then each is a new interpreter."""

    def __init__(
        self, script: str, *args: str, logs: Path, grace: float = 10.0, **env: str
    ) -> None:
        self.script, self.args, self.env = script, args, env
        self.logs, self.grace = logs, grace
        self.procs: list[tuple[Process, IO[bytes], Path]] = []

    def spawn(self, *args: str, **env: str) -> Process:
        """tests/workers/<script>.py with the harness's arguments and then `args`; `env` is
        added to the environment."""
        path = self.logs / f"{self.script}-{len(self.procs)}.log"
        log = path.open("wb")
        script = str(WORKERS / f"{self.script}.py")
        environment = {**os.environ, **self.env, **env}
        proc: Process
        if "PYTHONPATH" in {**self.env, **env}:
            proc = subprocess.Popen(
                [sys.executable, script, *self.args, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
            )
        else:
            proc = python(script, *self.args, *args, env=environment, stdout=path)
        self.procs.append((proc, log, path))
        return proc

    def alive(self) -> bool:
        return all(proc.poll() is None for proc, _, _ in self.procs)

    def stop(self, *procs: Process) -> None:
        """SIGTERM to each at once, then wait for each (SIGKILL after the grace period)."""
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop(*(proc for proc, _, _ in self.procs))
        for _, log, _ in self.procs:
            log.close()

    def log(self) -> str:
        return "".join(path.read_text(errors="replace") for _, _, path in self.procs)


def kill9(proc: Process) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


def workers_fixture(script: str) -> Any:
    """A `workers` fixture: processes of tests/workers/<script>.py (DSN APP ...) on the test's
    app, which has the effects table they write; the scripts' lease is 1 s, so a killed
    worker's work is taken over fast."""

    @pytest.fixture
    def workers(dsn: str, app: str, db: SQL, tmp_path: Path) -> Iterator[Workers]:
        create_effects(db.conn.execute)
        procs = Workers(script, dsn, app, logs=tmp_path, **{f"{script.upper()}_LEASE": "1.0"})
        yield procs
        procs.close()

    return workers
