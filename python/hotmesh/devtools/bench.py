"""`hotmesh bench`: throughput, latency and cost against the Postgres ceiling.

Every scenario runs against the database you point it at, in its own app schema (dropped at
the end), with workers in separate processes, and reports medians over `--repeat` runs. The
ceiling is the minimal durable step this database allows (insert + skip-locked claim and
delete, each its own commit) driven by the same number of connections in the same run; every
throughput is also printed as a ratio of it. Times come from the database's own timestamps.

Like any user, it drives the engine only through the public SQL API: it starts, claims and
completes through the app's functions and reads the `workflows` view; it never writes or reads
the engine's tables (it only vacuums them, as autovacuum would).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from hotmesh import workflow
from hotmesh._listener import _done_ids
from hotmesh.client import MemFlow

# -- the workloads (imported by the worker processes) ----------------------------------------


async def noop(i: int) -> int:
    """A no-op activity: the benchmark measures the engine, not the work."""
    return i


async def pause(seconds: float) -> None:
    """An activity that takes `seconds`."""
    await asyncio.sleep(seconds)


ACTIVITIES = [noop]


async def ends_later(seconds: float) -> None:
    """Runs an inline activity of `seconds`, then ends: `held` holds its row meanwhile."""
    await workflow.proxy_activities(activities=[pause]).pause(seconds)


async def chain(steps: int) -> int:
    """A workflow of `steps` sequential inline activities."""
    acts = workflow.proxy_activities(activities=ACTIVITIES)
    total = 0
    for i in range(steps):
        total += await acts.noop(i)
    return total


async def chain_remote(steps: int) -> int:
    """The same, with the activities on another queue served by another process."""
    acts = workflow.proxy_activities(task_queue="bench-remote-activities")
    total = 0
    for i in range(steps):
        total += await acts.noop(i)
    return total


async def empty() -> None:
    """A workflow with no steps: one task to claim and complete."""


async def parked() -> Any:
    """Waits for signal "go" and returns its payload."""
    return await workflow.wait_for("go")


async def bump() -> None:
    """A hook: one increment of the shared entity."""
    entity = await workflow.entity()
    await entity.increment("count", 1)


async def fanout(hooks: int) -> Any:
    """Runs `hooks` hooks at once, each incrementing this workflow's entity."""
    entity = await workflow.entity()
    await entity.set({"count": 0})
    await workflow.exec_hook_batch(
        [{"key": str(i), "options": {"workflow_name": "bump"}} for i in range(hooks)]
    )
    return await entity.get("count")


# -- plumbing -----------------------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@contextlib.contextmanager
def _worker(dsn: str, app: str, queue: str, *specs: str, concurrency: int) -> Iterator[int]:
    """A worker process serving `specs` on `queue`; yields its pid."""
    env = {**os.environ, "DATABASE_URL": dsn}
    command = [*_WORKER_PREFIX, sys.executable, "-m", "hotmesh.cli", "worker", *specs]
    command += ["--queue", queue]
    command += ["--app", app, "--concurrency", str(concurrency)]
    command += [arg for spec in _INTERCEPTORS for arg in ("--interceptor", spec)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = (
            process.stdout.readline() if process.stdout else ""
        )  # "worker serving ..." once it is claiming
        if not line:
            raise RuntimeError(f"worker failed to start: {' '.join(command)}")
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# `hotmesh bench --interceptor MODULE:FACTORY`: what every worker process runs with.
_INTERCEPTORS: list[str] = []
# `hotmesh bench --count-instructions`: every worker process runs under valgrind's callgrind.
_WORKER_PREFIX: list[str] = []
_CALLGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]


def traced_noop(sampler: Any = None) -> Any:
    """`--interceptor hotmesh.devtools.bench:traced_noop`: tracing on (docs/tracing.md), every
    span made, ended and handed to an exporter that drops it (the OpenTelemetry SDK)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from hotmesh.otel import TracingInterceptor

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    return TracingInterceptor(provider)


def traced_sampled() -> Any:
    """`--interceptor hotmesh.devtools.bench:traced_sampled`: the same, with one trace in ten
    sampled (ParentBased(TraceIdRatioBased(0.1))): what the others cost unsampled."""
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    return traced_noop(ParentBased(TraceIdRatioBased(0.1)))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (Linux /proc), 0 when unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _instructions(pid: int | None, zero: bool = False) -> int | None:
    """The instructions a worker run under callgrind (--count-instructions) executed since
    they were last zeroed (all its threads); None without it."""
    if not _WORKER_PREFIX or pid is None:
        return None
    command = ["callgrind_control", "--zero" if zero else "-e", str(pid)]
    shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    # "   Th 1  10,583,791": one line per thread.
    return sum(int(line.split()[2].replace(",", "")) for line in shown.splitlines()
               if line.split()[:1] == ["Th"])  # fmt: skip


def _server_cpu_seconds(conn: psycopg.Connection[Any]) -> float | None:
    """User + system CPU of the database server: the postmaster's own, its children's as they
    run now and that of the children it has reaped (so a backend that ends between two
    readings still counts: the figure never goes down), or None when the server does not
    run on this machine."""
    row = conn.execute("select pg_backend_pid()").fetchone()
    try:
        stat = Path(f"/proc/{row[0] if row else 0}/stat").read_text()
    except OSError:
        return None
    postmaster = stat.rsplit(")", 1)[1].split()[1]
    total = 0
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # it ended meanwhile (and is in the postmaster's figures, read last)
        if fields[1] == postmaster:
            total += int(fields[11]) + int(fields[12])
    try:  # utime, stime, cutime, cstime
        fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (total + sum(int(f) for f in fields[11:15])) / os.sysconf("SC_CLK_TCK")


class Counters:
    """Commits and statements of this database between two readings."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.statements = (
            bool(
                conn.execute(
                    "select count(*) from pg_extension where extname = 'pg_stat_statements'"
                ).fetchone()
            )
            and self._try_reset()
        )
        self.commits0 = self._commits()

    def _try_reset(self) -> bool:
        try:
            self.conn.execute("select pg_stat_statements_reset()")
            return True
        except psycopg.Error:
            return False

    def _commits(self) -> int:
        self.conn.execute("select pg_stat_clear_snapshot()")
        row = self.conn.execute(
            "select xact_commit from pg_stat_database where datname = current_database()"
        ).fetchone()
        return int(row[0]) if row else 0

    def read(self, app: str, own_queries: int) -> tuple[float, float | None]:
        """(commits, statements) since creation; our own monitoring queries are excluded."""
        time.sleep(0.6)  # the statistics collector reports every 500 ms
        commits = self._commits() - self.commits0 - own_queries - 2
        statements = None
        if self.statements:
            row = self.conn.execute(
                "select coalesce(sum(calls), 0) from pg_stat_statements"
                " where query like %s and query not like 'listen%%'",
                (f'%"{app}".%',),
            ).fetchone()
            statements = float(row[0]) if row else None
        return float(commits), statements


