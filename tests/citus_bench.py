"""Steps/s and signal -> result latency of an app distributed by job_id beside a local app, both
through the plain MemFlow API (docs/citus-row-distribution.md, "Figures"), on the cluster of
`make test-citus`:

    .venv/bin/python tests/citus_cluster.py run -- .venv/bin/python tests/citus_bench.py

Runs alternate (local, distributed, local, ...), each on a fresh app, client and worker in this
process. Local: an app in a plain database (no Citus) of the coordinator's server. Distributed:
an app of the coordinator distributed by job_id (4 shard groups on the 2 workers), routed by
the client, served by a claim loop per shard group. `steps/s`: `--workflows` workflows of
`--steps` activities each, started in one start_many, until the last result. `p50`: the median
of `--samples` signals, each sent once its workflow waits, until its result arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hotmesh import MemFlow, workflow
from hotmesh._install import migrate
from test_citus import sharded

LOCAL_DB = "hotmesh_bench_local"


def step(n: int) -> int:
    return n + 1


async def chain(steps: int) -> int:
    acts = workflow.proxy_activities(activities=[step])
    n = 0
    for _ in range(steps):
        n = await acts.step(n)
    return n


async def waits() -> object:
    return await workflow.wait_for("go")


async def measure(dsn: str, app: str, args: argparse.Namespace) -> tuple[float, float]:
    """(steps/s, signal -> result p50 in ms) of app `app`."""
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    try:
        await mf.worker.create(task_queue="bench", workflow=[chain, waits], concurrency=8)
        began = time.perf_counter()
        handles = await mf.workflow.start_many(
            {"workflow_name": "chain", "args": [args.steps], "task_queue": "bench"}
            for _ in range(args.workflows)
        )
        results = await asyncio.gather(*(h.result(timeout=600) for h in handles))
        rate = args.workflows * args.steps / (time.perf_counter() - began)
        assert results == [args.steps] * args.workflows
        latencies = []
        for _ in range(args.samples):
            handle = await mf.workflow.start(workflow_name="waits", task_queue="bench")
            while await handle.status() != "waiting":  # noqa: ASYNC110 (a poll, not timed)
                await asyncio.sleep(0.01)
            sent = time.perf_counter()
            await handle.signal("go", 1)
            await handle.result(timeout=60)
            latencies.append((time.perf_counter() - sent) * 1000)
        return rate, statistics.median(latencies)
    finally:
        await mf.close()


async def local_app(url: str) -> tuple[str, str]:
    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("select 1 from pg_database where datname = %s", (LOCAL_DB,)).fetchone():
            conn.execute(f"create database {LOCAL_DB}")
    dsn = psycopg.conninfo.make_conninfo(url, dbname=LOCAL_DB)
    app = f"bl_{uuid.uuid4().hex[:8]}"
    await migrate(dsn, app)
    return dsn, app


async def distributed_app(url: str) -> tuple[str, str]:
    app = f"bd_{uuid.uuid4().hex[:8]}"
    await migrate(sharded(url), app, distribute="job_id", shard_count=4)
    return url, app


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each app (3)")
    parser.add_argument("-n", "--workflows", type=int, default=200)
    parser.add_argument("-k", "--steps", type=int, default=5)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    url = os.environ["HOTMESH_CITUS_URL"]
    for run in range(1, args.runs + 1):
        for kind, make in (("local", local_app), ("distributed", distributed_app)):
            dsn, app = await make(url)
            try:
                rate, p50 = await measure(dsn, app, args)
            finally:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"drop schema {app} cascade")
            load = os.getloadavg()[0]
            print(f"run {run} {kind:11} {rate:6.0f} steps/s  p50 {p50:5.1f} ms  load {load:.1f}")


if __name__ == "__main__":
    asyncio.run(main())
