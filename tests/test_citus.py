"""hotmesh on a Citus cluster (docs/citus.md): `make test-citus` starts a coordinator and two
workers (tests/citus_cluster.py) and runs these; without that cluster (HOTMESH_CITUS_URL unset,
as in `make test`) they are skipped.

Each test installs apps of its own (schema-based sharding: one app = one distributed schema,
its tables together on one node) and drops them afterwards."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from hotmesh import MemFlow, RetryPolicy, workflow
from hotmesh._install import migrate
from hotmesh.errors import HotMeshError, InvalidArgument

CITUS_URL = os.environ.get("HOTMESH_CITUS_URL", "")
# python/, for the demo's workflows (examples.demo).
PYTHON_DIR = str(Path(__file__).resolve().parent.parent / "python")
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
async def apps() -> AsyncIterator[list[str]]:
    """App ids for the test (appended by the test); their schemas are dropped afterwards, and
    their shard engines on the nodes (none is left behind)."""
    from hotmesh._citus import drop_shard_engines

    made: list[str] = []
    yield made
    for app in made:
        query(f"drop schema if exists {app} cascade")
        await drop_shard_engines(CITUS_URL, app)
        assert not engine_schemas(app)


@pytest.fixture
async def app(apps: list[str]) -> AsyncIterator[str]:
    """A freshly installed, distributed app."""
    app_id = f"ct_{uuid.uuid4().hex[:10]}"
    apps.append(app_id)
    await migrate(sharded(CITUS_URL), app_id)
    yield app_id


KEY = Jsonb({"idempotency_key": "order-7"})


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


async def test_the_app_roles_read_every_view(app: str) -> None:
    """A login member of <app>_app (or of <app>_reader) reads every view of a distributed app,
    as on a single server: Citus checks the views' tables with the reader's rights on the node
    that holds them (connecting there as the login: `set role` to the NOLOGIN roles cannot),
    and the roles may read there the columns the views show and no other."""
    query(f"select {app}.start_workflow('w', '[]', 'q', 'v1')")
    query(f"select {app}.set_queue_limits('q', 2, 5, '1 minute')")
    views = [
        v
        for (v,) in query(
            "select relname from pg_class where relnamespace = %s::regnamespace"
            " and relkind = 'v' order by 1",
            app,
        )
    ]
    assert {"workflows", "queue_backlog", "workflow_wait_list"} <= set(views)
    for role in (f"{app}_app", f"{app}_reader"):
        login = f"{role}_login"
        query(f"create role {login} login in role {role}")
        try:
            url = psycopg.conninfo.make_conninfo(CITUS_URL, user=login)
            with psycopg.connect(url, autocommit=True) as conn:
                for view in views:
                    conn.execute(f"select * from {app}.{view}").fetchall()  # noqa: S608
                row = conn.execute(
                    f"select status, waiting_on from {app}.workflows where id = 'v1'"  # noqa: S608
                ).fetchone()
                assert row == ("pending", None)
                backlog = conn.execute(
                    f"select ready, max_running, tokens from {app}.queue_backlog"  # noqa: S608
                    " where task_queue = 'q'"
                ).fetchone()
                assert backlog == (1, 2, 5.0)
                # Not the columns no view shows.
                for column in ("payload", "lease_token"):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        conn.execute(f"select {column} from {app}.tasks")  # noqa: S608
        finally:
            query(f"drop role {login}")


# ------------------------------------------------------------------------------ pgTAP


def test_pgtap_suite_on_a_distributed_schema(app: str) -> None:
    """The engine's pgTAP suite, run on the node that holds the app's tables: there Citus
    executes every query locally, in the session, where pgTAP's temporary tables are (through
    the coordinator, an assertion that reads a table is sent to that node whole, and fails).
    DDL propagation is off for the session (the files create helpers in pg_temp, which a worker
    node refuses to propagate), and nested execution is allowed: every shard is local."""
    port = node_of(app)
    params = psycopg.conninfo.conninfo_to_dict(CITUS_URL)
    root = Path(__file__).parent / "sql"
    files = sorted(str(p) for p in root.glob("*.sql"))
    env = {
        **os.environ,
        "PGHOST": str(params["host"]),
        "PGPORT": str(port),
        "PGUSER": str(params.get("user", "postgres")),
        "PGDATABASE": str(params["dbname"]),
        # Shards shown: 42_job_transitions reads the HOT updates of jobs's shard.
        "PGOPTIONS": "-c citus.enable_ddl_propagation=off "
        "-c citus.allow_nested_distributed_execution=on "
        "-c citus.show_shards_for_app_name_prefixes=*",
    }
    query("create extension if not exists pgtap")
    query("create extension if not exists plpgsql_check")
    done = subprocess.run(
        ["pg_prove", "--ext", ".sql", "--set", f"app={app}", *files],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "All tests successful" in done.stdout


# ------------------------------------------------------------------------------ three apps

# Workflows per app in the load (tests/workers/fleet.py: hooks, signals, entity, effects).
LOAD = int(os.environ.get("HOTMESH_CITUS_LOAD", "500"))


async def demo_flow(app: str) -> None:
    """The claims-review demo (python/examples/demo.py) on `app`: two hooks fill the entity,
    a person approves from SQL through the reviewers' inbox (a human task), another claim is
    withdrawn (cancelled) and its task with it."""
    from examples import demo

    mf = await MemFlow.init(app_id=app, dsn=CITUS_URL, migrate=False)
    try:
        await mf.worker.create(
            task_queue="agents",
            workflow=[demo.claims_review, demo.verify_coverage, demo.generate_summary],
        )
        ids = {}
        for case in ("A42", "B17"):
            handle = await mf.workflow.start(
                workflow_name="claims_review",
                args=[case],
                task_queue="agents",
                entity="claims-review",
                workflow_id=f"claim-{case}",
            )
            ids[case] = handle.workflow_id
        for workflow_id in ids.values():
            await asyncio.wait_for(demo.wait_until_waiting(mf, workflow_id), 30)
        resolved = query(
            f"select status from {app}.resolve_human_task("  # noqa: S608
            f" (select id from {app}.list_human_tasks(metadata => %s::jsonb)),"
            " 'ann', '{\"approved\": true}')",
            '{"case": "A42"}',
        )
        assert resolved == [("resolved",)]
        final = await mf.workflow.get_handle(ids["A42"]).result(timeout=20)
        assert final["stage"] == "complete", final  # type: ignore[index]
        assert final["approved"] is True, final  # type: ignore[index]
        query(f"select {app}.cancel_workflow(%s, 'withdrawn')", ids["B17"])
        assert await mf.workflow.get_handle(ids["B17"]).status() == "cancelled"
        left = query(
            f"select status from {app}.list_human_tasks(status => 'cancelled',"  # noqa: S608
            " metadata => %s::jsonb)",
            '{"case": "B17"}',
        )
        assert left == [("cancelled",)]
    finally:
        await mf.close()


def spread(apps: list[str]) -> dict[str, int]:
    """Place the apps on different nodes (a worker each, round robin); returns app -> port."""
    workers = [
        (str(n), int(p))
        for n, p in query(
            "select nodename, nodeport from pg_dist_node where groupid <> 0 order by nodeport"
        )
    ]
    for i, app in enumerate(apps):
        name, port = workers[i % len(workers)]
        if node_of(app) != port:
            query("select citus_schema_move(%s::regnamespace, %s, %s)", app, name, port)
    return {app: node_of(app) for app in apps}


@pytest.mark.timeout(1800)
async def test_three_apps_on_different_nodes(apps: list[str], tmp_path: Path) -> None:
    """Three apps, their schemas on different nodes: each runs a load of LOAD workflows
    while one worker process of each app is killed (SIGKILL) and replaced, and the first
    app's schema is moved to another node (citus_schema_move, online) while its workers run;
    nothing is lost anywhere. Then each runs the quick start and the claims-review demo."""
    import sys

    from fleet_harness import (
        Fleet,
        Observer,
        create_effects,
        expect_clean,
        outcome,
        send_signals,
        start_workflows,
        wait_until,
    )
    from helpers import kill9

    sys.path.insert(0, PYTHON_DIR)
    ids = [f"ct_{uuid.uuid4().hex[:10]}" for _ in range(3)]
    apps.extend(ids)
    for app_id in ids:
        await migrate(sharded(CITUS_URL), app_id)
    placed = spread(ids)
    assert len(set(placed.values())) >= 2, placed

    observers = {a: Observer(CITUS_URL, a) for a in ids}
    fleets = {a: Fleet(CITUS_URL, a, tmp_path / a) for a in ids}
    try:
        for app_id in ids:
            (tmp_path / app_id).mkdir()
            create_effects(observers[app_id])
            # The test's own table: Citus moves a table online only with a replica identity.
            observers[app_id].rows("alter table effects replica identity full")
            start_workflows(observers[app_id], 1, LOAD)
            send_signals(observers[app_id], list(range(1, LOAD + 1)))
            fleets[app_id].start(processes=2, concurrency=8)
        # A quarter done: kill one worker of each app in the middle of its work, replace it.
        for app_id in ids:
            done = "select count(*) from jobs where status = 'completed'"
            wait_until(observers[app_id], done, LOAD // 4, 300)
            kill9(fleets[app_id].workers.procs[0][0])
            fleets[app_id].start(processes=1, concurrency=8)
        # Move the first app's schema to another worker while its workers run.
        first = ids[0]
        target = next(
            (str(n), int(p))
            for n, p in query(
                "select nodename, nodeport from pg_dist_node where groupid <> 0"
                " and nodeport <> %s order by nodeport limit 1",
                placed[first],
            )
        )
        query("select citus_schema_move(%s::regnamespace, %s, %s)", first, *target)
        assert node_of(first) == target[1]
        for app_id in ids:
            wait_until(
                observers[app_id], "select count(*) from jobs where status = 'completed'", LOAD, 600
            )
            figures = outcome(observers[app_id], LOAD)
            print(f"{app_id} on {node_of(app_id)}: {figures}")
            expect_clean(figures)
    finally:
        for app_id in ids:
            fleets[app_id].stop()
            observers[app_id].close()
    # Then, on the same three apps (one moved), the quick start and the demo.
    for app_id in ids:
        await test_quick_start_on_a_distributed_app(app_id)
        await demo_flow(app_id)


async def test_a_client_on_a_worker_node_is_refused(app: str) -> None:
    """Connected to the node that holds the app instead of the coordinator, a client (and a
    worker) would miss the wake-ups: a clear error instead of a silent 30 s delay."""
    port = node_of(app)
    url = CITUS_URL.replace(
        f"port={psycopg.conninfo.conninfo_to_dict(CITUS_URL)['port']}", f"port={port}"
    )
    with pytest.raises(HotMeshError, match="Citus worker node, not the coordinator"):
        await MemFlow.init(app_id=app, dsn=url, migrate=False)
    with pytest.raises(HotMeshError, match="Citus worker node"):
        await migrate(url, app)


# ------------------------------------------------------------------------------ by job_id


NODES = os.environ.get("HOTMESH_CITUS_NODES", "").split()


def engine_schemas(app_id: str) -> list[tuple[int, str]]:
    """The shard engines' schemas of app `app_id` on the nodes: (node port, schema)."""
    found = []
    for url in NODES:
        port = int(psycopg.conninfo.conninfo_to_dict(url)["port"])
        for (schema,) in query(
            "select nspname from pg_namespace"
            " where obj_description(oid, 'pg_namespace') = %s order by 1",
            f"hotmesh: a shard engine of app {app_id}",
            url=url,
        ):
            found.append((port, schema))
    return found