def _wait_done(conn: psycopg.Connection[Any], app: str, total: int, timeout: float) -> int:
    """Poll until `total` workflows finished; returns how many polls it took. It reads the
    jobs table, not the `workflows` view, which reads every live workflow's waits, and every
    0.2 s: polled every 50 ms, the view took a tenth of the database's time from the drain it
    measured. The figures come from the database's timestamps, not from when this saw them."""
    query = sql.SQL(
        "select count(*) from {}.jobs where status in ('completed', 'failed', 'cancelled')"
    ).format(sql.Identifier(app))
    deadline = time.monotonic() + timeout
    polls = 0
    while True:
        polls += 1
        row = conn.execute(query).fetchone()
        done = int(row[0]) if row else 0
        if done >= total:
            return polls
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {total} workflows finished in {timeout:.0f}s")
        time.sleep(0.2)


def _timings(conn: psycopg.Connection[Any], app: str) -> dict[str, Any]:
    row: tuple[Any, ...] = conn.execute(
        sql.SQL(
            "select count(*) filter (where status <> 'completed'),"
            " extract(epoch from max(completed_at) - min(created_at)),"
            " extract(epoch from max(completed_at) - min(completed_at)),"
            " array_agg(extract(epoch from completed_at - created_at))"
            " from {}.workflows"
        ).format(sql.Identifier(app))
    ).fetchone() or (0, 0, 0, [])
    failed, span, completion_span, latencies = row
    return {
        "not_completed": int(failed),
        "span": float(span or 0),
        "completion_span": float(completion_span or 0),
        "latencies": [float(x) for x in latencies or []],
    }


def _reset_app(conn: psycopg.Connection[Any], dsn: str, app: str) -> None:
    """A fresh app: `drop schema ... cascade` removes one; MemFlow.init installs it."""
    conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(app)))
    asyncio.run(_install_app(dsn, app))


async def _install_app(dsn: str, app: str) -> None:
    mf = await MemFlow.init(app_id=app, dsn=dsn, pool_size=1)
    await mf.close()


# -- scenarios ----------------------------------------------------------------------------------


