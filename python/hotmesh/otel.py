"""OpenTelemetry traces for hotmesh (`pip install hotmesh[otel]`; docs/tracing.md).

`TracingInterceptor` is an interceptor (`hotmesh.interceptors`): register it on the client
that starts workflows and on every worker, and one trace runs from the request that started a
workflow through each activation, activity attempt, signal delivery, child and hook, in
whichever process runs them, days later included. The trace context travels in the database:
a start records the W3C traceparent of its span (`jobs.traceparent`), the claim hands it to
the worker with each task; a remote activity's task carries the context of the activation
that scheduled it, a hook thread (`threads.traceparent`) and a child that of the step that
started it.

Spans (attributes `hotmesh.workflow_id`, `.workflow_name`, `.task_queue`, `.thread`, `.step`,
`.attempt`, `.activity`, `.signal_id`, `.run`):

    StartWorkflow:<name>   the client's start (its context is what the workflow continues)
    RunWorkflow:<name>     one activation of a workflow thread (a hook's: its function)
    RunActivity:<name>     one attempt of an activity, inline or claimed
    StartChild:<name>      the step that starts a child (the child's spans are inside it)
    StartHook:<name>       the step that starts a hook
    SignalWorkflow:<id>    a signal sent (by the client or by workflow code)
    HandleSignal:<id>      a signal delivered to a `wait_for`
    CancelWorkflow         the client's cancel

Replays create no duplicate spans: a step's span is made when the step is first performed,
never when history answers it. Errors are recorded on the span that raised them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from hotmesh import _runner
from hotmesh._commands import Command, SendSignal, StartChild, StartHook
from hotmesh.interceptors import CancelInput, Interceptor, SignalInput, StartInput

if TYPE_CHECKING:
    from hotmesh._runner import WorkflowContext
    from hotmesh.activity import ActivityInfo
    from hotmesh.rows import SignalOutcome

__all__ = ["TracingInterceptor"]

_EMPTY = Context()


@functools.lru_cache(maxsize=1024)
def _continued(traceparent: str | None) -> Context | None:
    """The context of a stored traceparent (None: the current one): what the W3C propagator
    extracts, read here directly (its extract is 45 k instructions, a fifth of a span). The
    database stores only `00-<32 hex>-<16 hex>-<2 hex>` with nonzero ids (_is_traceparent).
    Kept, as contexts are immutable: a workflow's activations all continue its start's, and
    a remote activity's attempts, the one activation's that scheduled them."""
    if not traceparent:
        return None
    parent = SpanContext(
        int(traceparent[3:35], 16),
        int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[53:55], 16)),
    )
    return trace.set_span_in_context(NonRecordingSpan(parent), _EMPTY)


def traceparent_of(span: Span) -> str | None:
    """The W3C traceparent of `span` (None for a span that records nothing): what the W3C
    propagator injects, formatted here directly (it is made for every activation)."""
    made = span.get_span_context()
    if not made.is_valid:
        return None
    return f"00-{made.trace_id:032x}-{made.span_id:016x}-{made.trace_flags:02x}"


class _Running:
    """An activation running in this process: its span, the context holding it, and its
    traceparent (which its activity calls carry)."""

    __slots__ = ("context", "span", "traceparent")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span)
        self.traceparent = traceparent_of(span)


def _failed(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class TracingInterceptor(Interceptor):
    """Spans for starts, activations, activity attempts, signals, children and hooks."""

    # Only these steps make spans. An activity's span is its run's (execute_activity); its
    # call carries the activation's traceparent without being wrapped (calls_traceparent).
    durable_kinds = frozenset({"child", "hook", "send", "signal"})
    # It only observes: a kept workflow's activations, resumed, make the same spans.
    sticky = True

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        from hotmesh import _install

        self.tracer = trace.get_tracer(
            "hotmesh", _install.package_version(), tracer_provider=tracer_provider
        )
        # The activation of each workflow thread running in this process: the parent of the
        # spans its steps make; by traceparent, that of its inline activities' spans (found
        # without parsing the traceparent their calls carry).
        self._activations: dict[tuple[str, str], _Running] = {}
        self._by_traceparent: dict[str, Context] = {}

    # -- workflow inbound -----------------------------------------------------------------
    async def execute_workflow(
        self, ctx: WorkflowContext, args: list[Any], next: Callable[[list[Any]], Awaitable[Any]]
    ) -> Any:
        span = self.tracer.start_span(
            f"RunWorkflow:{ctx.function or ctx.workflow_name}",
            context=_continued(ctx.traceparent),
            kind=SpanKind.CONSUMER,
            attributes={
                "hotmesh.workflow_id": ctx.workflow_id,
                "hotmesh.workflow_name": ctx.workflow_name,
                "hotmesh.function": ctx.function,
                "hotmesh.task_queue": ctx.task_queue,
                "hotmesh.thread": ctx.thread,
                "hotmesh.attempt": ctx.attempt,
                "hotmesh.run": ctx.run,
            },
        )
        key = (ctx.workflow_id, ctx.thread)
        running = self._activations[key] = _Running(span)
        activation = _runner.current.get(None)
        if running.traceparent:
            self._by_traceparent[running.traceparent] = running.context
            if activation is not None:
                # Its activity calls, inline or through a queue, continue this span.
                activation.calls_traceparent = running.traceparent
        # Spans are started and ended, never made current: workflow code runs on its own
        # loop and may be closed at suspension from outside its context.
        try:
            result = await next(args)
        except Exception as error:
            _failed(span, error)
            raise
        except GeneratorExit:
            span.set_attribute("hotmesh.outcome", "suspended")
            raise
        except BaseException as other:  # continue_as_new
            span.set_attribute("hotmesh.outcome", type(other).__name__)
            raise
        else:
            span.set_attribute("hotmesh.outcome", "completed")
            return result
        finally:
            if activation is not None:
                activation.calls_traceparent = None
            if self._activations.get(key) is running:
                del self._activations[key]
            if running.traceparent:
                self._by_traceparent.pop(running.traceparent, None)
            span.end()

    async def handle_signal(
        self,
        ctx: WorkflowContext,
        signal_id: str,
        payload: Any,
        next: Callable[[Any], Awaitable[Any]],
    ) -> Any:
        if ctx.replaying:
            return await next(payload)
        span = self._step_span(f"HandleSignal:{signal_id}", ctx, None)
        span.set_attribute("hotmesh.signal_id", signal_id)
        try:
            return await next(payload)
        except Exception as error:
            _failed(span, error)
            raise
        finally:
            span.end()

    # -- workflow outbound ----------------------------------------------------------------
    async def durable_call(
        self,
        ctx: WorkflowContext,
        seq: int,
        command: Command,
        next: Callable[[Command], Awaitable[Any]],
    ) -> Any:
        if ctx.replaying or not isinstance(command, StartChild | StartHook | SendSignal):
            return await next(command)
        if isinstance(command, StartChild):
            span = self._step_span(f"StartChild:{command.workflow_name}", ctx, seq)
            context = traceparent_of(span)
            if context is not None:
                # The child continues the trace inside this step's span.
                options = {**(command.options or {}), "traceparent": context}
                command = dataclasses.replace(command, options=options)
        elif isinstance(command, StartHook):
            span = self._step_span(f"StartHook:{command.workflow_name}", ctx, seq)
            context = traceparent_of(span)
            if context is not None:
                # The hook's activations continue the trace inside this step's span.
                options = {**(command.options or {}), "traceparent": context}
                command = dataclasses.replace(command, options=options)
        else:
            span = self._step_span(f"SignalWorkflow:{command.signal_id}", ctx, seq)
            span.set_attribute("hotmesh.signal_id", command.signal_id)
        # The span marks the step being made; a child's or hook's own spans show its run
        # (an awaited child settles its step only when it ends, maybe days later).
        outcome = next(command)
        span.end()
        return await outcome

    def _step_span(self, name: str, ctx: WorkflowContext, seq: int | None) -> Span:
        running = self._activations.get((ctx.workflow_id, ctx.thread))
        attributes: dict[str, Any] = {
            "hotmesh.workflow_id": ctx.workflow_id,
            "hotmesh.workflow_name": ctx.workflow_name,
            "hotmesh.task_queue": ctx.task_queue,
            "hotmesh.thread": ctx.thread,
        }
        if seq is not None:
            attributes["hotmesh.step"] = seq
        return self.tracer.start_span(
            name,
            context=_continued(ctx.traceparent) if running is None else running.context,
            kind=SpanKind.PRODUCER,
            attributes=attributes,
        )

    # -- activity inbound -----------------------------------------------------------------
    async def execute_activity(
        self, info: ActivityInfo, args: list[Any], next: Callable[[list[Any]], Awaitable[Any]]
    ) -> Any:
        # Current (so the activity's own instrumented calls nest inside it), under whatever
        # span is current, else the workflow's trace: an inline run's parent is the running
        # activation's. Attached by hand: start_as_current_span's two context managers add
        # a quarter to the cost of the span.
        parent = None
        if not trace.get_current_span().get_span_context().is_valid and info.traceparent:
            parent = self._by_traceparent.get(info.traceparent) or _continued(info.traceparent)
        span = self.tracer.start_span(
            f"RunActivity:{info.activity_name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "hotmesh.workflow_id": info.workflow_id,
                "hotmesh.activity": info.activity_name,
                "hotmesh.task_queue": info.task_queue,
                "hotmesh.step": info.step,
                "hotmesh.attempt": info.attempt,
                "hotmesh.inline": info.inline,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await next(args)
        except BaseException as error:
            _failed(span, error)
            raise
        finally:
            otel_context.detach(token)
            span.end()

    # -- client outbound ------------------------------------------------------------------
    async def start_workflow(
        self, input: StartInput, next: Callable[[StartInput], Awaitable[str]]
    ) -> str:
        with self.tracer.start_as_current_span(
            f"StartWorkflow:{input.workflow_name}",
            kind=SpanKind.PRODUCER,
            attributes={
                "hotmesh.workflow_name": input.workflow_name,
                "hotmesh.task_queue": input.task_queue or input.entity or "",
            },
        ) as span:
            context = traceparent_of(span)
            if context is not None and "traceparent" not in input.options:
                input = dataclasses.replace(
                    input, options={**input.options, "traceparent": context}
                )
            workflow_id = await next(input)
            span.set_attribute("hotmesh.workflow_id", workflow_id)
            return workflow_id

    async def signal_workflow(
        self, input: SignalInput, next: Callable[[SignalInput], Awaitable[SignalOutcome]]
    ) -> SignalOutcome:
        with self.tracer.start_as_current_span(
            f"SignalWorkflow:{input.signal_id}",
            kind=SpanKind.PRODUCER,
            attributes={
                "hotmesh.signal_id": input.signal_id,
                "hotmesh.workflow_id": input.workflow_id or "",
            },
        ):
            return await next(input)

    async def cancel_workflow(
        self, input: CancelInput, next: Callable[[CancelInput], Awaitable[list[str]]]
    ) -> list[str]:
        with self.tracer.start_as_current_span(
            "CancelWorkflow",
            kind=SpanKind.PRODUCER,
            attributes={"hotmesh.workflow_id": input.workflow_id},
        ):
            return await next(input)
