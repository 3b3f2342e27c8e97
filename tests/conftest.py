"""Fixtures: every test gets a freshly migrated app schema in the real Postgres at
DATABASE_URL (set by `make test` / `hotmesh db run`), dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from hotmesh import MemFlow
from hotmesh._install import migrate


@pytest.fixture(scope="session")
def dsn() -> str:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.fail("DATABASE_URL is not set: run the tests with `make test` (or `make pytest`)")
    return url


@pytest.fixture
async def app(dsn: str) -> AsyncIterator[str]:
    """A new app schema, installed by the real installer, dropped after the test (with the
    roles <app>_app and <app>_worker the installer made: sql/99_grants.sql)."""
    app_id = "t_" + uuid.uuid4().hex[:12]
    await migrate(dsn, app_id)
    yield app_id
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(app_id))
        )
        for role in (f"{app_id}_app", f"{app_id}_worker"):
            cur = await conn.execute("select from pg_roles where rolname = %s", (role,))
            if await cur.fetchone():
                await conn.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
                await conn.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))


@pytest.fixture
async def mf(app: str, dsn: str) -> AsyncIterator[MemFlow]:
    """A MemFlow client on the test's app (no migration: `app` did it)."""
    client = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    yield client
    await client.close(grace=2.0)


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


@pytest.fixture
def db(dsn: str, app: str) -> Iterator[SQL]:
    """Plain SQL on the test's app schema (search_path set to it)."""
    handle = SQL(dsn, app)
    yield handle
    handle.conn.close()