def ceiling(dsn: str, connections: int, seconds: float) -> dict[str, Any]:
    """The minimal durable step: insert a row (one commit), claim and delete it with SKIP
    LOCKED (another commit), by `connections` clients at once, with pgbench when present."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("drop table if exists hotmesh_bench_ceiling")
        conn.execute(
            "create table hotmesh_bench_ceiling (id bigint generated always as identity"
            " primary key, payload text not null)"
        )
    try:
        pgbench = _pgbench()
        if pgbench:
            steps_per_second = _ceiling_pgbench(pgbench, dsn, connections, seconds)
            tool = "pgbench"
        else:
            steps_per_second = asyncio.run(_ceiling_python(dsn, connections, seconds))
            tool = "psycopg"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("drop table if exists hotmesh_bench_ceiling")
    return {"steps_per_s": steps_per_second, "tool": tool}


_CEILING_SCRIPT = (
    "insert into hotmesh_bench_ceiling (payload) values ('step');\n"
    "with c as (select id from hotmesh_bench_ceiling order by id limit 1 for update skip locked)"
    " delete from hotmesh_bench_ceiling as t using c where t.id = c.id;\n"
)


def _pgbench() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        bindir = subprocess.run(
            ["pg_config", "--bindir"],  # noqa: S607 - found on PATH like psql
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if Path(bindir, "pgbench").exists():
            return str(Path(bindir, "pgbench"))
    return None


def _ceiling_pgbench(pgbench: str, dsn: str, connections: int, seconds: float) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write(_CEILING_SCRIPT)
    try:
        result = subprocess.run(
            [
                pgbench,
                "-n",
                "-f",
                script.name,
                "-c",
                str(connections),
                "-j",
                "2",
                "-T",
                str(max(1, round(seconds))),
                dsn,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(script.name)
    for line in result.stdout.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise RuntimeError(f"pgbench printed no tps: {result.stdout[-300:]}")


async def _ceiling_python(dsn: str, connections: int, seconds: float) -> float:
    deadline = time.monotonic() + seconds
    counts = [0] * connections

    async def client(index: int) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                await conn.execute(_CEILING_SCRIPT.splitlines()[0])
                await conn.execute(_CEILING_SCRIPT.splitlines()[1])
                counts[index] += 1

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(connections)))
    return sum(counts) / (time.monotonic() - started)


# Limits on queue `bench` that never bind (flow control: docs/flow-control.md): what the
# limited claim costs by itself.
_LOOSE_LIMITS = {"max_running": 1_000_000, "rate": 1_000_000_000, "per": timedelta(seconds=1)}


def _set_limits(conn: psycopg.Connection[Any], app: str, **limits: Any) -> None:
    conn.execute(
        sql.SQL(
            "select {}.set_queue_limits('bench', max_running => %(max_running)s::integer,"
            " rate => %(rate)s::integer, per => %(per)s::interval,"
            " key_max_running => %(key_max_running)s::integer)"
        ).format(sql.Identifier(app)),
        {"max_running": None, "rate": None, "per": None, "key_max_running": None, **limits},
    )


def workflows(
    dsn: str,
    app: str,
    *,
    count: int,
    steps: int,
    concurrency: int,
    remote: bool,
    limited: bool = False,
) -> dict[str, Any]:
    """`count` workflows of `steps` sequential activities, started at once, run by one worker
    process with `concurrency` (plus, when `remote`, an activity worker process); `limited`:
    on a queue with limits that never bind."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        _reset_app(conn, dsn, app)
        if limited:
            _set_limits(conn, app, **_LOOSE_LIMITS)
        name = "chain_remote" if remote else "chain"
        with contextlib.ExitStack() as stack:
            activity_pid = None
            if remote:
                activity_pid = stack.enter_context(
                    _worker(
                        dsn,
                        app,
                        "bench-remote-activities",
                        "--activities",
                        f"{__name__}:ACTIVITIES",
                        concurrency=concurrency,
                    )
                )
            pid = stack.enter_context(
                _worker(dsn, app, "bench", f"{__name__}:{name}", concurrency=concurrency)
            )
            counters = Counters(conn)
            cpu0 = _cpu_seconds(pid)
            activity_cpu0 = _cpu_seconds(activity_pid) if activity_pid else 0.0
            _instructions(pid, zero=True)
            _instructions(activity_pid, zero=True)
            server_cpu0 = _server_cpu_seconds(conn)
            conn.execute(
                sql.SQL(
                    "select {}.start_workflows(jsonb_agg(jsonb_build_object("
                    "'workflow_name', %s::text, 'args', jsonb_build_array(%s::integer),"
                    " 'task_queue', 'bench')))"
                    " from generate_series(1, %s)"
                ).format(sql.Identifier(app)),
                (name, steps, count),
            )
            # Under callgrind a worker runs some fifty times slower.
            slowdown = 50 if _WORKER_PREFIX else 1
            polls = _wait_done(conn, app, count, timeout=(60 + count * steps / 50) * slowdown)
            cpu = _cpu_seconds(pid) - cpu0
            activity_cpu = _cpu_seconds(activity_pid) - activity_cpu0 if activity_pid else None
            instructions = _instructions(pid)
            activity_instructions = _instructions(activity_pid)
            server_cpu = _server_cpu_seconds(conn)
            if server_cpu is not None and server_cpu0 is not None:
                server_cpu -= server_cpu0
        commits, statements = counters.read(app, own_queries=polls + 3)
        timing = _timings(conn, app)
    total_steps = count * steps
    latencies = timing["latencies"]
    return {
        "workflows_per_s": count / timing["span"],
        "steps_per_s": total_steps / timing["span"],
        "p50_s": _percentile(latencies, 0.50),
        "p95_s": _percentile(latencies, 0.95),
        "p99_s": _percentile(latencies, 0.99),
        "commits_per_step": commits / total_steps,
        "statements_per_step": None if statements is None else statements / total_steps,
        "worker_cpu_ms_per_step": cpu * 1000 / total_steps,
        # The second worker's, for `remote`.
        **(
            {}
            if activity_cpu is None
            else {"activity_cpu_ms_per_step": activity_cpu * 1000 / total_steps}
        ),
        "db_cpu_ms_per_step": None if server_cpu is None else server_cpu * 1000 / total_steps,
        **(
            {}
            if instructions is None
            else {"worker_instructions_per_step": round(instructions / total_steps)}
        ),
        **(
            {}
            if activity_instructions is None
            else {"activity_instructions_per_step": round(activity_instructions / total_steps)}
        ),
        "not_completed": timing["not_completed"],
    }


def starts(dsn: str, app: str, *, count: int, batch: int) -> dict[str, Any]:
    """`count` workflows started from one client through `mf.workflow.start_many`, `batch`
    at a time (each batch one call, one commit), and `batch` more started one call at a time
    (`mf.workflow.start`) for comparison; no worker runs. Client wall clock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        _reset_app(conn, dsn, app)
        counters = Counters(conn)
        many, single = asyncio.run(_start_workflows(dsn, app, count, batch))
        commits, statements = counters.read(app, own_queries=1)
        row = conn.execute(
            sql.SQL("select count(*) from {}.workflows").format(sql.Identifier(app))
        ).fetchone()
    started = int(row[0]) if row else 0
    return {
        "starts_per_s": count / many,
        "single_starts_per_s": batch / single,
        "batch_vs_single": (count / many) / (batch / single),
        "commits_per_start": commits / (count + batch),
        "statements_per_start": None if statements is None else statements / (count + batch),
        "not_started": count + batch - started,
    }


async def _start_workflows(dsn: str, app: str, count: int, batch: int) -> tuple[float, float]:
    mf = await MemFlow.init(app_id=app, dsn=dsn, pool_size=1, migrate=False)
    try:
        begun = time.perf_counter()
        for first in range(0, count, batch):
            await mf.workflow.start_many(
                {"workflow_name": "empty", "task_queue": "bench", "args": [i]}
                for i in range(first, min(count, first + batch))
            )
        many = time.perf_counter() - begun
        begun = time.perf_counter()
        for i in range(batch):
            await mf.workflow.start(workflow_name="empty", task_queue="bench", args=[i])
        single = time.perf_counter() - begun
    finally:
        await mf.close()
    return many, single


def queue(
    dsn: str, app: str, *, count: int, concurrency: int, keys: int = 0, key_max_running: int = 2
) -> dict[str, Any]:
    """Enqueue `count` workflows with no steps, then drain them with one worker process. With
    `keys`: each workflow carries one of `keys` concurrency keys (in turn) and the queue has a
    per-key `key_max_running`, so every claim goes through the limited claim (_admit, in key
    rotation); `keyed` runs this beside the unkeyed `queue` for the ratio."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        _reset_app(conn, dsn, app)
        if keys:
            _set_limits(conn, app, key_max_running=key_max_running)
        conn.execute(
            sql.SQL(
                "select count({}.start_workflow('empty', '[]', 'bench', null, null,"
                " case when %s > 0 then jsonb_build_object('concurrency_key', 'k' || i %% %s)"
                " else '{{}}' end)) from generate_series(1, %s) as i"
            ).format(sql.Identifier(app)),
            (keys, max(keys, 1), count),
        )
        counters = Counters(conn)
        with _worker(dsn, app, "bench", f"{__name__}:empty", concurrency=concurrency) as pid:
            cpu0 = _cpu_seconds(pid)
            server_cpu0 = _server_cpu_seconds(conn)
            polls = _wait_done(conn, app, count, timeout=60 + count / 20)
            cpu = _cpu_seconds(pid) - cpu0
            server_cpu = _server_cpu_seconds(conn)
            if server_cpu is not None and server_cpu0 is not None:
                server_cpu -= server_cpu0
        commits, statements = counters.read(app, own_queries=polls + 3)
        timing = _timings(conn, app)
    return {
        "tasks_per_s": (count - 1) / timing["completion_span"] if count > 1 else float("nan"),
        "commits_per_task": commits / count,
        "statements_per_task": None if statements is None else statements / count,
        "worker_cpu_ms_per_task": cpu * 1000 / count,
        "db_cpu_ms_per_task": None if server_cpu is None else server_cpu * 1000 / count,
        "not_completed": timing["not_completed"],
        **({"keys": keys, "key_max_running": key_max_running} if keys else {}),
    }


