"""Prometheus metrics (issue 17 item 3, docs/metrics.md): what a worker process counts
(claims, completions, failures, retries, durations, in flight), served on /metrics; the
database's own series (`<app>.metrics`, `hotmesh metrics`); a port in use is a clear error."""

from __future__ import annotations

import asyncio
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from psycopg.conninfo import make_conninfo

from helpers import SQL, until
from hotmesh import MemFlow, workflow
from hotmesh.errors import HotMeshError
from hotmesh.metrics import WorkerMetrics, render, serve
from hotmesh.rows import MetricSample

pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).resolve().parent


def double(n: int) -> int:
    return n * 2


def picky(n: int) -> int:
    raise ValueError(f"not {n}")


async def counted(n: int) -> int:
    inline = workflow.proxy_activities(activities=[double])
    queued = workflow.proxy_activities(activities=[double], start_to_close=30)
    return int(await inline.double(n)) + int(await queued.double(n))


async def refused(n: int) -> int:
    acts = workflow.proxy_activities(
        activities=[picky],
        start_to_close=30,
        retry_policy={"maximum_attempts": 2, "initial_interval": 0.05},
    )
    return int(await acts.picky(n))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def measured(app: str, dsn: str) -> AsyncIterator[tuple[MemFlow, WorkerMetrics]]:
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    metrics = WorkerMetrics(CollectorRegistry())
    mf.registry.metrics = metrics
    yield mf, metrics
    await mf.close(grace=2.0)


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_worker_counts_what_it_does(measured: tuple[MemFlow, WorkerMetrics]) -> None:
    mf, metrics = measured
    await mf.worker.create(task_queue="mq", workflow=[counted, refused])
    handle = await mf.workflow.start(workflow_name="counted", args=[4], task_queue="mq")
    assert await handle.result(timeout=20) == 16
    # The result is committed before the worker counts it; it leaves its slot after counting.
    await until(lambda: value(metrics, "hotmesh_tasks_in_flight", queue="mq") == 0, "in flight 0")
    # Claimed: the first activation, the queued activity, the activation it woke.
    assert value(metrics, "hotmesh_tasks_claimed_total", queue="mq", kind="workflow") == 2
    assert value(metrics, "hotmesh_tasks_claimed_total", queue="mq", kind="activity") == 1
    assert value(metrics, "hotmesh_tasks_completed_total", queue="mq", kind="activity") == 1
    assert value(metrics, "hotmesh_tasks_completed_total", queue="mq", kind="workflow") == 2
    count = "hotmesh_activity_duration_seconds_count"
    assert value(metrics, count, queue="mq", activity="double") == 2  # inline and queued
    assert value(metrics, "hotmesh_activation_duration_seconds_count", queue="mq",
                 workflow="counted") == 2  # fmt: skip

    failing = await mf.workflow.start(
        workflow_name="refused", args=[1], task_queue="mq", retry_policy={"maximum_attempts": 1}
    )
    with pytest.raises(Exception, match="not 1"):
        await failing.result(timeout=20)
    await until(lambda: value(metrics, "hotmesh_tasks_in_flight", queue="mq") == 0, "in flight 0")
    assert value(metrics, "hotmesh_tasks_retried_total", queue="mq", kind="activity") == 1
    assert value(metrics, "hotmesh_tasks_failed_total", queue="mq", kind="activity") == 1
    assert value(metrics, "hotmesh_tasks_failed_total", queue="mq", kind="workflow") == 1


async def test_schedule_to_start_on_the_engine_clock(app: str, dsn: str) -> None:
    """A task due an hour before a worker claims it (its clock, the engine's, is an hour on)
    is observed as an hour's wait; the tasks it then makes wait next to nothing."""
    starter = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    try:
        handle = await starter.workflow.start(workflow_name="counted", args=[1], task_queue="sq")
    finally:
        await starter.close()
    later = datetime.now(UTC) + timedelta(hours=1)
    clocked = make_conninfo(dsn, options=f"-c hotmesh.fake_now={later.isoformat()}")
    mf = await MemFlow.init(app_id=app, dsn=clocked, migrate=False)
    metrics = WorkerMetrics(CollectorRegistry())
    mf.registry.metrics = metrics
    try:
        await mf.worker.create(task_queue="sq", workflow=counted)
        assert await mf.workflow.get_handle(handle.workflow_id).result(timeout=20) == 4
    finally:
        await mf.close(grace=2.0)
    name = "hotmesh_schedule_to_start_seconds"
    # The first activation waited the hour, the second (woken by the activity) did not.
    assert value(metrics, f"{name}_count", queue="sq", kind="workflow") == 2
    assert value(metrics, f"{name}_sum", queue="sq", kind="workflow") >= 3600
    assert value(metrics, f"{name}_bucket", queue="sq", kind="workflow", le="900.0") == 1
    assert value(metrics, f"{name}_count", queue="sq", kind="activity") == 1