@pytest.fixture
async def by_job_id(apps: list[str]) -> str:
    """A freshly installed app distributed by job_id in 4 shard groups (`migrate(...,
    distribute="job_id")`), with its shard engines; through a session with schema-based
    sharding on, which the distribution turns off for its own transaction."""
    app_id = f"ct_{uuid.uuid4().hex[:10]}"
    apps.append(app_id)
    await migrate(sharded(CITUS_URL), app_id, distribute="job_id", shard_count=4)
    return app_id


def test_the_docs_distribute_an_app_by_job_id(apps: list[str], tmp_path: Path) -> None:
    """The `citus`-tagged blocks of docs/citus-row-distribution.md, top to bottom, as a reader
    types them against the coordinator (tests/test_docs.py runs every other block)."""
    from test_docs import ROOT, Session, _runs, blocks

    apps.append("orders")
    env = {**os.environ, "DATABASE_URL": CITUS_URL}
    for key, value in psycopg.conninfo.conninfo_to_dict(CITUS_URL).items():
        if key in ("host", "port", "user", "dbname"):
            env["PGDATABASE" if key == "dbname" else "PG" + key.upper()] = str(value)
    session = Session(env, tmp_path)
    ran = 0
    try:
        for block in blocks(ROOT / "docs" / "citus-row-distribution.md"):
            if _runs(block, citus=True):
                session.run(block)
                ran += 1
    finally:
        session.close()
    assert ran >= 2
    assert len(query("select 1 from citus_shards where table_name = 'orders.jobs'::regclass")) == 4


