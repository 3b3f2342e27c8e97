"""OpenTelemetry traces (issue 17 item 2, docs/tracing.md): with the SDK's in-memory exporter,
one trace from the request that starts a workflow through its activations, activity
attempts, child, hook and signal, in one process and across three (the client and two
worker processes); replays make no duplicate spans; errors are recorded; the stored
traceparent is checked by the database."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from helpers import SQL, until
from hotmesh import InvalidArgument, MaxedError, MemFlow, otel, workflow
from hotmesh.otel import TracingInterceptor
from workers.traced import as_json, child_flow, hook_flow, lookup, parent_flow

pytestmark = pytest.mark.timeout(90)

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def spans() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
async def traced(
    app: str, dsn: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> AsyncIterator[MemFlow]:
    mf = await MemFlow.init(
        app_id=app, dsn=dsn, migrate=False, interceptors=[TracingInterceptor(spans[0])]
    )
    yield mf
    await mf.close(grace=2.0)


def tree(found: list[dict[str, Any]]) -> str:
    """The spans as an indented tree, each with the process that made it (docs/tracing.md)."""
    pids = {pid: f"process {n}" for n, pid in enumerate(sorted({s["pid"] for s in found}), 1)}
    children: dict[str | None, list[dict[str, Any]]] = collections.defaultdict(list)
    ids = {s["span_id"] for s in found}
    for span in sorted(found, key=lambda s: s["start"]):
        children[span["parent_id"] if span["parent_id"] in ids else None].append(span)
    lines: list[str] = []

    def show(span: dict[str, Any], depth: int) -> None:
        attrs = span["attributes"]
        detail = " ".join(
            f"{key.removeprefix('hotmesh.')}={attrs[key]}"
            for key in ("hotmesh.workflow_id", "hotmesh.thread", "hotmesh.step", "hotmesh.attempt")
            if key in attrs
        )
        error = " ERROR" if span["status"] == "ERROR" else ""
        lines.append(f"{'  ' * depth}{span['name']}  [{pids[span['pid']]}] {detail}{error}")
        for child in children[span["span_id"]]:
            show(child, depth + 1)

    for root in children[None]:
        show(root, 0)
    return "\n".join(lines)


def named(found: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(s["name"] for s in found)


def check_parents(found: list[dict[str, Any]]) -> None:
    """Each activity attempt is a child of the activation that scheduled it; a child's and a
    hook's activations are children of the step that started them."""
    by_id = {s["span_id"]: s for s in found}
    parents = {
        "RunActivity:lookup": ("RunWorkflow:parent_flow", "RunWorkflow:child_flow"),
        "RunWorkflow:child_flow": ("StartChild:child_flow",),
        "RunWorkflow:hook_flow": ("StartHook:hook_flow",),
    }
    for span in found:
        if span["name"] in parents:
            parent = by_id.get(span["parent_id"])
            assert parent is not None and parent["name"] in parents[span["name"]], tree(found)
            if span["name"] == "RunActivity:lookup":  # its own workflow's activation
                key = "hotmesh.workflow_id"
                assert parent["attributes"][key] == span["attributes"][key], tree(found)