def rate(dsn: str, app: str, *, per_s: int, seconds: float, concurrency: int) -> dict[str, Any]:
    """A queue limited to `per_s` starts a second, drained by two worker processes of
    `concurrency` each: a backlog of a full bucket (the burst) plus `per_s` x `seconds` empty
    workflows. The rate the claims held is the starts after the burst over the time from the
    burst to the last start (database clock), also as a ratio of `per_s`."""
    count = per_s + round(per_s * seconds)
    with psycopg.connect(dsn, autocommit=True) as conn:
        _reset_app(conn, dsn, app)
        _set_limits(conn, app, rate=per_s, per=timedelta(seconds=1))
        conn.execute(
            sql.SQL(
                "select count({}.start_workflow('empty', '[]', 'bench'))"
                " from generate_series(1, %s)"
            ).format(sql.Identifier(app)),
            (count,),
        )
        with contextlib.ExitStack() as stack:
            for _ in range(2):
                stack.enter_context(
                    _worker(dsn, app, "bench", f"{__name__}:empty", concurrency=concurrency)
                )
            _wait_done(conn, app, count, timeout=60 + 2 * seconds)
        # A workflow with no steps completes in the activation its claim started.
        row = conn.execute(
            sql.SQL(
                "select extract(epoch from max(t) - min(t)), count(*)"
                "  from (select completed_at as t from {}.jobs where status = 'completed'"
                "         order by completed_at offset %s) as after_burst"
            ).format(sql.Identifier(app)),
            (per_s - 1,),
        ).fetchone()
        done = conn.execute(
            sql.SQL("select count(*) from {}.jobs where status = 'completed'").format(
                sql.Identifier(app)
            )
        ).fetchone()
    span, starts = (float(row[0] or 0), int(row[1])) if row else (0.0, 0)
    held = (starts - 1) / span if span > 0 else float("nan")
    return {
        "target_per_s": per_s,
        "held_per_s": held,
        "vs_target": held / per_s,
        "measured_s": span,
        "not_completed": count - (int(done[0]) if done else 0),
    }


def signal(dsn: str, app: str, *, samples: int, concurrency: int) -> dict[str, Any]:
    """A parked workflow on an idle worker, a signal from SQL, until the client has read the
    result, as handle.result() reads it (woken by the result's NOTIFY). On the database clock:
    from the signal's commit (the clock of the statement that follows it in the same pipeline,
    so no round trip is counted) to the client's read of the result. `commit_ms`: the
    signal's own commit, the yardstick of this database's commits in the same run.
    `engine_p50_ms`: from the signal's commit to the result's, as the database recorded them
    (pg_xact_commit_timestamp of the signal's transaction and of the workflow row's last
    change), when the server runs with track_commit_timestamp = on (the private cluster
    does); absent otherwise."""
    schema = sql.Identifier(app)
    latencies, commits, engine = [], [], []
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        psycopg.connect(dsn, autocommit=True) as listen,
    ):
        _reset_app(conn, dsn, app)
        listen.execute(sql.SQL("listen {}").format(schema))
        send = sql.SQL(
            "select clock_timestamp(), pg_current_xact_id()::text from {}.signal('go', 'true', %s)"
        ).format(schema)
        read = sql.SQL("select o.status, clock_timestamp() from {}.workflow_outcome(%s) as o")
        # Each commit's time as the database recorded it (when it wrote the commit record).
        committed_at = sql.SQL(
            "select extract(epoch from pg_xact_commit_timestamp(j.xmin)"
            "        - pg_xact_commit_timestamp((%s::bigint %% 4294967296)::text::xid))"
            "  from {}.jobs as j where j.id = %s"
        ).format(schema)
        row = conn.execute("select current_setting('track_commit_timestamp')").fetchone()
        stamped = bool(row and row[0] == "on")
        with _worker(dsn, app, "bench", f"{__name__}:parked", concurrency=concurrency):
            for i in range(samples):
                workflow_id = f"parked-{i}"
                conn.execute(
                    sql.SQL("select {}.start_workflow('parked', '[]', 'bench', %s)").format(schema),
                    (workflow_id,),
                )
                _wait_status(conn, app, workflow_id, "waiting")
                for _ in listen.notifies(timeout=0):
                    pass  # the other workflows' news
                with conn.pipeline():
                    with conn.transaction():
                        signalled = conn.execute(send, (workflow_id,))
                    committed = conn.execute("select clock_timestamp()")
                before, after = signalled.fetchone(), committed.fetchone()
                _wait_done_notify(listen, workflow_id)
                row = conn.execute(read.format(schema), (workflow_id,)).fetchone()
                if before and after and row and row[0] == "completed":
                    commits.append((after[0] - before[0]).total_seconds())
                    latencies.append((row[1] - after[0]).total_seconds())
                    if stamped:
                        span = conn.execute(committed_at, (before[1], workflow_id)).fetchone()
                        engine.append(float(span[0]) if span else float("nan"))
    p50, commit = _percentile(latencies, 0.50), _percentile(commits, 0.50)
    figures = {
        "samples": len(latencies),
        "p50_ms": p50 * 1000,
        "p95_ms": _percentile(latencies, 0.95) * 1000,
        "max_ms": max(latencies) * 1000 if latencies else float("nan"),
        "commit_ms": commit * 1000,
        # the path in commits of this database, loaded as it was in this run
        "p50_vs_commit": p50 / commit if commit > 0 else float("nan"),
    }
    if engine:
        figures["engine_p50_ms"] = _percentile(engine, 0.50) * 1000
        figures["engine_p95_ms"] = _percentile(engine, 0.95) * 1000
    return figures