async def test_distributing_by_job_id_refuses_what_it_cannot_do(app: str, apps: list[str]) -> None:
    """migrate(distribute="job_id") explains itself and changes nothing: on a database without
    Citus, on a worker node, on an app that is a distributed schema, into another number of
    shards than the app has, or with a worker node down."""
    fresh = f"ct_{uuid.uuid4().hex[:10]}"
    apps.append(fresh)
    plain = f"ct_plain_{uuid.uuid4().hex[:8]}"
    query(f"create database {plain}")
    try:
        with pytest.raises(HotMeshError, match="needs a Citus coordinator"):
            await migrate(
                psycopg.conninfo.make_conninfo(CITUS_URL, dbname=plain), fresh, distribute="job_id"
            )
    finally:
        query(f"drop database {plain} with (force)")
    with pytest.raises(HotMeshError, match="Citus worker node"):
        await migrate(NODES[1], fresh, distribute="job_id")
    with pytest.raises(HotMeshError, match="already a distributed schema"):
        await migrate(CITUS_URL, app, distribute="job_id")
    assert query("select count(*) from citus_tables where table_name::text like %s", f"{app}.%")
    with pytest.raises(InvalidArgument, match="distribute must be 'job_id'"):
        await migrate(CITUS_URL, fresh, distribute="id")
    with pytest.raises(InvalidArgument, match="goes with distribute='job_id'"):
        await migrate(CITUS_URL, fresh, shard_count=2)
    await migrate(CITUS_URL, fresh, distribute="job_id", shard_count=2)
    # Again: nothing to do (and no shard count: the app's own).
    assert await migrate(CITUS_URL, fresh, distribute="job_id") == []
    with pytest.raises(HotMeshError, match="already distributed by job_id in 2 shard groups"):
        await migrate(CITUS_URL, fresh, distribute="job_id", shard_count=4)
    # A worker node down: the error says which, and no schema is left half-made.
    import citus_cluster

    cluster = Path(os.environ["HOTMESH_CITUS_DIR"])
    node = cluster / "n2"
    down = f"ct_{uuid.uuid4().hex[:10]}"
    apps.append(down)
    citus_cluster.pgcluster._pg(node, "pg_ctl", "stop", "-D", str(node / "data"), "-m", "fast")
    try:
        with pytest.raises(HotMeshError, match="a Citus node does not answer"):
            await migrate(CITUS_URL, down, distribute="job_id", shard_count=2, patience=0)
    finally:
        citus_cluster.up(cluster)
    assert not query("select 1 from pg_namespace where nspname = %s", down)


