"""The API workflow code calls: durable activities, timers, determinism helpers.

Every function here must be called inside a workflow function run by a worker. Each durable
call takes the thread's next step number at call time (so `asyncio.gather(a(), b())` numbers
a before b), returns the recorded outcome on replay, and is performed once otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hotmesh import _durations, errors
from hotmesh._runner import Activation, Step, activation, encode
from hotmesh.activity import ActivityInfo, run_activity
from hotmesh.retry import RetryPolicy, policy_json

ActivityFunctions = Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]]


def _named(activities: ActivityFunctions) -> dict[str, Callable[..., Any]]:
    if isinstance(activities, Mapping):
        named = dict(activities)
    else:
        named = {fn.__name__: fn for fn in activities}
    for name, fn in named.items():
        if not callable(fn):
            raise errors.InvalidArgument(f"activity {name!r} is not callable")
    return named


class ActivityProxy:
    """`acts.name(*args)` calls activity `name` durably and returns an awaitable."""

    def __init__(
        self,
        activities: dict[str, Callable[..., Any]] | None,
        task_queue: str | None,
        retry_policy: dict[str, Any] | None,
    ) -> None:
        self._activities = activities
        self._task_queue = task_queue
        self._retry_policy = retry_policy

    def __getattr__(self, name: str) -> Callable[..., asyncio.Future[Any]]:
        if name.startswith("_"):
            raise AttributeError(name)
        if self._activities is not None and name not in self._activities:
            known = ", ".join(sorted(self._activities)) or "none"
            raise AttributeError(f"no activity {name!r} in this proxy (it has: {known})")

        def call(*args: Any) -> asyncio.Future[Any]:
            return self._call(name, args)

        call.__name__ = name
        return call

    def _call(self, name: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        act = activation(f"activity {name}")
        queue = self._task_queue or act.task.task_queue
        if self._activities is not None:
            act.runtime.register_activities(queue, self._activities)
        try:
            arguments = encode(list(args), f"the arguments of activity {name}")
        except errors.FatalError as error:
            return act.fail_now(error)
        fn = act.runtime.inline_activity(queue, name)
        policy = self._retry_policy

        async def schedule(seq: int) -> Step:
            return await act.db.schedule_activity(act.task, seq, name, arguments, queue, policy)

        if fn is None:
            return act.call("activity", name, schedule)
        inline = fn

        async def run_inline(seq: int) -> Step:
            info = ActivityInfo(
                workflow_id=act.task.job_id,
                activity_name=name,
                task_queue=queue,
                attempt=act.history.get(seq, {}).get("attempt", 0) + 1,
                inline=True,
            )
            try:
                output = encode(
                    await run_activity(inline, arguments, info), f"the result of {name}"
                )
            except Exception as error:
                return await act.db.record_step(
                    act.task, seq, "activity", name, arguments, None,
                    errors.to_payload(error), policy,
                )  # fmt: skip
            return await act.db.record_step(act.task, seq, "activity", name, arguments, output)

        return act.call("activity", name, run_inline)


def proxy_activities(
    activities: ActivityFunctions | None = None,
    *,
    task_queue: str | None = None,
    retry_policy: RetryPolicy | dict[str, Any] | None = None,
) -> Any:
    """Durable handles to activities.

    With `activities`, they are registered in this process; a call runs inline (in this
    worker, recorded with one call) when this process serves the activity's queue, and goes
    through the queue to another worker otherwise. `task_queue` defaults to the workflow's own
    queue. `retry_policy` applies to every call made through the proxy.
    """
    named = _named(activities) if activities is not None else None
    return ActivityProxy(named, task_queue, policy_json(retry_policy))


def sleep_for(duration: _durations.Duration) -> asyncio.Future[float]:
    """Sleep durably (it survives restarts and never wakes early); returns the seconds slept.
    `duration` is seconds, a timedelta or text such as "2 seconds", "5m", "1.5h"."""
    act = activation("sleep_for")
    seconds = _durations.seconds(duration, "sleep_for duration")

    async def schedule(seq: int) -> Step:
        return await act.db.schedule_sleep(act.task, seq, seconds)

    return act.call("sleep", "", schedule)


def random() -> float:
    """A random number in [0, 1) that is the same on every replay: it is derived from the
    workflow id and the call's step number."""
    act = activation("random")
    act.seq += 1
    digest = hashlib.sha256(f"{act.task.job_id}/{act.task.thread}/{act.seq}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class WorkflowContext:
    """What a workflow knows about its own run."""

    workflow_id: str
    workflow_name: str
    task_queue: str
    thread: str
    attempt: int
    replaying: bool


def get_context() -> WorkflowContext:
    """The running workflow's id, name, task queue, thread, attempt and whether the next
    durable call is replayed from history."""
    act: Activation = activation("get_context")
    return WorkflowContext(
        workflow_id=act.task.job_id,
        workflow_name=act.task.workflow_name,
        task_queue=act.task.task_queue,
        thread=act.task.thread,
        attempt=act.task.job_attempt,
        replaying=act.replaying,
    )


def check_workflow_function(fn: Callable[..., Any]) -> None:
    """Workflow functions are `async def`: their durable calls are awaited."""
    if not inspect.iscoroutinefunction(fn):
        name = getattr(fn, "__name__", repr(fn))
        raise errors.InvalidArgument(f"workflow function {name} must be declared `async def`")