def _wait_done_notify(listen: psycopg.Connection[Any], workflow_id: str) -> None:
    """Until a NOTIFY says the workflow ended ('d:' and the ids, as the client reads it)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for notify in listen.notifies(timeout=deadline - time.monotonic(), stop_after=1):
            kind, _, body = notify.payload.partition(":")
            if kind == "d" and workflow_id in _done_ids(body):
                return
    raise RuntimeError(f"no notification that workflow {workflow_id} ended in 30 s")


def _wait_status(conn: psycopg.Connection[Any], app: str, workflow_id: str, status: str) -> None:
    query = sql.SQL("select {}.workflow_status(%s)").format(sql.Identifier(app))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = conn.execute(query, (workflow_id,)).fetchone()
        if row and row[0] == status:
            return
        time.sleep(0.002)
    raise RuntimeError(f"workflow {workflow_id} did not become {status} in 30 s")


def held(
    dsn: str, app: str, *, rows: int, seconds: float, batch: int, concurrency: int
) -> dict[str, Any]:
    """What an application's open transaction costs everyone else (docs/reliability.md). An
    application that waits for its workflows: batches of `batch` one-step workflows on one
    worker process, each batch started once the one before completed, for `seconds` with
    nothing held, then for `seconds` while another transaction holds the rows of `rows`
    workflows that end meanwhile, 50 ms apart (an entity_merge on each, committed after).
    Rates and 95th-percentile latencies on the database's clock; `ratio`: held over unheld
    rate, the same worker in the same run. `waiters_max`: most backends seen waiting on the
    holder at once; `held_done_s`: from the COMMIT until the held workflows completed.
    `--held-rows 0`: the same phases with nothing held, what the second costs by itself."""
    schema = sql.Identifier(app)
    start = sql.SQL(
        "select {}.start_workflows(jsonb_agg(jsonb_build_object('workflow_name', 'chain',"
        " 'args', '[1]'::jsonb, 'task_queue', 'bench', 'workflow_id', %s || i)))"
        " from generate_series(1, %s) as i"
    ).format(schema)
    left = sql.SQL(
        "select count(*) from {}.jobs where id like %s || '%%' and status <> 'completed'"
    ).format(schema)
    measured = sql.SQL(
        "select count(*) / extract(epoch from max(completed_at) - min(created_at)),"
        " percentile_cont(0.95) within group (order by extract(epoch from completed_at"
        " - created_at)) from {}.workflows where id like %s || '%%'"
    ).format(schema)
    waiting = sql.SQL("select count(*) from pg_stat_activity where %s = any(pg_blocking_pids(pid))")
    most = 0

    def phase(name: str, holder_pid: int = 0) -> None:
        nonlocal most
        began = time.monotonic()
        n = 0
        while time.monotonic() - began < seconds:
            prefix = f"{name}-{n}-"
            conn.execute(start, (prefix, batch))
            while _one(conn, left, prefix):
                # Read in both phases (pid 0 waits for nobody), so both cost the same.
                most = max(most, _one(conn, waiting, holder_pid))
                time.sleep(0.01)
            n += 1

    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        psycopg.connect(dsn) as holder,  # not autocommit: the application's transaction
    ):
        _reset_app(conn, dsn, app)
        specs = (f"{__name__}:chain", f"{__name__}:ends_later")
        with _worker(dsn, app, "bench", *specs, concurrency=concurrency):
            phase("warm")
            phase("free")
            conn.execute(
                sql.SQL(
                    "select {0}.start_workflows(coalesce(jsonb_agg(jsonb_build_object("
                    "'workflow_name', 'ends_later', 'args', jsonb_build_array(0.2 + 0.05 * i),"
                    " 'task_queue', 'bench', 'workflow_id', 'held-' || i)), '[]'))"
                    " from generate_series(1, %s) as i"
                ).format(schema),
                (rows,),
            )
            running = sql.SQL(
                "select count(*) from {}.jobs where id like 'held-%%' and status = 'running'"
            ).format(schema)
            _until(lambda: _one(conn, running) == rows, "the held workflows to run")
            holder.execute(
                sql.SQL(
                    "select {}.entity_merge('held-' || i, '{{\"held\": true}}')"
                    " from generate_series(1, %s) as i"
                ).format(schema),
                (rows,),
            )
            # Their activities done (recorded: no slot of theirs runs code), they end now.
            paused = sql.SQL(
                "select count(*) from {}.steps where job_id like 'held-%%' and kind = 'activity'"
            ).format(schema)
            _until(lambda: _one(conn, paused) == rows, "the held workflows to end")
            phase("busy", holder.info.backend_pid)
            holder.commit()
            committed = time.monotonic()
            _until(lambda: _one(conn, left, "held-") == 0, "the held workflows")
            held_done = time.monotonic() - committed
        free, busy = _one_row(conn, measured, "free-"), _one_row(conn, measured, "busy-")
    return {
        "rows": rows,
        "unheld_per_s": float(free[0]),
        "held_per_s": float(busy[0]),
        "ratio": float(busy[0] / free[0]),
        "unheld_p95_ms": float(free[1]) * 1000,
        "held_p95_ms": float(busy[1]) * 1000,
        "waiters_max": most,
        "held_done_s": held_done,
    }


def _one_row(conn: psycopg.Connection[Any], query: sql.Composed, *params: Any) -> tuple[Any, ...]:
    row: tuple[Any, ...] | None = conn.execute(query, params).fetchone()
    if row is None:
        raise RuntimeError("no row")
    return row


def _one(conn: psycopg.Connection[Any], query: sql.Composed | sql.SQL, *params: Any) -> Any:
    row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _until(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not finish in {timeout:.0f} s")
        time.sleep(0.02)


def fan_out(dsn: str, app: str, *, hooks: int, concurrency: int) -> dict[str, Any]:
    """One workflow, `hooks` hooks incrementing its entity at once: time and lost updates."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        _reset_app(conn, dsn, app)
        specs = (f"{__name__}:fanout", f"{__name__}:bump")
        with _worker(dsn, app, "bench", *specs, concurrency=concurrency):
            conn.execute(
                sql.SQL("select {}.start_workflow('fanout', %s, 'bench', 'fanout')").format(
                    sql.Identifier(app)
                ),
                (json.dumps([hooks]),),
            )
            _wait_status(conn, app, "fanout", "completed")
        row = conn.execute(
            sql.SQL(
                "select (o.result #>> '{{}}')::numeric,"
                " extract(epoch from w.completed_at - w.created_at)"
                " from {schema}.workflow_outcome('fanout') as o, {schema}.workflows as w"
                " where w.id = 'fanout'"
            ).format(schema=sql.Identifier(app))
        ).fetchone()
    count, seconds = (row[0], row[1]) if row else (0, 0)
    return {"hooks": hooks, "seconds": float(seconds), "lost_updates": hooks - int(count)}


