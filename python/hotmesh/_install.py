"""Installs or upgrades one app schema: its tables and types from migrations/ (forward-only,
recorded in `<app>.schema_migrations`) and its functions and views from sql/ (re-applied every
time), so that an upgraded schema equals a fresh install (tests/test_schema.py).

sql/ only creates or replaces, so the installer also drops every function, procedure and view
of the schema that the sql/ files did not (re)create in this run: a routine the new sql/
removed, or the old signature of one it changed. It sees that in the catalog: `create or
replace` rewrites an object's catalog row, so a row still where it was before sql/ ran (same
ctid) belongs to an object sql/ no longer defines. The drop comes before sql/99_grants.sql,
which sets every privilege from scratch (and itself rewrites every function's row). An object
of the user's that depends on a dropped one (a view over an old view, say) makes the migrate
fail, naming it, and change nothing. The app schema belongs to hotmesh: a function of your own
in it is dropped too.

Workers of the previous version keep running through a migrate (the new functions take effect
at its commit) as long as the engine serves their worker protocol (`engine_version()`:
`oldest_worker`); a worker checks that at start and after a failed call, and stops with
SchemaMismatch when the schema is newer than it can serve (docs/upgrading.md). The installer
never installs an older engine over a newer one (an old worker restarted with
`MemFlow.init(migrate=True)` would otherwise undo an upgrade).

Everything happens in one transaction under an advisory lock per app, so two processes
migrating the same app at once both succeed: the second waits, then finds nothing to apply.
Workers keep calling functions meanwhile (`create or replace` takes no lock they wait for), but
a migration's ALTER TABLE and a view's replacement need exclusive locks: waiting in line for one
behind an application's open transaction would hold up every worker queued behind it. So every
lock wait of the migrate is bounded by `lock_timeout`; when one runs out the whole migrate rolls
back, logs a warning and tries again after a pause, for up to `patience` seconds. A deadlock
with a worker (the server ends one side: say an old worker's complete_task against a migration's
ALTER TABLE on tasks) is treated the same way when the migrate is the side it ended.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import TupleRow

from hotmesh import _citus, _paths
from hotmesh.errors import HotMeshError, InvalidArgument, SchemaMismatch, shown

APP_ID = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Sets every privilege of the schema from scratch: it runs after stale objects are dropped.
PRIVILEGES_FILE = "99_grants.sql"
# The worker protocol of this package: the functions its worker calls, with their arguments,
# results and meaning (sql/05_version.sql says which protocols an engine serves). 0 is the
# release before engine_version() existed.
WORKER_PROTOCOL = 4
# The migrate's connection, as pg_stat_activity shows it.
APPLICATION_NAME = "hotmesh migrate"
log = logging.getLogger("hotmesh.install")


def package_version() -> str:
    try:
        return importlib.metadata.version("hotmesh")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _warn(diagnostic: pg_errors.Diagnostic) -> None:
    """Pass on the installer's WARNINGs (e.g. sql/99_grants.sql could not create the app's
    roles); the NOTICEs of `create ... if not exists` are noise."""
    if diagnostic.severity_nonlocalized == "WARNING":
        hint = f" ({diagnostic.message_hint})" if diagnostic.message_hint else ""
        log.warning("%s%s", diagnostic.message_primary, hint)


def check_app_id(app_id: object) -> str:
    """The app id, or InvalidArgument saying what a valid one looks like."""
    if not isinstance(app_id, str) or not APP_ID.match(app_id):
        raise InvalidArgument(
            f"invalid app id {shown(app_id)}: use 1 to 63 lowercase letters, digits and "
            "underscores, starting with a letter or underscore (it names a Postgres schema)"
        )
    return app_id


def migrations() -> list[tuple[int, Path]]:
    """The numbered migration files, in order."""
    found = []
    for path in sorted(_paths.migrations_dir().glob("*.sql")):
        match = _MIGRATION.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return found


def sql_files() -> list[Path]:
    """The engine's function files, in the order they are applied (PRIVILEGES_FILE last)."""
    return sorted(_paths.sql_dir().glob("*.sql"), key=lambda p: (p.name == PRIVILEGES_FILE, p))


