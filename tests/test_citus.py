"""hotmesh on a Citus cluster (docs/citus.md): `make test-citus` starts a coordinator and two
workers (tests/citus_cluster.py) and runs these; without that cluster (HOTMESH_CITUS_URL unset,
as in `make test`) they are skipped.

Each test installs apps of its own (schema-based sharding: one app = one distributed schema,
its tables together on one node) and drops them afterwards."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from hotmesh import MemFlow, RetryPolicy, workflow
from hotmesh._install import migrate
from hotmesh.errors import HotMeshError

CITUS_URL = os.environ.get("HOTMESH_CITUS_URL", "")
pytestmark = [
    pytest.mark.citus,
    pytest.mark.skipif(not CITUS_URL, reason="no Citus cluster: run `make test-citus`"),
]


def query(sql: str, *params: Any, url: str = CITUS_URL) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def node_of(app: str) -> int:
    """The port of the node that holds app `app`'s tables."""
    rows = query("select nodeport from citus_shards where table_name = %s::regclass", f"{app}.jobs")
    assert len(rows) == 1, rows
    return int(rows[0][0])


@pytest.fixture
def apps() -> Iterator[list[str]]:
    """App ids for the test (appended by the test); their schemas are dropped afterwards."""
    made: list[str] = []
    yield made
    for app in made:
        query(f"drop schema if exists {app} cascade")


@pytest.fixture
async def app(apps: list[str]) -> AsyncIterator[str]:
    """A freshly installed, distributed app."""
    app_id = f"ct_{uuid.uuid4().hex[:10]}"
    apps.append(app_id)
    await migrate(sharded(CITUS_URL), app_id)
    yield app_id


def sharded(url: str, on: bool = True) -> str:
    """`url` with citus.enable_schema_based_sharding set for the session."""
    value = "on" if on else "off"
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-c%20citus.enable_schema_based_sharding%3D{value}"


# ------------------------------------------------------------------------------ install


async def test_migrate_creates_a_distributed_schema(app: str) -> None:
    assert query("select 1 from citus_schemas where schema_name = %s::regnamespace", app)
    tables = query(
        "select table_name::text, citus_table_type from citus_tables"
        " where table_name::text like %s order by 1",
        f"{app}.%",
    )
    assert {t for t, _ in tables} >= {f"{app}.jobs", f"{app}.tasks", f"{app}.steps"}
    assert {kind for _, kind in tables} == {"schema"}
    # Every table on one node, a worker.
    nodes = query(
        "select distinct nodeport from citus_shards where table_name::text like %s", f"{app}.%"
    )
    assert len(nodes) == 1
    # Migrating again changes nothing and works on the distributed schema.
    assert await migrate(sharded(CITUS_URL), app) == []


async def test_migrate_with_sharding_off_is_refused(apps: list[str]) -> None:
    app_id = f"ct_{uuid.uuid4().hex[:10]}"
    apps.append(app_id)
    with pytest.raises(HotMeshError, match="enable_schema_based_sharding is off"):
        await migrate(sharded(CITUS_URL, on=False), app_id)
    assert not query("select 1 from pg_namespace where nspname = %s", app_id)


# ------------------------------------------------------------------------------ workflows


def lookup_policy(case_id: str) -> dict[str, Any]:
    return {"case_id": case_id, "covered": True}


async def claims_intake(case_id: str) -> dict[str, Any]:
    acts = workflow.proxy_activities(
        activities=[lookup_policy], retry_policy=RetryPolicy(maximum_attempts=5)
    )
    policy = await acts.lookup_policy(case_id)
    await workflow.sleep_for("1 second")
    entity = await workflow.entity()
    await entity.set({"stage": "done"})
    return policy


async def test_quick_start_on_a_distributed_app(app: str) -> None:
    mf = await MemFlow.init(app_id=app, dsn=CITUS_URL, migrate=False)
    try:
        await mf.worker.create(task_queue="claims", workflow=claims_intake)
        handle = await mf.workflow.start(
            workflow_name="claims_intake", args=["A42"], task_queue="claims"
        )
        # Far below the workers' 30 s fallback poll: the wake-ups (NOTIFY) arrive.
        result = await asyncio.wait_for(handle.result(), 20)
    finally:
        await mf.close()
    assert result == {"case_id": "A42", "covered": True}
    rows = query(
        f"select w.status, w.waits, j.context->>'stage' from {app}.workflows as w"  # noqa: S608
        f" join {app}.jobs as j using (id) where w.id = %s",
        handle.workflow_id,
    )
    assert rows == [("completed", [], "done")]
