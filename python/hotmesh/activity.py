"""What an activity knows about its own run: `activity.info()` and `activity.heartbeat()`."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hotmesh import _convert
from hotmesh.errors import HotMeshError
from hotmesh.interceptors import Interceptor, compose

_current: contextvars.ContextVar[ActivityInfo] = contextvars.ContextVar("hotmesh_activity")


@dataclass(frozen=True)
class ActivityInfo:
    """The activity's workflow id, name, queue and attempt (1 for the first run), and the
    workflow's step that records it."""

    workflow_id: str
    activity_name: str
    task_queue: str
    attempt: int
    inline: bool
    beat: Callable[[], None] | None = field(default=None, repr=False)
    # The W3C trace context it continues (docs/tracing.md): the scheduling activation's,
    # else its workflow's, when there is one.
    traceparent: str | None = None
    step: int | None = None  # the step's seq in its workflow's history


def info() -> ActivityInfo:
    """The running activity's ActivityInfo."""
    try:
        return _current.get()
    except LookupError:
        raise HotMeshError("activity.info() can only be called inside an activity") from None


def heartbeat() -> None:
    """Tell the engine this activity is alive: its lease is extended at once. (The worker also
    extends the leases of everything it runs while the process is alive; heartbeats from the
    activity itself report progress of a long run.) Callable from `def` and `async def`."""
    beat = info().beat
    if beat is not None:
        beat()


async def run_activity(
    fn: Callable[..., Any],
    args: list[Any],
    info: ActivityInfo,
    interceptors: Sequence[Interceptor] = (),
) -> Any:
    """Run an activity with its info set: `async def` on this loop, `def` in a thread;
    inside the interceptors' `execute_activity`, when there are any. Typed parameters get
    their type back first (docs/typed-payloads.md)."""
    if _convert.arg_plan(fn) is not None:
        args = _convert.convert_args(fn, args, f"activity {info.activity_name}")
    token = _current.set(info)
    try:
        if interceptors:
            last = functools.partial(_invoke, fn)
            return await compose(interceptors, "execute_activity", (info,), last)(args)
        return await _invoke(fn, args)
    finally:
        _current.reset(token)


async def _invoke(fn: Callable[..., Any], args: list[Any]) -> Any:
    if inspect.iscoroutinefunction(fn):
        return await fn(*args)
    result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        return await result
    return result