async def test_one_trace_through_activations_activities_child_hook_and_signal(
    traced: MemFlow, spans: tuple[TracerProvider, InMemorySpanExporter], db: SQL
) -> None:
    provider, exporter = spans
    await traced.worker.register_activities(task_queue="traced-acts", activities=[lookup])
    await traced.worker.create(task_queue="traced", workflow=[parent_flow, child_flow, hook_flow])
    tracer = provider.get_tracer("the web app")
    with tracer.start_as_current_span("POST /orders") as request:
        handle = await traced.workflow.start(
            workflow_name="parent_flow", args=[5], task_queue="traced", workflow_id="tr-1"
        )
    trace_id = f"{request.get_span_context().trace_id:032x}"
    stored = db.one("select traceparent from jobs where id = 'tr-1'")
    assert stored.split("-")[1] == trace_id
    await until(lambda: db.one("select status from jobs where id = 'tr-1'") == "waiting"
                and db.one("select count(*) from steps where job_id = 'tr-1'") >= 6)  # fmt: skip
    await handle.signal("go", "yes")
    assert await handle.result(timeout=30) == [10, 21, 121, "yes"]

    found = [as_json(span) for span in exporter.get_finished_spans()]
    # The client's signal is a span of its caller's trace (here none: a trace of its own).
    (signal,) = [s for s in found if s["name"] == "SignalWorkflow:go"]
    assert signal["trace_id"] != trace_id
    found.remove(signal)
    assert {s["trace_id"] for s in found} == {trace_id}, tree(found)
    counts = named(found)
    # One span per step made, however often the parent replayed it.
    assert counts["StartWorkflow:parent_flow"] == 1
    assert counts["StartChild:child_flow"] == 1
    assert counts["StartHook:hook_flow"] == 1
    assert counts["HandleSignal:go"] == 1
    assert counts["RunActivity:lookup"] == 2  # one in the parent, one in the child
    assert counts["RunWorkflow:parent_flow"] >= 3  # activations: sleep, child, hook, signal
    assert counts["RunWorkflow:child_flow"] >= 1 and counts["RunWorkflow:hook_flow"] >= 1
    by_id = {s["span_id"]: s for s in found}
    start_child = next(s for s in found if s["name"] == "StartChild:child_flow")
    assert start_child["attributes"]["hotmesh.step"] == 3
    assert by_id[start_child["parent_id"]]["name"] == "RunWorkflow:parent_flow"
    # The child's activations continue the trace inside the step that started it.
    for span in found:
        if span["name"] == "RunWorkflow:child_flow":
            assert span["parent_id"] == start_child["span_id"]
        if span["name"] == "RunWorkflow:hook_flow":
            assert span["attributes"]["hotmesh.thread"] == "h1"
    activation = next(s for s in found if s["name"] == "RunWorkflow:parent_flow")
    assert activation["attributes"]["hotmesh.workflow_id"] == "tr-1"
    assert activation["attributes"]["hotmesh.task_queue"] == "traced"
    check_parents(found)
    child_id = db.one("select id from jobs where parent_id = 'tr-1'")
    child_context = db.one("select traceparent from jobs where id = %s", child_id)
    assert child_context.startswith(f"00-{trace_id}-{start_child['span_id']}-")


async def failing(n: int) -> int:
    acts = workflow.proxy_activities(
        task_queue="traced-acts", retry_policy={"maximum_attempts": 2, "initial_interval": 0.05}
    )
    return int(await acts.lookup(n))


async def test_errors_are_recorded_on_their_spans(
    traced: MemFlow, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    _, exporter = spans
    await traced.worker.register_activities(task_queue="traced-acts", activities=[lookup])
    await traced.worker.create(task_queue="traced", workflow=failing)
    handle = await traced.workflow.start(
        workflow_name="failing",
        args=[-1],
        task_queue="traced",
        retry_policy={"maximum_attempts": 1},
    )
    with pytest.raises(Exception, match="no such number"):
        await handle.result(timeout=30)
    found = [as_json(span) for span in exporter.get_finished_spans()]
    attempts = [s for s in found if s["name"] == "RunActivity:lookup"]
    assert sorted(s["attributes"]["hotmesh.attempt"] for s in attempts) == [1, 2]
    (step,) = {s["attributes"]["hotmesh.step"] for s in attempts}  # both attempts of one step
    assert isinstance(step, int) and step >= 1
    assert all(s["status"] == "ERROR" and s["events"] == ["exception"] for s in attempts)
    last = [s for s in found if s["name"] == "RunWorkflow:failing"][-1]
    assert last["status"] == "ERROR"
    assert last["events"] == ["exception"]


async def test_an_activity_span_is_current_while_it_runs(
    traced: MemFlow, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """The spans an activity makes (async, or sync in a thread) nest inside its attempt's
    span, which is inside the activation's; a failed inline attempt is recorded on its own."""
    provider, exporter = spans
    tracer = provider.get_tracer("the app")

    async def query(n: int) -> int:
        with tracer.start_as_current_span("SELECT"):
            if n < 0:
                raise ValueError("negative")
            return n

    def compute(n: int) -> int:
        with tracer.start_as_current_span("compute"):
            return n + 1

    async def nested(n: int) -> int:
        acts = workflow.proxy_activities(
            activities=[query, compute], retry_policy={"maximum_attempts": 1}
        )
        with contextlib.suppress(MaxedError):  # its one attempt failed
            await acts.query(-n)
        return int(await acts.compute(await acts.query(n)))

    await traced.worker.create(task_queue="nest", workflow=nested)
    handle = await traced.workflow.start(workflow_name="nested", args=[4], task_queue="nest")
    assert await handle.result(timeout=30) == 5
    found = [as_json(span) for span in exporter.get_finished_spans()]
    by_id = {s["span_id"]: s for s in found}
    parent = {s["name"] + str(s["status"]): by_id[s["parent_id"]]["name"] for s in found
              if s["parent_id"] in by_id}  # fmt: skip
    assert parent == {
        "SELECTERROR": "RunActivity:query",
        "SELECTUNSET": "RunActivity:query",
        "computeUNSET": "RunActivity:compute",
        "RunActivity:queryERROR": "RunWorkflow:nested",
        "RunActivity:queryUNSET": "RunWorkflow:nested",
        "RunActivity:computeUNSET": "RunWorkflow:nested",
        "RunWorkflow:nestedUNSET": "StartWorkflow:nested",
    }, tree(found)
    (failed,) = [s for s in found if s["name"] == "RunActivity:query" and s["status"] == "ERROR"]
    assert failed["events"] == ["exception"]
    assert failed["attributes"]["hotmesh.inline"] is True
    assert isinstance(failed["attributes"]["hotmesh.step"], int)


async def test_a_bad_traceparent_is_refused(mf: MemFlow, db: SQL) -> None:
    with pytest.raises(InvalidArgument, match="traceparent must be a W3C trace context"):
        await mf._db.start_workflow("x", [], "q", "bad-tp", None, {"traceparent": "00-abc"})
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="traceparent must be"):
        db.one(
            "select start_workflow('x', '[]', 'q', 'bad-tp2', null, "
            """'{"traceparent": "00-00000000000000000000000000000000-0000000000000001-01"}')"""
        )
    assert db.one("select count(*) from jobs") == 0


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        "00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-ff",
        "00-00000000000000000000000000000001-0000000000000001-03",
    ],
)
def test_a_stored_traceparent_reads_as_the_w3c_propagator_reads_it(traceparent: str) -> None:
    """otel._continued reads what the database stores (_is_traceparent) without the
    propagator (which costs a fifth of a span): the same parent, in a context of its own."""
    ours = otel._continued(traceparent)
    theirs = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    assert ours is not None and ours.keys() == theirs.keys()
    made = trace.get_current_span(ours).get_span_context()
    assert made == trace.get_current_span(theirs).get_span_context() and made.is_valid