# Finishes the workflows waiting on queue bench-history, `limit` at a time, as a worker would:
# claim their activations and complete them in one statement (complete_tasks sees the claim's
# leases: each statement of a function sees what the ones before it changed).
_FINISH = (
    "select coalesce(jsonb_array_length({schema}.complete_tasks(coalesce(jsonb_agg("
    "jsonb_build_object('task_id', c.task_id, 'token', c.lease_token, 'result', null)),"
    " '[]'))), 0) from {schema}.claim_tasks(array['bench-history'], 'bench', %s) as c"
)


def _finished_workflows(conn: psycopg.Connection[Any], app: str, count: int) -> None:
    """`count` finished workflows, made through the public API: started, claimed and
    completed, in chunks so that no transaction holds millions of rows."""
    schema = sql.Identifier(app)
    start = sql.SQL(
        "select count({schema}.start_workflow('empty', '[]', 'bench-history'))"
        " from generate_series(1, %s)"
    ).format(schema=schema)
    finish = sql.SQL(_FINISH).format(schema=schema)
    chunk = 10_000
    for done in range(0, count, chunk):
        size = min(chunk, count - done)
        conn.execute(start, (size,))
        while size > 0:
            row = conn.execute(finish, (min(size, 1000),)).fetchone()
            finished = int(row[0]) if row else 0
            if finished == 0:
                raise RuntimeError("bench-history: claim_tasks returned nothing to finish")
            size -= finished


def _claim_ms(
    conn: psycopg.Connection[Any], app: str, batch: int, claims: int, queue: str = "bench"
) -> float:
    """The median time of `claims` claims of `batch` tasks from `queue` (each batch
    completed before the next claim), once the app's tables are vacuumed and analyzed."""
    schema = sql.Identifier(app)
    # Every table of the app, named by the catalog: finished workflows leave rows in more of
    # them than jobs (their threads, ...), and a stale estimate would misplan.
    tables = conn.execute("select tablename from pg_tables where schemaname = %s", (app,))
    for (table,) in tables.fetchall():
        conn.execute(sql.SQL("vacuum analyze {}.{}").format(schema, sql.Identifier(table)))
    claim = sql.SQL(
        "select task_id, lease_token from {}.claim_tasks(array[%s], 'bench', %s)"
    ).format(schema)
    complete = sql.SQL("select {}.complete_tasks(%s)").format(schema)
    durations = []
    for _ in range(claims):
        started = time.perf_counter()
        claimed = conn.execute(claim, (queue, batch)).fetchall()
        durations.append(time.perf_counter() - started)
        items = [{"task_id": t, "token": str(k), "result": None} for t, k in claimed]
        conn.execute(complete, (json.dumps(items),))
    return statistics.median(durations) * 1000


def history(
    dsn: str, app: str, *, finished: int, backlog: int = 10_000, claims: int = 20
) -> dict[str, Any]:
    """claim_tasks of 128 tasks from a `backlog` of tasks, in an app with no finished
    workflows and in one with `finished` of them (started and completed through the public
    functions, then vacuumed and analyzed as autovacuum would): a claim must cost the same
    however much history the app keeps."""
    batch = 128
    medians = {}
    for label, rows in (("empty", 0), ("history", finished)):
        with psycopg.connect(dsn, autocommit=True) as conn:
            _reset_app(conn, dsn, app)
            schema = sql.Identifier(app)
            if rows:
                _progress(f"history: finishing {rows} workflows")
            _finished_workflows(conn, app, rows)
            conn.execute(
                sql.SQL(
                    "select count({}.start_workflow('empty', '[]', 'bench'))"
                    " from generate_series(1, %s)"
                ).format(schema),
                (backlog,),
            )
            medians[label] = _claim_ms(conn, app, batch, claims)
    return {
        "finished_jobs": finished,
        "claim_ms": medians["empty"],
        "claim_ms_with_history": medians["history"],
        "history_vs_empty": medians["history"] / medians["empty"],
    }


