"""Installs or upgrades one app schema: its tables from migrations/ (forward-only, recorded in
`<app>.schema_migrations`) and its functions from sql/ (re-applied every time).

Everything happens in one transaction under an advisory lock per app, so two processes
migrating the same app at once both succeed: the second waits, then finds nothing to apply.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from hotmesh import _paths
from hotmesh.errors import HotMeshError, InvalidArgument, shown

APP_ID = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
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
    """The engine's function files, in the order they are applied."""
    return sorted(_paths.sql_dir().glob("*.sql"))


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
        for path in sql_files():
            await conn.execute(path.read_bytes())
    return applied


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