# A token of SQL text that may hold a ';' that does not end a statement.
_SQL_TOKEN = re.compile(
    r"--[^\n]*"  # line comment
    r"|/\*(?:[^*]|\*(?!/))*\*/"  # block comment (the engine's files do not nest them)
    r"|[eE]'(?:[^'\\]|\\.|'')*'"  # E'...' with backslash escapes
    r"|'(?:[^']|'')*'"  # '...'
    r'|"(?:[^"]|"")*"'  # "identifier"
    r"|(\$[A-Za-z_]*\$)[\s\S]*?\1"  # $tag$ ... $tag$
    r"|;"
)


def split_statements(text: str) -> list[str]:
    """The statements of an SQL file, each without its ';', comment-only pieces left out."""
    statements, start = [], 0
    for match in _SQL_TOKEN.finditer(text):
        if match.group() == ";":
            statements.append(text[start : match.start()])
            start = match.end()
    statements.append(text[start:])
    return [s.strip() for s in statements if _SQL_TOKEN.sub("", s).strip()]


# The engine's routines and views, each with the place of its catalog row (a view's is its
# rewrite rule's: `create or replace view` rewrites that, not pg_class).
_ENGINE_OBJECTS = """
select 'routine', p.oid::regprocedure::text, p.ctid::text
  from pg_proc as p
 where p.pronamespace = current_schema()::regnamespace
union all
select 'view', c.oid::regclass::text, r.ctid::text
  from pg_class as c
  join pg_rewrite as r on r.ev_class = c.oid and r.rulename = '_RETURN'
 where c.relnamespace = current_schema()::regnamespace and c.relkind = 'v'
"""


async def _drop_stale(
    conn: psycopg.AsyncConnection[TupleRow], app_id: str, before: set[TupleRow]
) -> None:
    """Drop the routines and views found `before` sql/ ran whose catalog rows it left as they
    were. Views first, as they may use the routines; one DROP for each kind, so objects that
    depend on each other go together."""
    cur = await conn.execute(_ENGINE_OBJECTS)
    stale = [row for row in await cur.fetchall() if row in before]
    for kind in ("view", "routine"):
        # The names are regclass / regprocedure output: quoted (and qualified) already.
        names = sorted(name for k, name, _ in stale if k == kind)
        if not names:
            continue
        drop = sql.SQL("drop {} {}").format(
            sql.SQL(kind), sql.SQL(", ").join(sql.SQL(name) for name in names)
        )
        try:
            await conn.execute(drop)
        except pg_errors.DependentObjectsStillExist as exc:
            raise HotMeshError(
                f"app {app_id}: cannot drop {kind} {', '.join(names)}, which sql/ no longer "
                f"defines: {exc.diag.message_detail or exc}. Drop or change what depends on "
                "it, then migrate again (nothing was changed)"
            ) from exc
        log.info("app %s: dropped %s %s: sql/ no longer defines it", app_id, kind, ", ".join(names))


class _LockWait(Exception):
    """A lock wait of the migrate ran out of lock_timeout (55P03) or ended in a deadlock
    (40P01), in `step`."""

    def __init__(self, step: str, error: pg_errors.Error) -> None:
        super().__init__(f"{step}: {error.diag.message_primary or error}")


async def migrate(
    dsn: str,
    app_id: str,
    *,
    lock_timeout: float = 2.0,
    patience: float = 600.0,
    distribute: str | None = None,
    shard_count: int | None = None,
) -> list[int]:
    """Install or upgrade schema `app_id`; returns the migration versions it applied.

    No lock wait of the migrate lasts longer than `lock_timeout` seconds, so it never holds up
    workers queued behind it for longer; after one the migrate rolls back and tries again (a
    pause of 0.5 s, doubling up to 10 s), for up to `patience` seconds in all.

    `distribute="job_id"` (on a Citus coordinator) distributes the app's rows by workflow id
    in the same transaction, in `shard_count` shard groups (Citus's citus.shard_count when
    None), and installs an engine per shard group (docs/citus-row-distribution.md)."""
    check_app_id(app_id)
    if not lock_timeout > 0:
        raise InvalidArgument(f"lock_timeout must be > 0 seconds, not {lock_timeout}")
    if distribute not in (None, "job_id"):
        raise InvalidArgument(f"distribute must be 'job_id' (or None), not {distribute!r}")
    if shard_count is not None and distribute is None:
        raise InvalidArgument("shard_count (--shard-count) goes with distribute='job_id'")
    if shard_count is not None and not 1 <= shard_count <= 64000:
        raise InvalidArgument(f"shard_count must be 1 to 64000, not {shard_count}")
    deadline = time.monotonic() + patience
    pause = 0.5
    while True:
        try:
            applied, citus = await _migrate_once(dsn, app_id, lock_timeout, distribute, shard_count)
            if citus:
                await _citus.install_shard_engines(dsn, app_id, sql_files())
            return applied
        except _LockWait as busy:
            if time.monotonic() + pause > deadline:
                raise HotMeshError(
                    f"app {app_id}: gave up migrating after {patience:g} s: a lock it needs "
                    f"stays taken ({busy}); look for long transactions in pg_stat_activity "
                    "and migrate again (nothing was changed)"
                ) from busy
            log.warning(
                "app %s: migrate waited %g s for a lock (%s); rolled back so as not to hold up "
                "the workers, trying again in %g s",
                app_id,
                lock_timeout,
                busy,
                pause,
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 10.0)