def parked_many(dsn: str, app: str, *, count: int, idle: float, claims: int = 20) -> dict[str, Any]:
    """Workflows parked on a signal (each waiting in `wait_for`, started with
    start_workflows) on one worker: 10 first, then `count`. At each: the worker's resident
    memory once they all wait (its sticky cache keeps the last 256 for 10 s) and again after
    `idle` seconds, and the median claim_tasks of other work (128 of 2,560 tasks of another
    queue) beside them. Parked workflows must hold no worker memory and cost claims nothing."""
    schema = sql.Identifier(app)
    start = sql.SQL(
        "select cardinality({}.start_workflows((select jsonb_agg(jsonb_build_object("
        "'workflow_name', 'parked', 'task_queue', 'bench', 'workflow_id', 'parked-' || i))"
        " from generate_series(%s::integer, %s::integer) as i)))"
    ).format(schema)
    backlog = sql.SQL(
        "select count({}.start_workflow('empty', '[]', 'bench-other')) from generate_series(1, %s)"
    ).format(schema)
    waiting = sql.SQL("select count(*) from {}.workflows where status = 'waiting'").format(schema)
    result: dict[str, Any] = {"parked": count}
    with psycopg.connect(dsn, autocommit=True) as conn:
        _reset_app(conn, dsn, app)
        with _worker(dsn, app, "bench", f"{__name__}:parked", concurrency=8) as pid:
            done = 0
            for label, total in (("10", 10), ("n", count)):
                for first in range(done + 1, total + 1, 1000):
                    conn.execute(start, (first, min(first + 999, total)))
                done = total
                deadline = time.monotonic() + 60 + total / 100
                while (row := conn.execute(waiting).fetchone()) and int(row[0]) < total:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"only {row[0]} of {total} workflows parked")
                    time.sleep(0.05)
                result[f"rss_mb_{label}"] = _rss_mb(pid)
                time.sleep(idle)
                result[f"rss_mb_{label}_idle"] = _rss_mb(pid)
                conn.execute(backlog, (claims * 128,))
                result[f"claim_ms_{label}"] = _claim_ms(conn, app, 128, claims, "bench-other")
    result["rss_n_vs_10"] = result["rss_mb_n_idle"] / result["rss_mb_10_idle"]
    result["claim_n_vs_10"] = result["claim_ms_n"] / result["claim_ms_10"]
    return result


