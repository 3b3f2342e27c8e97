"""Per-shard engines for an app distributed by job_id on Citus (docs/citus-row-distribution.md).

Citus cannot run the claim (`FOR UPDATE SKIP LOCKED` over a queue) or the engine's updates by
lists of ids across shards. Every statement of the engine reads or writes the rows of the
workflows at hand, though, and all of a workflow's rows are in one group of colocated shards,
on one node. So for each shard group, `migrate` installs on its node a schema `<app>_s<n>`:
a view named like each table over that group's shard (`jobs` checks that a new row belongs
to the shard), a view over each reference table, and the engine's functions, unchanged. A
worker connected to that node serves app `<app>_s<n>`: its claims, steps, signals and NOTIFYs
are local to the node, as on a single server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from hotmesh.errors import HotMeshError

log = logging.getLogger("hotmesh.install")

# The shards of the tables colocated with <app>.jobs (hash-distributed by job_id), by group:
# the group's hash range, the node of its jobs shard, and each table's shard name.
_GROUPS = """
select s.shardminvalue::integer, s.shardmaxvalue::integer, c.relname::text,
       cs.shard_name::text, cs.nodename::text, cs.nodeport
  from pg_dist_partition as p
  join pg_class as c on c.oid = p.logicalrelid
  join pg_dist_shard as s on s.logicalrelid = p.logicalrelid
  join citus_shards as cs on cs.shardid = s.shardid
 where p.partmethod = 'h' and c.relnamespace = %(app)s::regnamespace
   and p.colocationid = (select colocationid from pg_dist_partition
                          where logicalrelid = to_regclass(format('%%I.jobs', %(app)s::text)))
 order by s.shardminvalue::integer, c.relname
"""

# The app's other tables (reference tables, start_keys) and the identity columns of all.
_TABLES = """
select c.relname::text,
       array(select a.attname::text from pg_attribute as a
              where a.attrelid = c.oid and a.attidentity <> '' order by a.attnum)
  from pg_class as c
 where c.relnamespace = %(app)s::regnamespace and c.relkind in ('r', 'p')
 order by 1
"""


# Each table of the app that is not a Citus table yet (jobs first), and whether it has a
# never-null job_id; how its jobs table is distributed (partition method, column, shards).
_UNDISTRIBUTED = """
select c.relname::text,
       exists (select 1 from pg_attribute as a
                where a.attrelid = c.oid and a.attname = 'job_id' and a.attnotnull)
  from pg_class as c
 where c.relnamespace = %(app)s::regnamespace and c.relkind in ('r', 'p')
   and not exists (select 1 from pg_dist_partition as p where p.logicalrelid = c.oid)
 order by c.relname <> 'jobs', 1
"""
_JOBS = """
select p.partmethod::text, column_to_column_name(p.logicalrelid, p.partkey),
       (select count(*) from pg_dist_shard as s where s.logicalrelid = p.logicalrelid)
  from pg_dist_partition as p
 where p.logicalrelid = to_regclass(format('%%I.jobs', %(app)s::text))