async def _migrate_once(
    dsn: str, app_id: str, lock_timeout: float, distribute: str | None, shard_count: int | None
) -> tuple[list[int], bool]:
    """migrate's one try: the versions it applied, and whether the database has Citus."""
    schema = sql.Identifier(app_id)
    step = "the advisory lock"
    conn = await psycopg.AsyncConnection.connect(dsn, application_name=APPLICATION_NAME)
    try:
        await _citus.drop_view_copies(conn, dsn, app_id)
        async with conn, conn.transaction():
            conn.add_notice_handler(_warn)
            # Only other migrates wait for this one, so no timeout yet.
            await conn.execute(
                "select pg_advisory_xact_lock(hashtextextended(%s, 0))", ("hotmesh:" + app_id,)
            )
            await conn.execute(
                "select set_config('lock_timeout', %s, true)", (f"{lock_timeout * 1000:.0f}ms",)
            )
            step = "the schema"
            citus = await _check_citus(conn, app_id, distribute)
            if distribute:
                # Rows distributed by job_id: not a distributed schema (all on one node).
                await conn.execute("set local citus.enable_schema_based_sharding = off")
            await conn.execute(sql.SQL("create schema if not exists {}").format(schema))
            await conn.execute(sql.SQL("set local search_path = {}, pg_temp").format(schema))
            await conn.execute(
                "create table if not exists schema_migrations ("
                " version integer primary key, name text not null,"
                " applied_at timestamptz not null default now())"
            )
            cur = await conn.execute("select version from schema_migrations")
            done = {row[0] for row in await cur.fetchall()}
            await _refuse_downgrade(conn, app_id, done)
            applied = []
            for version, path in migrations():
                if version in done:
                    continue
                step = path.name
                await conn.execute(
                    "insert into schema_migrations (version, name) values (%s, %s)",
                    (version, path.name),
                )
                # One statement at a time: on a Citus coordinator, DDL on a distributed table
                # (create index, alter table ... set) is forwarded to the workers as the raw
                # query string, and a multi-statement string fails there.
                for statement in split_statements(path.read_text()):
                    await conn.execute(statement.encode())
                applied.append(version)
            if citus:
                # Also the tables of newer migrations of an app distributed by job_id.
                step = "distributing the tables by job_id"
                await _citus.distribute_by_job_id(conn, app_id, shard_count, bool(distribute))
            cur = await conn.execute(_ENGINE_OBJECTS)
            before = set(await cur.fetchall())
            *engine, privileges = sql_files()
            if privileges.name != PRIVILEGES_FILE:
                raise HotMeshError(f"{_paths.sql_dir() / PRIVILEGES_FILE} is missing")
            for path in engine:
                step = f"sql/{path.name}"
                await conn.execute(path.read_bytes())
            step = "dropping what sql/ no longer defines"
            await _drop_stale(conn, app_id, before)
            step = f"sql/{privileges.name}"
            await conn.execute(privileges.read_bytes())
    except (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected) as error:
        raise _LockWait(step, error) from error
    except psycopg.OperationalError as error:
        # On Citus: a node that does not answer (its connection fails, SQLSTATE class 08, sent
        # by the coordinator; the loss of this connection itself has no SQLSTATE).
        if not (error.sqlstate or "").startswith("08"):
            raise
        raise HotMeshError(
            f"app {app_id}: a Citus node does not answer ({error.diag.message_primary or error}"
            f", at {step}): start it again, or take it out of the cluster "
            "(citus_disable_node), then migrate again (nothing was changed)"
        ) from error
    return applied, citus