async def test_an_app_distributes_by_job_id(by_job_id: str) -> None:
    """The first steps of docs/citus-row-distribution.md: one app's rows distributed by
    job_id. Every table with a job_id that is never null distributes by it, colocated with
    jobs (Citus refuses a unique key without the distribution column, so this holds the keys
    to that), a start's idempotency keys (their own table, migration 0023) by the key, and the
    others become reference tables. Starts work on it through the coordinator, and so do the
    claim's probes (the claim runs on the per-shard engines)."""
    app_id = by_job_id
    tables = [
        t
        for (t,) in query(
            "select relname from pg_class where relnamespace = %s::regnamespace and relkind = 'r'",
            app_id,
        )
    ]
    # Not a distributed schema, though the migrate's session had schema-based sharding on.
    assert not query("select 1 from citus_schemas where schema_name = %s::regnamespace", app_id)
    kinds = dict(
        query(
            "select table_name::text, citus_table_type from citus_tables"
            " where table_name::text like %s",
            f"{app_id}.%",
        )
    )
    assert len(kinds) == len(tables), kinds
    by_job = {t for t, k in kinds.items() if k == "distributed"} - {f"{app_id}.start_keys"}
    assert {
        f"{app_id}.{t}"
        for t in ["jobs", "steps", "threads", "tasks", "runs", "run_steps", "human_tasks"]
    } <= by_job
    # All in one colocation group: a workflow's rows on one node, together.
    groups = query(
        "select count(distinct colocation_id) from citus_tables where table_name::text = any(%s)",
        sorted(by_job),
    )
    assert groups == [(1,)]
    # Starts: one by one, in a batch, with an idempotency key (held across shards).
    app = app_id
    ids = [f"d{n}" for n in range(8)]
    plans = [{"workflow_name": "w", "task_queue": "q", "workflow_id": i} for i in ids]
    assert query(f"select {app}.start_workflows(%s)", Jsonb(plans))[0][0] == ids
    started = query(f"select {app}.start_workflow('w', '[]', 'q', 'k1', null, %s)", KEY)
    again = query(f"select {app}.start_workflow('w', '[]', 'q', 'k2', null, %s)", KEY)
    assert started == again == [("k1",)]
    with pytest.raises(psycopg.Error, match='"d0" is already taken') as taken:
        query(f"select {app}.start_workflow('w', '[]', 'q', 'd0')")
    assert taken.value.sqlstate == "HM001"
    rows = query(
        f"select count(*), count(distinct get_shard_id_for_distribution_column("  # noqa: S608
        f"'{app}.jobs', id)) from {app}.jobs"
    )
    assert rows[0][0] == 9 and rows[0][1] > 1, rows
    # Migrated again once distributed: no function keeps its generic plans, which Citus
    # cannot distribute (sql/97_citus.sql), and the claim's probes across every shard run
    # (`exists (select 1 ...)`: Citus 13.2 cannot send `select from` to several shards).
    assert await migrate(sharded(CITUS_URL, on=False), app_id) == []
    generic = query(
        "select count(*) from pg_proc where pronamespace = %s::regnamespace"
        " and 'plan_cache_mode=force_generic_plan' = any(proconfig)",
        app,
    )
    assert generic == [(0,)]
    with psycopg.connect(CITUS_URL, autocommit=True, options=f"-c search_path={app}") as conn:
        conn.execute("select _fire_timeouts(now())")