"""


async def distribute_by_job_id(
    conn: psycopg.AsyncConnection[Any], app_id: str, shard_count: int | None, requested: bool
) -> None:
    """Distributes the rows of app `app_id` by workflow id, in `conn`'s transaction (the
    migrate's, on the coordinator; docs/citus-row-distribution.md): jobs by id into
    `shard_count` shards (Citus's citus.shard_count when None), every table with a never-null
    job_id by it, colocated with jobs, the start's idempotency keys by the key, and the others
    as reference tables. Only tables not distributed yet are (those of a newer migration); an
    app whose jobs are distributed otherwise, or into another number of shards, is refused.
    Unless `requested`, only an app distributed by job_id already (its newer tables)."""
    cur = await conn.execute(_JOBS, {"app": app_id})
    row = await cur.fetchone()
    if not requested and (row is None or tuple(row[:2]) != ("h", "id")):
        return
    if row is not None:
        method, column, shards = row
        if (method, column) != ("h", "id"):
            raise HotMeshError(
                f"app {app_id}: its jobs table is already a Citus table, not distributed by "
                f"id (partition method {method!r}, column {column!r}): cannot distribute it by "
                "job_id (nothing was changed)"
            )
        if shard_count not in (None, shards):
            raise HotMeshError(
                f"app {app_id}: already distributed by job_id in {shards} shard groups, not "
                f"{shard_count}: change that with Citus's alter_distributed_table(..., "
                "shard_count := ...) (nothing was changed)"
            )
    # One transaction: Citus then creates the shards over one connection per node.
    await conn.execute("set local citus.multi_shard_modify_mode = 'sequential'")
    cur = await conn.execute(_UNDISTRIBUTED, {"app": app_id})
    for table, by_job in await cur.fetchall():
        name = f"{app_id}.{table}"
        if table == "jobs":
            await conn.execute(
                "select create_distributed_table(%s, 'id', shard_count := %s)",
                (name, shard_count),
            )
        elif table == "start_keys":
            # Keyed by the key alone (a unique key must hold the distribution column).
            await conn.execute(
                "select create_distributed_table(%s, 'idempotency_key', colocate_with := %s,"
                " shard_count := %s)",
                (name, "none", shard_count),
            )
        elif by_job:
            await conn.execute(
                "select create_distributed_table(%s, 'job_id', colocate_with := %s)",
                (name, f"{app_id}.jobs"),
            )
        else:
            await conn.execute("select create_reference_table(%s)", (name,))


@dataclass(frozen=True)
class ShardEngine:
    """The engine of one shard group: app `schema` on the node at `dsn`, for the workflows
    whose id hashes (Citus's worker_hash) into [low, high]."""

    schema: str
    dsn: str
    low: int
    high: int


async def shard_engines(
    conn: psycopg.AsyncConnection[Any], dsn: str, app_id: str
) -> list[ShardEngine]:
    """The per-shard engines of app `app_id`, read on `conn` to the coordinator at `dsn` (a
    node's DSN is `dsn` with the node's host and port); [] unless its jobs table is
    distributed by hash (not on Citus, or a distributed schema)."""
    cur = await conn.execute(
        "select exists (select 1 from pg_extension where extname = 'citus')", prepare=False
    )
    if not (await cur.fetchone() or (False,))[0]:
        return []
    cur = await conn.execute(_GROUPS, {"app": app_id}, prepare=False)
    engines: dict[int, ShardEngine] = {}
    for low, high, table, _shard, host, port in await cur.fetchall():
        if table == "jobs":
            node = psycopg.conninfo.make_conninfo(dsn, host=host, port=port)
            engines[low] = ShardEngine(f"{app_id}_s{len(engines)}", node, low, high)
    return list(engines.values())


# The app's views: an engine reads them through views of its own (70_views.sql's views read
# a row's xmax, which a view over a shard does not have).
_VIEWS = """
select relname::text from pg_class
 where relnamespace = %(app)s::regnamespace and relkind = 'v' order by 1
"""


async def drop_view_copies(conn: psycopg.AsyncConnection[Any], dsn: str, app_id: str) -> None:
    """Drops each engine's views over the app's views (`_install` makes them again), before
    `migrate`'s transaction on `conn` (to `dsn`): 70_views.sql drops and makes again some of
    the app's views, which Citus does on every node too, where the engines' views would
    depend on them."""
    async with conn.transaction():
        cur = await conn.execute(
            "select to_regnamespace(%s) is not null"
            " and to_regclass('pg_catalog.pg_dist_node') is not null",
            (app_id,),
        )
        if not (await cur.fetchone() or (False,))[0]:
            return
        cur = await conn.execute(_VIEWS, {"app": app_id}, prepare=False)
        views = [view for (view,) in await cur.fetchall()]
        # Every engine schema of the app: one left on a node its group has left too.
        schemas = await _engine_schemas(conn, dsn, app_id)
    for url, schema in schemas:
        async with await psycopg.AsyncConnection.connect(url) as node, node.transaction():
            await node.execute("set local citus.enable_ddl_propagation = off")
            for view in views:
                await node.execute(
                    sql.SQL("drop view if exists {}.{}").format(
                        sql.Identifier(schema), sql.Identifier(view)
                    )
                )


async def install_shard_engines(dsn: str, app_id: str, engine_files: list[Path]) -> None:
    """(Re)installs the per-shard engines of app `app_id` from `engine_files` (sql/, the
    privileges last; a no-op unless its tables are distributed by job_id), each in one
    transaction on its node; `migrate` calls it after
    its own transaction (whose DDL, propagated to the nodes, holds locks there until it
    commits), under the same advisory lock. Run again after shards move."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
        engines = await shard_engines(conn, dsn, app_id)
        if engines:
            await conn.execute(
                "select pg_advisory_xact_lock(hashtextextended(%s, 0))", ("hotmesh:" + app_id,)
            )
            await _install(conn, app_id, engines, engine_files)
            # A shard group moved (or split) leaves its engine on its old node: dropped.
            await _drop_engines(conn, dsn, app_id, {(e.schema, e.dsn) for e in engines})


async def drop_shard_engines(dsn: str, app_id: str) -> None:
    """Drops every per-shard engine of app `app_id` on the nodes of the Citus cluster whose
    coordinator is at `dsn`: before (or after) `drop schema <app> cascade` on the
    coordinator, which drops the app's tables and their shards but not the engines' schemas
    (the nodes' own)."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
        cur = await conn.execute("select to_regclass('pg_catalog.pg_dist_node') is not null")
        if (await cur.fetchone() or (False,))[0]:
            await _drop_engines(conn, dsn, app_id, set())


def _mark(app_id: str) -> str:
    return f"hotmesh: a shard engine of app {app_id}"


async def _engine_schemas(
    conn: psycopg.AsyncConnection[Any], dsn: str, app_id: str
) -> list[tuple[str, str]]:
    """The engine schemas of app `app_id` on every node of the cluster (read on `conn` to the
    coordinator at `dsn`), as (node DSN, schema)."""
    cur = await conn.execute(
        "select nodename::text, nodeport from pg_dist_node"
        " where isactive and noderole = 'primary' order by nodeid",
        prepare=False,
    )
    found = []
    for host, port in await cur.fetchall():
        url = psycopg.conninfo.make_conninfo(dsn, host=host, port=port)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as node:
            marked = await node.execute(
                "select nspname::text from pg_namespace"
                " where obj_description(oid, 'pg_namespace') = %s order by 1",
                (_mark(app_id),),
            )
            found += [(url, schema) for (schema,) in await marked.fetchall()]
    return found


async def _drop_engines(
    conn: psycopg.AsyncConnection[Any], dsn: str, app_id: str, keep: set[tuple[str, str]]
) -> None:
    """Drops, on every node of the cluster (read on `conn` to the coordinator at `dsn`), the
    engine schemas of app `app_id` but those in `keep` (schema, node DSN)."""
    for url, schema in await _engine_schemas(conn, dsn, app_id):
        if (schema, url) in keep:
            continue
        async with await psycopg.AsyncConnection.connect(url) as node, node.transaction():
            await node.execute("set local citus.enable_ddl_propagation = off")
            await node.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))
        log.info("app %s: dropped shard engine %s on %s", app_id, schema, url)


async def _install(
    conn: psycopg.AsyncConnection[Any],
    app_id: str,
    engines: list[ShardEngine],
    engine_files: list[Path],
) -> None:
    cur = await conn.execute(_GROUPS, {"app": app_id}, prepare=False)
    shards: dict[tuple[int, str], str] = {
        (low, table): shard for low, _high, table, shard, _h, _p in await cur.fetchall()
    }
    cur = await conn.execute(_TABLES, {"app": app_id}, prepare=False)
    tables: list[tuple[str, list[str]]] = await cur.fetchall()
    cur = await conn.execute(_VIEWS, {"app": app_id}, prepare=False)
    views = [view for (view,) in await cur.fetchall()]
    app = sql.Identifier(app_id)
    for engine in engines:
        schema = sql.Identifier(engine.schema)
        async with await psycopg.AsyncConnection.connect(engine.dsn) as node, node.transaction():
            # The schema is the node's own: not created on the other nodes.
            await node.execute("set local citus.enable_ddl_propagation = off")
            # sql/99_grants.sql: the app's roles, not roles of the engine's own.
            await node.execute("select set_config('hotmesh.app', %s, true)", (app_id,))
            await node.execute(sql.SQL("create schema if not exists {}").format(schema))
            # The mark by which a later migrate, or the app's drop, finds it on the nodes.
            await node.execute(
                sql.SQL("comment on schema {} is {}").format(schema, sql.Literal(_mark(app_id)))
            )
            await node.execute(
                sql.SQL("set local search_path = {}, {}, pg_temp").format(schema, app)
            )
            for table, identity in tables:
                shard = shards.get((engine.low, table))
                name = sql.Identifier(table)
                if shard is None:
                    # A reference table, or start_keys: the functions reach the Citus table
                    # itself by the search_path (Citus cannot write through a view over it).
                    # The read-only schema_migrations marks the schema as an installed app.
                    if table != "schema_migrations":
                        continue
                    body = sql.SQL("select * from {}.{}").format(app, name)
                elif table == "jobs":
                    # A job of another shard (a child, say) is refused, never stored here.
                    body = sql.SQL(
                        "select * from {}.{} where worker_hash(id) between {} and {}"
                        " with local check option"
                    ).format(app, sql.Identifier(shard.split(".")[-1]), engine.low, engine.high)
                else:
                    body = sql.SQL("select * from {}.{}").format(
                        app, sql.Identifier(shard.split(".")[-1])
                    )
                await node.execute(
                    sql.SQL("create or replace view {}.{} as ").format(schema, name) + body
                )
                # A shard has no identity column: the view draws from the table's sequence,
                # which on each node has a range of its own.
                for column in identity if shard is not None else []:
                    cur = await node.execute(
                        "select pg_get_serial_sequence(%s, %s)", (f"{app_id}.{table}", column)
                    )
                    sequence = (await cur.fetchone() or ("",))[0]
                    await node.execute(
                        sql.SQL("alter view {}.{} alter column {} set default nextval({})").format(
                            schema, name, sql.Identifier(column), sql.Literal(sequence)
                        )
                    )
            *engine_sql, privileges = engine_files
            for path in engine_sql:
                # The views of 70_views.sql read a row's xmax, which a view over a shard does
                # not have: the app's own views (Citus reads them from every shard) stand in.
                if path.name != "70_views.sql":
                    await node.execute(path.read_bytes())
            for view in views:
                cur = await node.execute(
                    "select to_regclass(format('%%I.%%I', %s::text, %s::text))",
                    (engine.schema, view),
                )
                if (await cur.fetchone() or (None,))[0] is None:
                    await node.execute(
                        sql.SQL("create view {}.{} as select * from {}.{}").format(
                            schema, sql.Identifier(view), app, sql.Identifier(view)
                        )
                    )
            await node.execute(privileges.read_bytes())
        log.info("app %s: shard engine %s on %s", app_id, engine.schema, engine.dsn)
