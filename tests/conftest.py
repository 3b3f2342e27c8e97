"""Fixtures: every test gets a database of its own with a freshly installed, empty app schema in
the real Postgres at DATABASE_URL (set by `make test` / `hotmesh db run`), dropped afterwards.

The installer runs once per session, into a template database; each test's database is a copy
of it (tests/helpers.py, `Databases`). Where the server does not let us create databases, each
test installs an app of its own in DATABASE_URL's database instead."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fleet_harness import Fleet, Observer, create_effects
from helpers import SQL, Databases, installed_app, may_create_databases, with_dbname
from hotmesh import MemFlow


@pytest.fixture(scope="session")
def cluster_dsn() -> str:
    """DATABASE_URL as the session found it: the database the test databases are made from."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.fail("DATABASE_URL is not set: run the tests with `make test` (or `make pytest`)")
    return url


@pytest.fixture(scope="session")
def databases(cluster_dsn: str) -> Iterator[Databases | None]:
    """The session's template database (installed once), or None when we may not create
    databases."""
    if not may_create_databases(cluster_dsn):
        yield None
        return
    made = Databases(cluster_dsn)
    made.create_template()
    yield made
    made.close()


@pytest.fixture
def dsn(
    cluster_dsn: str, databases: Databases | None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The test's own database (a copy of the template); DATABASE_URL (and PGDATABASE) point
    at it for the test and the processes it starts."""
    if databases is None:
        yield cluster_dsn
        return
    name = databases.create()
    url = with_dbname(cluster_dsn, name)
    monkeypatch.setenv("DATABASE_URL", url)
    if "PGDATABASE" in os.environ:
        monkeypatch.setenv("PGDATABASE", name)
    try:
        yield url
    finally:
        databases.drop(name)


@pytest.fixture
async def app(dsn: str, databases: Databases | None) -> AsyncIterator[str]:
    """The test's app schema: installed, empty, with the roles <app>_app and <app>_worker
    (sql/99_grants.sql). A test that changes those roles installs its own (`installed_app`)."""
    if databases is not None:
        yield databases.app
        return
    async with installed_app(dsn) as app_id:
        yield app_id


@pytest.fixture
async def mf(app: str, dsn: str) -> AsyncIterator[MemFlow]:
    """A MemFlow client on the test's app (no migration: `app` did it)."""
    client = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    yield client
    await client.close(grace=2.0)


@pytest.fixture
async def remote(app: str, dsn: str) -> AsyncIterator[MemFlow]:
    """A second client on the same app: the other worker (remote activities, another queue)."""
    client = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    yield client
    await client.close(grace=1.0)


@pytest.fixture
def db(dsn: str, app: str) -> Iterator[SQL]:
    """Plain SQL on the test's app schema (search_path set to it)."""
    handle = SQL(dsn, app)
    yield handle
    handle.close()


# The load and database-fault tests (tests/fleet_harness.py).


@pytest.fixture
def obs(dsn: str, app: str) -> Iterator[Observer]:
    """The test's observer connection, with the fleet's `effects` table created."""
    observer = Observer(dsn, app)
    create_effects(observer)
    yield observer
    observer.close()


@pytest.fixture
def fleet(dsn: str, app: str, tmp_path: Path) -> Iterator[Fleet]:
    """tests/workers/fleet.py processes on the test's app (started by the test)."""
    workers = Fleet(dsn, app, tmp_path)
    yield workers
    workers.stop()
