"""Workflows and activities traced with OpenTelemetry (tests/test_tracing.py): each process
that imports this keeps its finished spans in the SDK's in-memory exporter and writes them,
as JSON, to $HOTMESH_TRACE_DUMP.<pid>.json when it exits."""

from __future__ import annotations

import atexit
import json
import os
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hotmesh import workflow
from hotmesh.otel import TracingInterceptor

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))


def make() -> TracingInterceptor:
    """`hotmesh worker --interceptor workers.traced:make`."""
    return TracingInterceptor(provider)


def as_json(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": None if span.parent is None else f"{span.parent.span_id:016x}",
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [event.name for event in span.events],
        "start": span.start_time,
        "pid": os.getpid(),
    }


@atexit.register
def _dump() -> None:
    target = os.environ.get("HOTMESH_TRACE_DUMP")
    if target:
        with open(f"{target}.{os.getpid()}.json", "w") as out:
            json.dump([as_json(span) for span in exporter.get_finished_spans()], out)


def lookup(n: int) -> int:
    if n < 0:
        raise ValueError(f"no such number: {n}")
    return n * 2


async def child_flow(n: int) -> int:
    acts = workflow.proxy_activities(task_queue="traced-acts")
    return int(await acts.lookup(n)) + 1


async def hook_flow(n: int) -> int:
    return n + 100


async def parent_flow(n: int) -> list[Any]:
    acts = workflow.proxy_activities(task_queue="traced-acts")
    doubled = await acts.lookup(n)
    await workflow.sleep_for(0.05)
    child = await workflow.exec_child(workflow_name="child_flow", args=[doubled])
    hooked = await workflow.exec_hook(workflow_name="hook_flow", args=[child])
    go = await workflow.wait_for("go")
    return [doubled, child, hooked, go]