def test_served_on_metrics_and_a_port_in_use_is_a_clear_error() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    metrics.claimed.labels("q", "workflow").inc(3)
    port = free_port()
    server = serve(metrics, port, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        assert 'hotmesh_tasks_claimed_total{kind="workflow",queue="q"} 3.0' in text
        assert "# TYPE hotmesh_activation_duration_seconds histogram" in text
        with pytest.raises(HotMeshError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            serve(WorkerMetrics(CollectorRegistry()), port, "127.0.0.1")
    finally:
        server.shutdown()


async def test_the_database_metrics_view_and_command(mf: MemFlow, db: SQL, app: str) -> None:
    for n in range(2):
        await mf.workflow.start(workflow_name="nobody", task_queue="unserved", args=[n])
    samples = {(s.metric, tuple(sorted(s.labels.items()))): s.value for s in await mf.metrics()}
    assert samples[("hotmesh_tasks_ready", (("kind", "workflow"), ("queue", "unserved")))] == 2
    assert samples[("hotmesh_workflows", (("queue", "unserved"), ("status", "pending")))] == 2
    oldest = ("hotmesh_oldest_ready_task_seconds", (("kind", "workflow"), ("queue", "unserved")))
    assert samples[oldest] >= 0
    assert db.one("select count(*) from metrics where metric = 'hotmesh_tasks_running'") == 1

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hotmesh.cli", "metrics", "--app", app,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0
    assert "# TYPE hotmesh_tasks_ready gauge" in text
    assert 'hotmesh_tasks_ready{kind="workflow",queue="unserved"} 2.0' in text
    assert 'hotmesh_workflows{queue="unserved",status="pending"} 2.0' in text

    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hotmesh.cli", "metrics", "--app", app, "--port", str(port),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert b"/metrics" in await server.stdout.readline()

        def scrape() -> str:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as reply:
                return str(reply.read().decode())

        assert 'queue="unserved"' in await asyncio.to_thread(scrape)
    finally:
        server.terminate()
        await server.wait()


def test_render_escapes_labels() -> None:
    text = render([MetricSample("hotmesh_tasks_ready", {"queue": 'a"b\\c'}, 1)])
    assert 'hotmesh_tasks_ready{queue="a\\"b\\\\c"} 1.0' in text
    assert "# HELP hotmesh_workflows" in text  # every series is described, even when empty


async def test_worker_command_metrics_port_in_use(app: str, dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - where the worker listens
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hotmesh.cli", "worker", "--app", app, "--dsn", dsn,
            "--queue", "pq", "--metrics-port", str(port), "--activities", "test_metrics:double",
            cwd=TESTS, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
    assert proc.returncode != 0
    assert f"cannot serve metrics on 0.0.0.0:{port}".encode() in err


async def test_worker_command_serves_metrics(app: str, dsn: str) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hotmesh.cli", "worker", "--app", app, "--dsn", dsn,
        "--queue", "sq", "--metrics-port", str(port), "test_metrics:counted",
        cwd=TESTS, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        await proc.stdout.readline()  # serving
        mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
        try:
            handle = await mf.workflow.start(workflow_name="counted", args=[1], task_queue="sq")
            assert await handle.result(timeout=30) == 4
        finally:
            await mf.close()

        def scrape() -> str:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as reply:
                return str(reply.read().decode())

        async def counted_claims() -> bool:
            text = await asyncio.to_thread(scrape)
            return 'hotmesh_tasks_claimed_total{kind="workflow",queue="sq"} 2.0' in text

        await until(counted_claims, "the worker's claims on /metrics")
    finally:
        proc.terminate()
        await proc.wait()