# The Citus cluster this database belongs to, if any: whether this node is its coordinator,
# its worker nodes, whether new schemas are distributed, and whether schema `app` exists
# already and is distributed. Read only when the citus extension is installed.
_CITUS = """
select citus_is_coordinator(),
       (select count(*) from pg_dist_node where groupid <> 0 and noderole = 'primary'),
       current_setting('citus.enable_schema_based_sharding')::boolean,
       to_regnamespace(%(app)s) is not null,
       exists (select from pg_dist_schema where schemaid = to_regnamespace(%(app)s))
"""


async def _check_citus(
    conn: psycopg.AsyncConnection[TupleRow], app_id: str, distribute: str | None = None
) -> bool:
    """On a Citus cluster, refuse what would install an app that its workers cannot use
    (docs/citus.md): an install on a worker node, or a new app whose tables would stay on the
    coordinator because schema-based sharding is off (unless its rows are to be distributed
    by job_id, which needs a coordinator and an app that is not a distributed schema).
    Returns whether Citus is installed."""
    cur = await conn.execute("select exists (select from pg_extension where extname = 'citus')")
    if not (await cur.fetchone() or (False,))[0]:
        if distribute:
            raise HotMeshError(
                f"app {app_id}: --distribute {distribute} needs a Citus coordinator, and this "
                "database has no citus extension (docs/citus.md; nothing was changed)"
            )
        return False
    cur = await conn.execute(_CITUS, {"app": app_id})
    coordinator, workers, sharding, exists, distributed = await cur.fetchone() or (True, 0, 1, 1, 1)
    if not coordinator:
        raise HotMeshError(
            f"app {app_id}: this database is a Citus worker node; migrate (and connect "
            "workers and clients) through the coordinator (nothing was changed)"
        )
    if distribute and distributed:
        raise HotMeshError(
            f"app {app_id}: already a distributed schema (Citus schema-based sharding, all its "
            f"rows on one node); to distribute its rows by {distribute} instead, undistribute "
            "it first (select citus_schema_undistribute(...)), then migrate again "
            "(nothing was changed)"
        )
    if workers and not exists and not sharding and not distribute:
        raise HotMeshError(
            f"app {app_id}: this database is a Citus coordinator with {workers} worker "
            "node(s), but citus.enable_schema_based_sharding is off, so the app's tables would "
            "stay on the coordinator: turn it on (alter database ... set "
            "citus.enable_schema_based_sharding = on, or PGOPTIONS='-c "
            "citus.enable_schema_based_sharding=on') and migrate again (nothing was changed)"
        )
    if exists and distributed:
        log.info("app %s: a distributed schema (Citus schema-based sharding)", app_id)
    return True


async def _refuse_downgrade(
    conn: psycopg.AsyncConnection[TupleRow], app_id: str, done: set[int]
) -> None:
    """SchemaMismatch when the schema is newer than this package: a migration it does not
    know, a newer worker protocol or a newer release. Installing this sql/ over it would undo
    the upgrade (and drop what only the newer sql/ defines)."""
    known = {version for version, _ in migrations()}
    engine = await installed_engine(conn, app_id)
    unknown = sorted(done - known)
    newer = bool(unknown) or (
        engine is not None
        and (
            engine.protocol > WORKER_PROTOCOL
            or _release(engine.version) > (_release(package_version()) or (2**31,))
        )
    )
    if newer:
        at = f"migration {max(done):04d}" if engine is None else _engine_text(engine)
        raise SchemaMismatch(
            f"schema {app_id} is newer than this hotmesh: it is at {at}; this is hotmesh "
            f"{package_version()} (worker protocol {WORKER_PROTOCOL}), which will not install "
            "its older engine over it: upgrade this process to the new release (nothing was "
            "changed)"
        )


def _release(version: str) -> tuple[int, ...]:
    """A release's numbers (0.1.0 -> (0, 1, 0)), to compare them; () when unknown (a package
    run from a checkout that is not installed: then only migrations and protocols count)."""
    return tuple(int(n) for n in re.findall(r"\d+", version)[:3])


@dataclass(frozen=True)
class EngineVersion:
    """What `<app>.engine_version()` returns: the hotmesh release whose sql/ is installed, the
    newest migration applied, the worker protocol the engine speaks and the oldest one it
    still serves (sql/05_version.sql)."""

    version: str
    migration: int
    protocol: int
    oldest_worker: int


def _engine_text(engine: EngineVersion) -> str:
    return (
        f"engine {engine.version} (migration {engine.migration:04d}, worker protocol "
        f"{engine.protocol}, serving workers of protocol {engine.oldest_worker} and newer)"
    )