async def test_one_trace_across_three_processes(
    app: str, dsn: str, spans: tuple[TracerProvider, InMemorySpanExporter], tmp_path: Path
) -> None:
    """The client (this process), a worker of the workflows and a worker of the activities:
    each exports its spans with the SDK's in-memory exporter; the trace is one."""
    provider, exporter = spans
    dump = tmp_path / "spans"
    env = {**os.environ, "HOTMESH_TRACE_DUMP": str(dump)}
    common = ["-m", "hotmesh.cli", "worker", "--app", app, "--dsn", dsn,
              "--interceptor", "workers.traced:make"]  # fmt: skip
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, *common, "--queue", "traced", "workers.traced:parent_flow",
            "workers.traced:child_flow", "workers.traced:hook_flow", cwd=TESTS, env=env,
        ),
        await asyncio.create_subprocess_exec(
            sys.executable, *common, "--queue", "traced-acts",
            "--activities", "workers.traced:lookup", cwd=TESTS, env=env,
        ),
    ]  # fmt: skip
    try:
        mf = await MemFlow.init(
            app_id=app, dsn=dsn, migrate=False, interceptors=[TracingInterceptor(provider)]
        )
        try:
            with provider.get_tracer("the web app").start_as_current_span("POST /orders"):
                handle = await mf.workflow.start(
                    workflow_name="parent_flow", args=[5], task_queue="traced", workflow_id="tp"
                )

            async def waiting() -> bool:
                return (await handle.describe())["waiting_on"] == "signal go"

            await until(waiting, "the workflow to wait for go", limit=60)
            await handle.signal("go", "yes")
            assert await handle.result(timeout=60) == [10, 21, 121, "yes"]
        finally:
            await mf.close()
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            await worker.wait()
    found = [as_json(span) for span in exporter.get_finished_spans()]
    for path in tmp_path.glob("spans.*.json"):  # noqa: ASYNC240 - the workers are gone
        found += json.loads(path.read_text())
    assert len({s["pid"] for s in found}) == 3, tree(found)
    found = [s for s in found if s["name"] != "SignalWorkflow:go"]  # the signal's own trace
    assert len({s["trace_id"] for s in found}) == 1, tree(found)
    counts = named(found)
    assert counts["StartChild:child_flow"] == 1
    assert counts["RunActivity:lookup"] == 2
    assert counts["HandleSignal:go"] == 1
    pid_of = {s["name"]: s["pid"] for s in found}
    assert pid_of["RunActivity:lookup"] != pid_of["RunWorkflow:parent_flow"] != os.getpid()
    check_parents(found)  # across the processes too
    if os.environ.get("HOTMESH_SHOW_TRACE"):
        print(tree(found))