async def approved_intake(case_id: str) -> dict[str, Any]:
    """The README quick start's workflow, and a person's approval (a signal)."""
    acts = workflow.proxy_activities(
        activities=[lookup_policy], retry_policy=RetryPolicy(maximum_attempts=5)
    )
    policy = await acts.lookup_policy(case_id)
    approved = await workflow.wait_for("approve")
    return {**policy, "approved": approved}


async def test_the_quick_start_on_an_app_distributed_by_job_id(by_job_id: str) -> None:
    """The claim on an app distributed by job_id (docs/citus-row-distribution.md): migrated
    again once distributed, the app gets a per-shard engine on the node of each shard group,
    and a worker per engine, connected to that node, serves the workflows of its shards. On
    every shard group a workflow starts, runs an activity, waits for a signal, takes it and
    completes (each wake-up is the node's own NOTIFY, far below the 30 s poll); the
    coordinator then reads every row of them. A job of another shard is refused there."""
    from helpers import until
    from hotmesh._citus import shard_engines

    app_id = by_job_id
    async with await psycopg.AsyncConnection.connect(CITUS_URL) as conn:
        engines = await shard_engines(conn, CITUS_URL, app_id)
    assert [e.schema for e in engines] == [f"{app_id}_s{n}" for n in range(4)]
    assert len({e.dsn for e in engines}) == 2  # both worker nodes

    def workflow_id(low: int, high: int) -> str:
        """An id that Citus places in the shard group of hash range [low, high]."""
        for n in range(10_000):
            candidate = f"claim-{n}"
            if low <= query("select worker_hash(%s::text)", candidate)[0][0] <= high:
                return candidate
        raise AssertionError(f"no id in [{low}, {high}]")

    ids = [workflow_id(e.low, e.high) for e in engines]
    flows = [await MemFlow.init(app_id=e.schema, dsn=e.dsn, migrate=False) for e in engines]
    try:
        handles = []
        for mf, wid in zip(flows, ids, strict=True):
            await mf.worker.create(task_queue="claims", workflow=approved_intake)
            handles.append(
                await mf.workflow.start(
                    workflow_name="approved_intake",
                    args=[wid],
                    task_queue="claims",
                    workflow_id=wid,
                )
            )
        for handle in handles:
            waiting = f"select 1 from {app_id}.steps where job_id = %s and kind = 'signal'"  # noqa: S608
            await until(lambda: query(waiting, handle.workflow_id), "waits for approve")  # noqa: B023
            assert (await handle.signal("approve", True))["status"] == "delivered"
        results = [await asyncio.wait_for(h.result(), 20) for h in handles]
        # A child, say, whose id belongs to another shard group: refused, not misplaced.
        other = workflow_id(engines[1].low, engines[1].high)
        with pytest.raises(psycopg.errors.WithCheckOptionViolation):
            query(
                f"select {engines[0].schema}.start_workflow('w', '[]', 'q', %s)",
                other,
                url=engines[0].dsn,
            )
    finally:
        for mf in flows:
            await mf.close()
    assert results == [{"case_id": wid, "covered": True, "approved": True} for wid in ids]
    # Through the coordinator: every workflow completed, one activity run each, no task left.
    rows = query(
        f"select j.id, j.status, count(s.*) filter (where s.kind = 'activity'),"  # noqa: S608
        f" max(s.attempt) filter (where s.kind = 'activity')"
        f" from {app_id}.jobs as j join {app_id}.steps as s on s.job_id = j.id"
        " group by j.id, j.status order by j.id"
    )
    assert rows == sorted((wid, "completed", 1, 1) for wid in ids)
    assert query(f"select count(*) from {app_id}.tasks") == [(0,)]  # noqa: S608


