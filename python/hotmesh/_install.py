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
at its commit), but a call of theirs to a routine that is gone fails (42883): when an upgrade
drops or re-signatures what workers call, stop the old workers first (docs/schema.md).

Everything happens in one transaction under an advisory lock per app, so two processes
migrating the same app at once both succeed: the second waits, then finds nothing to apply.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.rows import TupleRow

from hotmesh import _paths
from hotmesh.errors import HotMeshError, InvalidArgument, shown

APP_ID = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Sets every privilege of the schema from scratch: it runs after stale objects are dropped.
PRIVILEGES_FILE = "99_grants.sql"
log = logging.getLogger("hotmesh.install")


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


async def migrate(dsn: str, app_id: str) -> list[int]:
    """Install or upgrade schema `app_id`; returns the migration versions it applied."""
    check_app_id(app_id)
    schema = sql.Identifier(app_id)
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
        conn.add_notice_handler(_warn)
        await conn.execute(
            "select pg_advisory_xact_lock(hashtextextended(%s, 0))", ("hotmesh:" + app_id,)
        )
        await conn.execute(sql.SQL("create schema if not exists {}").format(schema))
        await conn.execute(sql.SQL("set local search_path = {}, pg_temp").format(schema))
        await conn.execute(
            "create table if not exists schema_migrations ("
            " version integer primary key, name text not null,"
            " applied_at timestamptz not null default now())"
        )
        cur = await conn.execute("select version from schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        applied = []
        for version, path in migrations():
            if version in done:
                continue
            await conn.execute(
                "insert into schema_migrations (version, name) values (%s, %s)",
                (version, path.name),
            )
            await conn.execute(path.read_bytes())
            applied.append(version)
        cur = await conn.execute(_ENGINE_OBJECTS)
        before = set(await cur.fetchall())
        *engine, privileges = sql_files()
        if privileges.name != PRIVILEGES_FILE:
            raise HotMeshError(f"{_paths.sql_dir() / PRIVILEGES_FILE} is missing")
        for path in engine:
            await conn.execute(path.read_bytes())
        await _drop_stale(conn, app_id, before)
        await conn.execute(privileges.read_bytes())
    return applied


@dataclass(frozen=True)
class EngineVersion:
    """What `<app>.engine_version()` returns: the hotmesh release whose sql/ is installed, and
    the newest migration applied."""

    version: str
    migration: int


async def engine_version(dsn: str, app_id: str) -> EngineVersion:
    """The engine installed in schema `app_id` (sql/05_version.sql)."""
    query = sql.SQL("select version, migration from {}.engine_version()")
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(query.format(sql.Identifier(check_app_id(app_id))))
        [(version, migration)] = await cur.fetchall()
    return EngineVersion(version, migration)


async def check_installed(dsn: str, app_id: str) -> None:
    """HotMeshError unless schema `app_id` was installed by `migrate`; connects once, so a
    wrong DSN fails here at once with libpq's own message."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "select to_regclass(format('%%I.schema_migrations', %s::text)) is not null", (app_id,)
        )
        row = await cur.fetchone()
    if not (row and row[0]):
        raise HotMeshError(
            f"app {app_id!r} is not installed in this database: run `hotmesh migrate --app "
            f"{app_id}` (or MemFlow.init with migrate=True)"
        )
