"""Interceptors: your code around what the engine does (docs/interceptors.md).

An `Interceptor` overrides any of these methods; each gets what is about to happen and `next`,
the rest of the chain, and returns what `next` returns (or something else, or raises):

- workflow inbound, in workflow code: `execute_workflow` around each activation of a workflow
  thread (its function run from the top, replaying what is recorded), `handle_signal` around
  the delivery of a signal that `workflow.wait_for` awaits (it may change the payload);
- workflow outbound, in workflow code: `durable_call` around each durable call (activity,
  sleep, signal wait or send, hook, child, cancel, entity and search operation, emit), given
  as its typed command (`hotmesh._commands`) and its step number;
- activity inbound: `execute_activity` around each run of an activity (inline or claimed);
- client outbound: `start_workflow`, `signal_workflow`, `cancel_workflow`.

Registered with `MemFlow.init(interceptors=[...])` (every worker of the client and its
calls) and `mf.worker.create(..., interceptors=[...])` (that queue's worker, after the
client's), or `hotmesh worker --interceptor module:factory`. The first in the list is the
outermost. Workflow-side methods run in workflow code, so the rules of workflow code apply:
what they do must be the same on every replay (the determinism check catches a durable call
made by one that is not), and they do no I/O of their own. An interceptor that raises fails
what it wraps like any error of that code: the workflow or activity fails (and retries per
its policy) with that error, recorded; the worker keeps serving. A worker's sticky cache keeps
the workflows of interceptors that wrap workflow code only when they set `sticky = True`
(they only observe; execute_workflow is then around each activation, resumed ones too).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from hotmesh._commands import Command

if TYPE_CHECKING:
    from hotmesh._runner import WorkflowContext
    from hotmesh.activity import ActivityInfo
    from hotmesh.rows import SignalOutcome


@dataclass(frozen=True, slots=True)
class StartInput:
    """A workflow start as the client is about to make it (`start_workflow`'s arguments;
    `options` is its options JSON: retry_policy, priority, ..., traceparent)."""

    workflow_name: str
    args: list[Any]
    task_queue: str | None
    workflow_id: str | None
    entity: str | None
    options: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SignalInput:
    signal_id: str
    data: Any
    workflow_id: str | None
    idempotency_key: str | None


@dataclass(frozen=True, slots=True)
class CancelInput:
    workflow_id: str
    reason: str | None
    descend: bool


class Interceptor:
    """Pass-through for everything: subclass it and override what you need."""

    # The kinds of durable call (`steps.kind`: activity, sleep, signal, send, hook, child,
    # cancel, entity, search, emit) that `durable_call` and `handle_signal` are given; None:
    # all. A call of a kind no interceptor asks for is not wrapped at all (cheaper).
    durable_kinds: ClassVar[frozenset[str] | None] = None
    # Whether a worker may keep the workflows this interceptor wraps in its sticky cache
    # (docs/interceptors.md): True when its workflow-side methods only observe. Then its
    # execute_workflow is around each activation, a fresh one or one resumed from the cache
    # (`next` runs the code from the top, or lets it go on from where it waits).
    sticky: ClassVar[bool] = False

    async def execute_workflow(
        self,
        ctx: WorkflowContext,
        args: list[Any],
        next: Callable[[list[Any]], Awaitable[Any]],
    ) -> Any:
        return await next(args)

    async def handle_signal(
        self,
        ctx: WorkflowContext,
        signal_id: str,
        payload: Any,
        next: Callable[[Any], Awaitable[Any]],
    ) -> Any:
        return await next(payload)

    async def durable_call(
        self,
        ctx: WorkflowContext,
        seq: int,
        command: Command,
        next: Callable[[Command], Awaitable[Any]],
    ) -> Any:
        return await next(command)

    async def execute_activity(
        self,
        info: ActivityInfo,
        args: list[Any],
        next: Callable[[list[Any]], Awaitable[Any]],
    ) -> Any:
        return await next(args)

    async def start_workflow(
        self,
        input: StartInput,
        next: Callable[[StartInput], Awaitable[str]],
    ) -> str:
        return await next(input)

    async def signal_workflow(
        self,
        input: SignalInput,
        next: Callable[[SignalInput], Awaitable[SignalOutcome]],
    ) -> SignalOutcome:
        return await next(input)

    async def cancel_workflow(
        self,
        input: CancelInput,
        next: Callable[[CancelInput], Awaitable[list[str]]],
    ) -> list[str]:
        return await next(input)


class _Link:
    """One interceptor's method with the rest of the chain as its `next`."""

    __slots__ = ("fixed", "method", "rest")

    def __init__(
        self, method: Callable[..., Awaitable[Any]], fixed: tuple[Any, ...], rest: Any
    ) -> None:
        self.method = method
        self.fixed = fixed
        self.rest = rest

    def __call__(self, value: Any) -> Awaitable[Any]:
        return self.method(*self.fixed, value, self.rest)


def overrides(layers: Sequence[Interceptor], method: str) -> bool:
    """Whether any of `layers` does something in `method` (the others are skipped)."""
    base = getattr(Interceptor, method)
    return any(getattr(type(layer), method, base) is not base for layer in layers)


_WORKFLOW_SIDE = ("execute_workflow", "durable_call", "handle_signal")


def keepable(layers: Sequence[Interceptor]) -> bool:
    """Whether the sticky cache may keep the workflows `layers` wrap: each layer that wraps
    workflow code says it may (`sticky`)."""
    return all(
        layer.sticky or not any(overrides([layer], method) for method in _WORKFLOW_SIDE)
        for layer in layers
    )


def outbound(layers: Sequence[Interceptor], kind: str) -> tuple[Interceptor, ...]:
    """The layers that wrap a durable call of `kind` (in `durable_call` or `handle_signal`,
    and asking for that kind)."""
    return tuple(
        layer for layer in layers
        if (layer.durable_kinds is None or kind in layer.durable_kinds)
        and (overrides([layer], "durable_call") or overrides([layer], "handle_signal"))
    )  # fmt: skip


def compose(
    layers: Sequence[Interceptor],
    method: str,
    fixed: tuple[Any, ...],
    last: Callable[[Any], Awaitable[Any]],
) -> Callable[[Any], Awaitable[Any]]:
    """`last` wrapped in each layer's `method`, the first layer outermost. Layers that do not
    override it are left out, so with none the call is `last` itself."""
    base = getattr(Interceptor, method)
    call: Callable[[Any], Awaitable[Any]] = last
    for layer in reversed(layers):
        if getattr(type(layer), method, base) is not base:
            call = _Link(getattr(layer, method), fixed, call)
    return call


def check(interceptors: Any, what: str = "interceptors") -> tuple[Interceptor, ...]:
    """A sequence of Interceptor instances, or InvalidArgument naming the first that is not."""
    from hotmesh import errors

    if interceptors is None:
        return ()
    if isinstance(interceptors, Interceptor | str | bytes | Mapping) or not isinstance(
        interceptors, Iterable
    ):
        raise errors.InvalidArgument(
            f"{what} must be a list of hotmesh.interceptors.Interceptor instances, "
            f"not {type(interceptors).__name__}"
        )
    layers = tuple(interceptors)
    for position, layer in enumerate(layers):
        if not isinstance(layer, Interceptor):
            raise errors.InvalidArgument(
                f"{what}[{position}] is a {type(layer).__name__}, not an instance of "
                f"hotmesh.interceptors.Interceptor"
            )
    return layers