# Workflows in the fault test on the app distributed by job_id, over its 4 shard groups.
LOAD_BY_JOB = int(os.environ.get("HOTMESH_CITUS_LOAD_BY_JOB", "400"))


def in_group(low: int, high: int, prefix: str = "claim") -> str:
    """An id that Citus places in the shard group of hash range [low, high]."""
    for n in range(10_000):
        candidate = f"{prefix}-{n}"
        if low <= query("select worker_hash(%s::text)", candidate)[0][0] <= high:
            return candidate
    raise AssertionError(f"no id in [{low}, {high}]")


async def test_the_app_roles_on_the_shard_engines(by_job_id: str) -> None:
    """sql/99_grants.sql on each shard engine, with the app's roles: a login of
    <app>_worker serves an engine, one of <app>_app starts a workflow there and reads its
    result, one of <app>_reader reads it (the engine's views, and the app's through the
    coordinator) and may neither start a workflow nor read a task's payload."""
    from hotmesh._citus import shard_engines

    app_id = by_job_id
    async with await psycopg.AsyncConnection.connect(CITUS_URL) as conn:
        engines = await shard_engines(conn, CITUS_URL, app_id)
    logins = {group: f"{app_id}_{group}_login" for group in ("worker", "app", "reader")}
    for group, login in logins.items():
        query(f"create role {login} login in role {app_id}_{group}")
    try:
        engine = engines[0]
        wid = in_group(engine.low, engine.high)

        def as_login(group: str, url: str) -> str:
            return psycopg.conninfo.make_conninfo(url, user=logins[group])

        worker = await MemFlow.init(
            app_id=engine.schema, dsn=as_login("worker", engine.dsn), migrate=False
        )
        client = await MemFlow.init(
            app_id=engine.schema, dsn=as_login("app", engine.dsn), migrate=False
        )
        try:
            await worker.worker.create(task_queue="claims", workflow=claims_intake)
            handle = await client.workflow.start(
                workflow_name="claims_intake", args=[wid], task_queue="claims", workflow_id=wid
            )
            assert await asyncio.wait_for(handle.result(), 20) == {"case_id": wid, "covered": True}
        finally:
            await client.close()
            await worker.close()
        schema = engine.schema
        reader = as_login("reader", engine.dsn)
        done = f"select status from {schema}.workflows where id = %s"  # noqa: S608
        assert query(done, wid, url=reader) == [("completed",)]
        assert query(f"select {schema}.workflow_status(%s)", wid, url=reader) == [("completed",)]
        assert query(
            f"select status from {app_id}.workflows where id = %s",  # noqa: S608
            wid,
            url=as_login("reader", CITUS_URL),
        ) == [("completed",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            query(f"select {schema}.start_workflow('w', '[]', 'q', %s)", wid + "x", url=reader)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            query(f"select payload from {schema}.tasks", url=reader)  # noqa: S608
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app_login = as_login("app", engine.dsn)
            query(f"select * from {schema}.claim_tasks('{{claims}}', 'w')", url=app_login)  # noqa: S608
    finally:
        for login in logins.values():
            query(f"drop role {login}")


async def test_a_shard_group_moves_and_migrate_follows(by_job_id: str) -> None:
    """A shard group moved to the other node (citus_move_shard_placement, online: logical
    replication) with a workflow waiting in it for a signal: `migrate` again creates its
    engine on the new node and drops the stale one on the old node, and the workflow, served
    by a worker on the new node, takes its signal there and completes."""
    from helpers import until
    from hotmesh._citus import shard_engines

    app_id = by_job_id

    async def engines() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(CITUS_URL) as conn:
            return await shard_engines(conn, CITUS_URL, app_id)

    before = (await engines())[0]
    wid = in_group(before.low, before.high)
    mf = await MemFlow.init(app_id=before.schema, dsn=before.dsn, migrate=False)
    try:
        await mf.worker.create(task_queue="claims", workflow=approved_intake)
        await mf.workflow.start(
            workflow_name="approved_intake", args=[wid], task_queue="claims", workflow_id=wid
        )
        waiting = f"select 1 from {app_id}.steps where job_id = %s and kind = 'signal'"  # noqa: S608
        await until(lambda: query(waiting, wid), "waits for approve")
    finally:
        await mf.close()
    old_port = int(psycopg.conninfo.conninfo_to_dict(before.dsn)["port"])
    (shard, host), *_ = query(
        "select shardid, nodename from citus_shards where table_name = %s::regclass"
        " and nodeport = %s and shardid = get_shard_id_for_distribution_column(%s, %s::text)",
        f"{app_id}.jobs",
        old_port,
        f"{app_id}.jobs",
        wid,
    )
    (new_port,) = [
        p for (p,) in query("select nodeport from pg_dist_node where groupid <> 0") if p != old_port
    ]
    query(
        "select citus_move_shard_placement(%s, %s, %s, %s, %s)",
        shard,
        host,
        old_port,
        host,
        new_port,
    )
    assert await migrate(CITUS_URL, app_id) == []
    after = (await engines())[0]
    assert (after.schema, after.low, after.high) == (before.schema, before.low, before.high)
    assert int(psycopg.conninfo.conninfo_to_dict(after.dsn)["port"]) == new_port
    placed = engine_schemas(app_id)
    assert (new_port, after.schema) in placed and (old_port, after.schema) not in placed, placed
    assert len(placed) == 4, placed
    mf = await MemFlow.init(app_id=after.schema, dsn=after.dsn, migrate=False)
    try:
        await mf.worker.create(task_queue="claims", workflow=approved_intake)
        handle = mf.workflow.get_handle(wid)
        assert (await handle.signal("approve", True))["status"] == "delivered"
        result = await asyncio.wait_for(handle.result(), 20)
    finally:
        await mf.close()
    assert result == {"case_id": wid, "covered": True, "approved": True}


async def test_prune_on_each_engine_removes_only_its_workflows(by_job_id: str) -> None:
    """`call <app>_s<n>.prune()` on an engine's node deletes the expired workflows of its
    shard group: not another group's, nor its own that are still running or kept."""
    from hotmesh._citus import shard_engines

    app_id = by_job_id
    async with await psycopg.AsyncConnection.connect(CITUS_URL) as conn:
        engines = (await shard_engines(conn, CITUS_URL, app_id))[:2]
    ids: dict[str, list[str]] = {}
    for n, engine in enumerate(engines):
        done = [in_group(engine.low, engine.high, f"done{n}{k}") for k in range(2)]
        kept = in_group(engine.low, engine.high, f"kept{n}")
        running = in_group(engine.low, engine.high, f"run{n}")
        for wid in [*done, kept, running]:
            expire = Jsonb({"expire": 3600 if wid == kept else 0})
            query(
                f"select {engine.schema}.start_workflow('w', '[]', 'q', %s, null, %s)",
                wid,
                expire,
                url=engine.dsn,
            )
        for wid in [*done, kept]:
            query(f"select {engine.schema}.cancel_workflow(%s)", wid, url=engine.dsn)
        ids[engine.schema] = [*done, kept, running]

    def left() -> dict[str, list[str]]:
        rows = {r for (r,) in query(f"select id from {app_id}.jobs")}  # noqa: S608
        return {schema: [i for i in wids if i in rows] for schema, wids in ids.items()}

    first, second = engines
    pruned = query(f"call {first.schema}.prune()", url=first.dsn)
    assert pruned == [(2,)]
    assert left() == {first.schema: ids[first.schema][2:], second.schema: ids[second.schema]}
    assert query(f"call {second.schema}.prune()", url=second.dsn) == [(2,)]
    assert left() == {first.schema: ids[first.schema][2:], second.schema: ids[second.schema][2:]}


@pytest.mark.timeout(900)
async def test_worker_kills_on_an_app_distributed_by_job_id(by_job_id: str, tmp_path: Path) -> None:
    """The fault test of docs/citus-row-distribution.md: LOAD_BY_JOB workflows of the fleet
    (tests/workers/fleet.py: an activity, the entity, a hook, a signal) on an app distributed
    by job_id, each started and signalled through the engine of its shard group, a worker
    process per engine on its node. Once a quarter are done, one worker of each node is killed
    (SIGKILL) mid-work and replaced. Every workflow completes once, with its steps, entity and
    side effects: nothing lost, nothing doubled."""
    from fleet_harness import Fleet, Observer, create_effects, expect_clean, outcome, wait_until
    from helpers import kill9
    from hotmesh._citus import shard_engines

    app_id = by_job_id
    async with await psycopg.AsyncConnection.connect(CITUS_URL) as conn:
        engines = await shard_engines(conn, CITUS_URL, app_id)
    observers = [Observer(e.dsn, e.schema) for e in engines]
    fleets = [Fleet(e.dsn, e.schema, tmp_path / e.schema) for e in engines]
    totals = []
    try:
        for engine, obs, fleet in zip(engines, observers, fleets, strict=True):
            # The harness reads the app's reference tables (signals) too.
            obs.rows(f"set search_path = {engine.schema}, {app_id}, public")
            # Workflow f-<i> goes to the engine whose hash range holds its id.
            (tmp_path / engine.schema).mkdir()
            create_effects(obs)
            started = obs.rows(
                "select start_workflow('fleet_main', jsonb_build_array(i), 'lq', 'f-' || i)"
                " from generate_series(1, %s) as i"
                " where worker_hash('f-' || i) between %s and %s",
                LOAD_BY_JOB,
                engine.low,
                engine.high,
            )
            totals.append(len(started))
            obs.rows(
                "select signal('go-' || i, to_jsonb(i), 'f-' || i)"
                " from generate_series(1, %s) as i"
                " where worker_hash('f-' || i) between %s and %s",
                LOAD_BY_JOB,
                engine.low,
                engine.high,
            )
            fleet.start(processes=1, concurrency=8)
        assert sum(totals) == LOAD_BY_JOB and min(totals) > 0, totals
        done = "select count(*) from jobs where status = 'completed'"
        killed = set()
        for engine, obs, fleet, total in zip(engines, observers, fleets, totals, strict=True):
            if engine.dsn in killed:
                continue
            killed.add(engine.dsn)
            wait_until(obs, done, total // 4, 300)
            kill9(fleet.workers.procs[0][0])
            fleet.start(processes=1, concurrency=8)
        assert len(killed) == 2
        for obs, total in zip(observers, totals, strict=True):
            wait_until(obs, done, total, 600)
        # Then the figures (signals, a reference table, are the whole app's).
        for engine, obs, total in zip(engines, observers, totals, strict=True):
            figures = outcome(obs, total)
            print(f"{engine.schema}: {figures}")
            expect_clean(figures)
    finally:
        for fleet in fleets:
            fleet.stop()
        for obs in observers:
            obs.close()
