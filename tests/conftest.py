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

# The longest tests that are work units of their own under `--dist loadgroup` (seconds of a
# `make test` at load 8). xdist hands out the xdist_groups first (the most tests), then the
# other tests in collection order: these go first, so that the run does not end with one
# worker busy on a long test while the other has nothing left.
LONG_FIRST = (
    "test_docs.py::test_readme_runs_top_to_bottom",  # 30 (a cluster of its own)
    "test_crash_matrix.py::test_kill9_at_every_sql_boundary",  # 26
    "test_upgrade.py::test_old_workers_serve_through_an_upgrade",  # 17
    "test_hostile.py::test_every_public_sql_function_refuses_hostile_arguments_clearly",  # 13
    "test_hostile.py::test_python_entry_points_raise_hotmesh_errors_and_change_nothing",  # 11
    "test_upgrade.py::test_a_worker_refuses_a_schema_older_than_it",  # 9
    "test_workflow_basics.py::test_concurrent_migrations_all_succeed",  # 9
    "test_bench.py::test_bench_reports_every_scenario",  # 4-9 each
    "test_db_faults.py::test_terminate_every_worker_connection_repeatedly",  # 8
    "test_schedules.py::test_cli",  # 8
    "test_schema.py::test_an_upgraded_app_equals_a_fresh_install",  # 7
    "test_roles.py::test_a_revoked_worker_stops_and_its_task_is_taken_over",  # 7
    "test_activities.py::test_many_remote_activity_workflows_none_stuck",  # 7
    "test_properties.py::test_the_state_machine_never_reaches_an_undefined_state",  # 7
    "test_upgrade.py::test_a_worker_exits_when_the_schema_is_newer_than_it",  # 6
)


def _long_rank(item: pytest.Item) -> int:
    name = item.nodeid.removeprefix("tests/").split("[")[0].split("@")[0]
    return LONG_FIRST.index(name) if name in LONG_FIRST else len(LONG_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_long_rank)  # stable: the rest keep their order


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