async def installed_engine(conn: psycopg.AsyncConnection[Any], app_id: str) -> EngineVersion | None:
    """The engine of schema `app_id`, read on `conn`; None when it has no engine_version()
    (an engine of worker protocol 0, or no app at all). Columns are read by name, so an
    engine_version() of another shape is read too (absent columns: protocol 0)."""
    cur = await conn.execute(
        "select to_regprocedure(format('%%I.engine_version()', %s::text)) is not null",
        (check_app_id(app_id),),
        prepare=False,
    )
    if not (await cur.fetchone() or (False,))[0]:
        return None
    cur = await conn.execute(
        sql.SQL("select * from {}.engine_version()").format(sql.Identifier(app_id)),
        prepare=False,
    )
    row = await cur.fetchone()
    got = dict(zip([c.name for c in cur.description or ()], row or (), strict=False))
    return EngineVersion(
        str(got.get("version")),
        int(got.get("migration") or 0),
        int(got.get("protocol") or 0),
        int(got.get("oldest_worker") or 0),
    )


async def engine_version(dsn: str, app_id: str) -> EngineVersion:
    """The engine installed in schema `app_id` (sql/05_version.sql)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        engine = await installed_engine(conn, app_id)
    if engine is None:
        raise HotMeshError(f"app {app_id} has no engine_version(): run `hotmesh migrate`")
    return engine


def worker_mismatch(app_id: str, engine: EngineVersion | None) -> SchemaMismatch | None:
    """Why a worker of this package cannot serve an app whose engine is `engine`; None when
    it can."""
    mine = f"hotmesh {package_version()} (worker protocol {WORKER_PROTOCOL})"
    if engine is not None and engine.oldest_worker > WORKER_PROTOCOL:
        return SchemaMismatch(
            f"schema {app_id} is newer than this worker: it is at {_engine_text(engine)}; "
            f"this worker is {mine}: restart it with the new release"
        )
    if engine is None or engine.protocol < WORKER_PROTOCOL:
        at = "an engine of worker protocol 0" if engine is None else _engine_text(engine)
        return SchemaMismatch(
            f"schema {app_id} is older than this worker: it is at {at}; this worker is "
            f"{mine}: run `hotmesh migrate --app {app_id}` with this release, then restart it"
        )
    return None


async def check_worker(conn: psycopg.AsyncConnection[Any], app_id: str) -> None:
    """SchemaMismatch unless a worker of this package can serve app `app_id` (read on
    `conn`)."""
    mismatch = worker_mismatch(app_id, await installed_engine(conn, app_id))
    if mismatch is not None:
        raise mismatch
    await check_node(conn, app_id)


async def check_node(conn: psycopg.AsyncConnection[Any], app_id: str) -> None:
    """HotMeshError on a Citus worker node: the engine's NOTIFYs (wake-ups) reach only the
    listeners of the node where its functions run, the coordinator (docs/citus.md), so a
    worker or client connected to another node would wait for its 30 s fallback poll."""
    cur = await conn.execute(
        "select exists (select from pg_extension where extname = 'citus')", prepare=False
    )
    if not (await cur.fetchone() or (False,))[0]:
        return
    # A per-shard engine (its jobs a view over a shard: hotmesh/_citus.py) runs on its node.
    cur = await conn.execute(
        "select citus_is_coordinator() or exists (select 1 from pg_class"
        " where oid = to_regclass(format('%%I.jobs', %s::text)) and relkind = 'v')",
        (app_id,),
        prepare=False,
    )
    if (await cur.fetchone() or (True,))[0]:
        return
    raise HotMeshError(
        f"app {app_id}: this database is a Citus worker node, not the coordinator: "
        "wake-ups (NOTIFY) reach only listeners on the coordinator, where hotmesh's "
        "functions run, so connect workers and clients to the coordinator (docs/citus.md)"
    )


async def check_installed(dsn: str, app_id: str) -> None:
    """HotMeshError unless schema `app_id` was installed by `migrate`; connects once, so a
    wrong DSN fails here at once with libpq's own message."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "select to_regclass(format('%%I.schema_migrations', %s::text)) is not null", (app_id,)
        )
        row = await cur.fetchone()
        await check_node(conn, app_id)
    if not (row and row[0]):
        raise HotMeshError(
            f"app {app_id!r} is not installed in this database: run `hotmesh migrate --app "
            f"{app_id}` (or MemFlow.init with migrate=True)"
        )