def _rss_mb(pid: int) -> float:
    """A process's resident memory (VmRSS, Linux /proc), in MB; nan when unavailable."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def keys(dsn: str, app: str, *, tasks: int, claims: int = 20) -> dict[str, Any]:
    """claim_tasks of 128 tasks from a backlog of `tasks`: on a queue without limits or keys
    (the plain claim), and on one limited to 2 running per key with 1,000 and with 10,000
    concurrency keys (the limited claim, in key rotation): its cost must not grow with keys."""
    batch = 128
    medians = {}
    for label, key_count in (("plain", 0), ("keys_1000", 1000), ("keys_10000", 10_000)):
        with psycopg.connect(dsn, autocommit=True) as conn:
            _reset_app(conn, dsn, app)
            schema = sql.Identifier(app)
            if key_count:
                _set_limits(conn, app, max_running=1_000_000, key_max_running=2)
            conn.execute(
                sql.SQL(
                    "select count({}.start_workflow('empty', '[]', 'bench', null, null,"
                    " case when %s > 0 then jsonb_build_object('concurrency_key', 'k' || i %% %s)"
                    " else '{{}}' end)) from generate_series(1, %s) as i"
                ).format(schema),
                (key_count, max(key_count, 1), tasks),
            )
            medians[label] = _claim_ms(conn, app, batch, claims)
    return {
        "claim_ms_plain": medians["plain"],
        "claim_ms_1000_keys": medians["keys_1000"],
        "claim_ms_10000_keys": medians["keys_10000"],
        "keys_10000_vs_1000": medians["keys_10000"] / medians["keys_1000"],
    }


# -- the command ----------------------------------------------------------------------------


SCENARIOS = (
    "ceiling",
    "steps",
    "starts",
    "limited",
    "rate",
    "long",
    "remote",
    "queue",
    "keyed",
    "keys",
    "signal",
    "parked",
    "fanout",
    "history",
    "held",
)


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key, value in runs[0].items():
        values = [run[key] for run in runs]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(values)
        else:
            merged[key] = value
    return merged


def run(args: argparse.Namespace) -> dict[str, Any]:
    dsn, app = args.dsn, args.app
    _INTERCEPTORS[:] = args.interceptor
    if args.count_instructions and shutil.which("callgrind_control") is None:
        raise ValueError("--count-instructions needs valgrind (callgrind_control) on the PATH")
    _WORKER_PREFIX[:] = _CALLGRIND if args.count_instructions else []
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenario(s): {', '.join(sorted(unknown))}; use {SCENARIOS}")
    # `steps`, `limited` and `remote`: the same workflows, run three ways.
    chains = functools.partial(
        workflows, dsn, app, count=args.workflows, steps=args.steps, concurrency=args.concurrency
    )
    plans: dict[str, Callable[[], dict[str, Any]]] = {
        "ceiling": lambda: ceiling(dsn, args.concurrency, args.seconds),
        "steps": lambda: chains(remote=False),
        "starts": lambda: starts(dsn, app, count=args.start_count, batch=args.start_batch),
        "limited": lambda: chains(remote=False, limited=True),
        "rate": lambda: rate(
            dsn, app, per_s=args.rate, seconds=args.rate_seconds, concurrency=args.concurrency
        ),
        "long": lambda: workflows(
            dsn,
            app,
            count=max(2 * args.concurrency, args.workflows * args.steps // args.long_steps),
            steps=args.long_steps,
            concurrency=args.concurrency,
            remote=False,
        ),
        "remote": lambda: chains(remote=True),
        "queue": lambda: queue(
            dsn, app, count=args.queue_tasks, concurrency=args.queue_concurrency or args.concurrency
        ),
        "keyed": lambda: queue(
            dsn,
            app,
            count=args.queue_tasks,
            concurrency=args.queue_concurrency or args.concurrency,
            keys=args.queue_keys,
            key_max_running=args.key_max_running,
        ),
        "signal": lambda: signal(dsn, app, samples=args.samples, concurrency=args.concurrency),
        "parked": lambda: parked_many(dsn, app, count=args.parked, idle=args.parked_idle),
        "fanout": lambda: fan_out(dsn, app, hooks=args.hooks, concurrency=args.concurrency),
        "history": lambda: history(
            dsn, app, finished=args.history_jobs, backlog=args.history_backlog
        ),
        "keys": lambda: keys(dsn, app, tasks=args.key_tasks),
        "held": lambda: held(
            dsn,
            app,
            rows=args.held_rows,
            seconds=args.held_seconds,
            batch=20,
            concurrency=args.held_concurrency,
        ),
    }
    report: dict[str, Any] = {
        "settings": {
            "workflows": args.workflows,
            "steps": args.steps,
            "long_steps": args.long_steps,
            "concurrency": args.concurrency,
            "queue_tasks": args.queue_tasks,
            "queue_concurrency": args.queue_concurrency or args.concurrency,
            "start_batch": args.start_batch,
            "repeat": args.repeat,
        },
        "database": _database_facts(dsn),
        "scenarios": {},
    }
    try:
        for name in wanted:
            runs = []
            for attempt in range(args.repeat):
                _progress(f"{name}: run {attempt + 1} of {args.repeat}")
                runs.append(plans[name]())
            report["scenarios"][name] = _median(runs)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(app)))
    scenarios = report["scenarios"]
    if "steps" in scenarios and "limited" in scenarios:  # the limited claim's cost, same run
        scenarios["limited"]["vs_unlimited"] = (
            scenarios["limited"]["steps_per_s"] / scenarios["steps"]["steps_per_s"]
        )
    if "queue" in scenarios and "keyed" in scenarios:  # the keyed drain's cost, same run
        scenarios["keyed"]["vs_unkeyed"] = (
            scenarios["keyed"]["tasks_per_s"] / scenarios["queue"]["tasks_per_s"]
        )
    ceiling_rate = report["scenarios"].get("ceiling", {}).get("steps_per_s")
    if ceiling_rate:
        for result in report["scenarios"].values():
            for key in ("steps_per_s", "tasks_per_s"):
                if key in result:
                    result[key.replace("_per_s", "_vs_ceiling")] = result[key] / ceiling_rate
    return report


def _database_facts(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        facts = {}
        for setting in (
            "server_version",
            "fsync",
            "synchronous_commit",
            "max_connections",
            "track_commit_timestamp",  # the signal's latency on the engine's clock needs it
        ):
            row = conn.execute(sql.SQL("show {}").format(sql.Identifier(setting))).fetchone()
            facts[setting] = str(row[0]) if row else "?"
    return facts


def render(report: dict[str, Any]) -> str:
    lines = [
        "hotmesh bench — "
        + ", ".join(f"{k}={v}" for k, v in report["settings"].items())
        + " | "
        + ", ".join(f"{k}={v}" for k, v in report["database"].items()),
        f"{'scenario':10} {'metric':24} {'median':>12}",
    ]
    for name, result in report["scenarios"].items():
        for key, value in result.items():
            if isinstance(value, float):
                shown = f"{value:12.3f}" if abs(value) < 100 else f"{value:12.0f}"
            else:
                shown = f"{value!s:>12}"
            lines.append(f"{name:10} {key:24} {shown}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", default="hotmesh_bench", help="scratch app schema (dropped)")
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("-n", "--workflows", type=int, default=500)
    parser.add_argument("-k", "--steps", type=int, default=5, help="steps per workflow (5)")
    parser.add_argument("--long-steps", type=int, default=1000, help="steps for `long` (1000)")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument(
        "--queue-tasks",
        type=int,
        default=10000,
        help="tasks `queue` enqueues, then drains (10000: long enough to measure the steady "
        "rate, not the worker's first claims on cold connections)",
    )
    parser.add_argument(
        "--queue-concurrency",
        type=int,
        default=None,
        help="worker concurrency for `queue` and `keyed` (default: --concurrency); the "
        "worker's default prefetch claims ahead of it (not on `keyed`'s limited queue)",
    )
    parser.add_argument(
        "--queue-keys",
        type=int,
        default=1000,
        help="concurrency keys of `keyed`, the `queue` drain with a per-key limit (1000)",
    )
    parser.add_argument(
        "--key-max-running",
        type=int,
        default=2,
        help="the per-key max_running of `keyed` (2)",
    )
    parser.add_argument(
        "--start-count", type=int, default=20_000, help="workflows `starts` starts (20000)"
    )
    parser.add_argument(
        "--start-batch", type=int, default=1000, help="starts per start_many call (1000)"
    )
    parser.add_argument("--samples", type=int, default=60, help="signal samples (60)")
    parser.add_argument(
        "--parked", type=int, default=10_000, help="workflows `parked` parks on a signal (10000)"
    )
    parser.add_argument(
        "--parked-idle",
        type=float,
        default=11.0,
        help="seconds `parked` waits before its second memory reading (11: the sticky cache's"
        " 10 s, and a second)",
    )
    # 100,000, not 1,000,000: they are made as a user would, started and finished through the
    # public functions (about 2,000 a second on a 2-core machine), not bulk-inserted into the
    # tables; 10 x the backlog is enough for a claim that grows with history to show.
    parser.add_argument(
        "--history-jobs",
        type=int,
        default=100_000,
        help="finished workflows `history` claims beside (100000; made through the public "
        "functions, about a minute per run)",
    )
    parser.add_argument(
        "--history-backlog",
        type=int,
        default=10_000,
        help="the backlog `history` claims from (10000)",
    )
    parser.add_argument("--hooks", type=int, default=100, help="hooks for `fanout` (100)")
    parser.add_argument(
        "--held-rows", type=int, default=16, help="rows an application holds in `held` (16)"
    )
    parser.add_argument(
        "--held-concurrency", type=int, default=32, help="the worker's slots in `held` (32)"
    )
    parser.add_argument("--held-seconds", type=float, default=5.0, help="each phase of `held` (5)")
    parser.add_argument(
        "--rate", type=int, default=50, help="the queue's rate limit in `rate`, per second (50)"
    )
    parser.add_argument(
        "--rate-seconds", type=float, default=60.0, help="how long `rate` runs at it (60)"
    )
    parser.add_argument(
        "--key-tasks", type=int, default=20_000, help="the backlog `keys` claims from (20000)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--interceptor",
        action="append",
        default=[],
        metavar="MODULE:FACTORY",
        help="run the worker processes with this interceptor (hotmesh.devtools.bench:traced_noop:"
        " OpenTelemetry with an exporter that drops the spans)",
    )
    parser.add_argument(
        "--count-instructions",
        action="store_true",
        help="run the worker processes under valgrind (callgrind) and report the instructions"
        " they execute per step of steps, limited and remote: a figure the machine's load does"
        " not change (the rates are then valgrind's, much lower)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="ceiling duration (5)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")


def main(args: argparse.Namespace) -> int:
    report = run(args)
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
