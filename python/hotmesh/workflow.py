"""The API workflow code calls: durable activities, timers, determinism helpers.

Every function here must be called inside a workflow function run by a worker. Each durable
call takes the thread's next step number at call time (so `asyncio.gather(a(), b())` numbers
a before b), returns the recorded outcome on replay, and is performed once otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

from hotmesh import _convert, _durations, errors
from hotmesh._commands import (
    AskHuman,
    CancelWorkflow,
    Emit,
    ScheduleActivity,
    SearchOp,
    SendSignal,
    StartChild,
    StartHook,
    StartTimer,
    WaitSignal,
)
from hotmesh._runner import (
    Activation,
    ContinueAsNew,
    WorkflowContext,
    activation,
    encode,
    encode_args,
)
from hotmesh.entity import Entity, workflow_entity
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
        concurrency_key: str | None = None,
    ) -> None:
        self._activities = activities
        self._task_queue = task_queue
        self._retry_policy = retry_policy
        self._concurrency_key = concurrency_key

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
        future = act.call(
            ScheduleActivity(
                name, arguments, queue, self._retry_policy, self._concurrency_key,
                act.calls_traceparent,
            )
        )  # fmt: skip
        fn = None if self._activities is None else self._activities.get(name)
        tp = None if fn is None else _convert.return_type(fn)
        return future if tp is None else act.typed(future, tp, f"the result of activity {name}")


def proxy_activities(
    activities: ActivityFunctions | None = None,
    *,
    task_queue: str | None = None,
    retry_policy: RetryPolicy | dict[str, Any] | None = None,
    start_to_close: _durations.Duration | None = None,
    schedule_to_close: _durations.Duration | None = None,
    heartbeat_timeout: _durations.Duration | None = None,
    concurrency_key: str | None = None,
) -> Any:
    """Durable handles to activities.

    With `activities`, they are registered in this process; a call runs inline (in this
    worker, recorded with one call) when this process serves the activity's queue, and goes
    through the queue to another worker otherwise. `task_queue` defaults to the workflow's own
    queue. `retry_policy` applies to every call made through the proxy.

    The timeouts (docs/timeouts.md) are enforced by the database: `start_to_close` bounds each
    run (it fails as a timeout and is retried per policy, however alive its worker),
    `schedule_to_close` all runs together, `heartbeat_timeout` the time between two
    `activity.heartbeat()` calls. A call with a timeout always goes through the queue. With
    `concurrency_key` (a customer, a tenant), every call goes through the queue and shares its
    per-key limit with the key's other tasks; so does every call to a queue with limits
    (docs/flow-control.md).
    """
    named = _named(activities) if activities is not None else None
    policy = policy_json(retry_policy)
    given = {"start_to_close": start_to_close, "schedule_to_close": schedule_to_close,
             "heartbeat_timeout": heartbeat_timeout}  # fmt: skip
    timeouts = {k: _durations.seconds(v, k) for k, v in given.items() if v is not None}
    if timeouts:
        policy = {**(policy or {}), **timeouts}
    return ActivityProxy(named, task_queue, policy, concurrency_key)


def sleep_for(duration: _durations.Duration) -> asyncio.Future[float]:
    """Sleep durably (it survives restarts and never wakes early); returns the seconds slept.
    `duration` is seconds, a timedelta or text such as "2 seconds", "5m", "1.5h"."""
    act = activation("sleep_for")
    return act.call(StartTimer(_durations.seconds(duration, "sleep_for duration")))


def random() -> float:
    """A random number in [0, 1) that is the same on every replay: it is derived from the
    workflow id and the call's step number."""
    act = activation("random")
    seq = act.next_seq()
    digest = hashlib.sha256(f"{_position(act)}/{seq}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _patch_id(patch_id: Any, what: str) -> str:
    if not isinstance(patch_id, str) or not patch_id:
        raise errors.InvalidArgument(
            f"{what} takes a non-empty patch id (text), not {patch_id!r:.80}"
        )
    if len(patch_id) > 255:
        raise errors.InvalidArgument(f"{what}: patch id is {len(patch_id)} characters; at most 255")
    return patch_id


def patched(patch_id: str) -> bool:
    """Whether this run takes the new branch of a code change (Temporal's `patched`):
    `if workflow.patched("fraud-check"): <new code> else: <old code>`. True for a run that
    reaches this point on code that has the patch (a marker step records it); False for a run
    whose history went past this point on the old code, so it replays the old branch. Asked
    again in the same run, it gives the same answer. docs/deploying.md walks through it."""
    act = activation("patched")
    return act.patched(_patch_id(patch_id, "patched"), deprecated=False)


def deprecate_patch(patch_id: str) -> None:
    """The old branch of patch `patch_id` is gone (no live run without its marker is left):
    keep only the new code, and call this where `patched` was. Runs that recorded the marker
    replay; new runs still record it (marked deprecated), so workers that still run the code
    with `patched` take the new branch for them. Remove the call once no run that recorded
    the marker is left."""
    act = activation("deprecate_patch")
    act.patched(_patch_id(patch_id, "deprecate_patch"), deprecated=True)


def _position(act: Activation) -> str:
    """What ids derived from a step's position start with: the workflow and thread, and the
    run from the second on (continue_as_new), so a later run's ids differ from earlier ones."""
    run = "" if act.task.run == 1 else f"/run{act.task.run}"
    return f"{act.task.job_id}{run}/{act.task.thread}"


def continue_as_new(*args: Any) -> NoReturn:
    """End this run and start the next run of this workflow with `args`: the same workflow
    id, entity and kept signals, a fresh attempt count and an empty step history (the finished
    run is archived: `<app>.workflow_runs`). It never returns. Only the main thread can
    continue as new; in a hook it raises FatalError."""
    act = activation("continue_as_new")
    if act.task.thread != "main":
        raise errors.FatalError(
            f"continue_as_new ends a workflow's run: only its main thread can call it, not hook "
            f'thread {act.task.thread} ({act.task.name}) of workflow "{act.task.job_id}"',
            type="InvalidArgument",
        )
    raise ContinueAsNew(encode_args(args, f"the args of the next run of {act.task.workflow_name}"))


def get_context() -> WorkflowContext:
    """The running workflow's id, name, task queue, thread, attempt, whether the next
    durable call is replayed from history, and its run (1, then 2, ... after continue_as_new)."""
    return activation("get_context").context()


def check_workflow_function(fn: Callable[..., Any]) -> None:
    """Workflow functions are `async def`: their durable calls are awaited."""
    if not inspect.iscoroutinefunction(fn):
        name = getattr(fn, "__name__", repr(fn))
        raise errors.InvalidArgument(f"workflow function {name} must be declared `async def`")


# -- signals, hooks, children, cancellation -----------------------------------------------------


def start_options(
    retry_policy: RetryPolicy | dict[str, Any] | None = None,
    priority: int | None = None,
    expire: _durations.Duration | None = None,
    execution_timeout: _durations.Duration | None = None,
    **more: Any,
) -> dict[str, Any]:
    """The `options` JSON of start_workflow / start_child: durations in seconds, the rest
    (`more`: the start options of docs/sql-api.md) as given, None left out."""
    options: dict[str, Any] = {k: v for k, v in more.items() if v is not None}
    if retry_policy is not None:
        options["retry_policy"] = policy_json(retry_policy)
    if priority is not None:
        options["priority"] = priority
    for name, value in (("expire", expire), ("execution_timeout", execution_timeout)):
        if value is not None:
            options[name] = _durations.seconds(value, name)
    return options


def wait_for(
    signal_id: str, timeout: _durations.Duration | None = None, *, result_type: Any = None
) -> asyncio.Future[Any]:
    """Wait until signal `signal_id` arrives for this workflow and return its payload, as
    `result_type` when given (docs/typed-payloads.md). A signal sent before the wait is kept
    and taken at once. With `timeout`, raises TimeoutFailure (code 596) when it passes first."""
    act = activation("wait_for")
    limit = None if timeout is None else _durations.seconds(timeout, "wait_for timeout")
    future = act.call(WaitSignal(signal_id, limit))
    if result_type is None:
        return future
    return act.typed(future, result_type, f"the payload of signal {signal_id}")


WorkflowName = str | Callable[..., Any]
"""A workflow's registered name, or its function (its name, and its return annotation as the
result's type)."""


def _workflow_named(workflow: WorkflowName, result_type: Any) -> tuple[str, Any]:
    """The name of a child's or hook's function, and the type its result is given back as:
    `result_type`, else the function's return annotation (when it needs converting)."""
    if isinstance(workflow, str):
        return workflow, result_type
    name = getattr(workflow, "__name__", None)
    if not callable(workflow) or not isinstance(name, str):
        raise errors.InvalidArgument(
            f"workflow_name must be a name or a workflow function, not {workflow!r}"
        )
    return name, result_type if result_type is not None else _convert.return_type(workflow)


def ask_human(
    title: str,
    *,
    role: str,
    description: str | None = None,
    type: str = "approval",
    priority: int = 0,
    metadata: Mapping[str, Any] | None = None,
    assignee: str | None = None,
    due: _durations.Duration | None = None,
    form: Mapping[str, Any] | None = None,
    escalate_to: str | None = None,
    escalate_due: _durations.Duration | None = None,
    signal_id: str | None = None,
) -> asyncio.Future[Any]:
    """Ask a person: writes a human task (`<app>.human_tasks`, docs/people.md) for `role`
    in the same transaction as the wait, and returns the answer that `resolve_human_task`
    gives (checked against `form`, a JSON schema, when given). With `due`, raises
    TimeoutFailure (596, `"timeout": "due"`) when nobody answered in time, as `wait_for`'s
    timeout does; with `escalate_to`, the task is first opened again for that role, due
    `escalate_due` (default: `due`) later. The default signal id is unique to this call."""
    act = activation("ask_human")
    request: dict[str, Any] = {"role": role, "title": title, "type": type, "priority": priority}
    try:
        for key, value in (
            ("description", description),
            ("assignee", assignee),
            ("escalate_to", escalate_to),
        ):
            if value is not None:
                request[key] = value
        for key, duration in (("due", due), ("escalate_due", escalate_due)):
            if duration is not None:
                request[key] = _durations.seconds(duration, f"ask_human {key}")
        if metadata is not None:
            request["metadata"] = encode(metadata, "the metadata of a human task")
        if form is not None:
            request["form"] = encode(form, "the form of a human task")
    except (errors.FatalError, errors.InvalidArgument) as error:
        return act.fail_now(error)
    sid = signal_id or f"{_position(act)}/human-{act.upcoming_seq()}"
    return act.call(AskHuman(sid, request))


def signal(
    signal_id: str, data: Any = None, *, workflow_id: str | None = None
) -> asyncio.Future[Any]:
    """Send signal `signal_id` with `data`, once. It goes to this workflow's own wait (a hook
    answering its caller) unless `workflow_id` names another workflow, or is "*" for whoever
    waits on that signal anywhere. Returns the delivery: {"status": "delivered" | "kept", ...}."""
    act = activation("signal")
    try:
        payload = encode(data, f"the data of signal {signal_id}")
    except errors.FatalError as error:
        return act.fail_now(error)
    return act.call(SendSignal(signal_id, payload, workflow_id))


def hook(
    *,
    workflow_name: WorkflowName,
    args: Iterable[Any] = (),
    task_queue: str | None = None,
    workflow_id: str | None = None,
    signal_id: str | None = None,
    execution_timeout: _durations.Duration | None = None,
) -> asyncio.Future[Any]:
    """Start function `workflow_name` (registered on `task_queue`, default this workflow's) as
    a hook: a new thread of workflow `workflow_id` (default this one) that shares its entity.
    Returns {"workflow_id", "thread"} once started. With `signal_id`, the hook's end (its
    return value or its error) is delivered as that signal unless it signalled it itself.
    With `execution_timeout`, the engine ends the hook thread failed (TimeoutFailure, 596)
    when it runs longer, as it ends a workflow."""
    act = activation("hook")
    try:
        workflow_name, _ = _workflow_named(workflow_name, None)
        arguments = encode_args(args, f"the args of hook {workflow_name}")
        options = start_options(execution_timeout=execution_timeout) or None
    except (errors.FatalError, errors.InvalidArgument) as error:
        return act.fail_now(error)
    return act.call(
        StartHook(workflow_name, arguments, task_queue, workflow_id, signal_id, options)
    )


async def exec_hook(
    *,
    workflow_name: WorkflowName,
    args: Iterable[Any] = (),
    task_queue: str | None = None,
    signal_id: str | None = None,
    timeout: _durations.Duration | None = None,  # noqa: ASYNC109 - a durable wait's limit
    execution_timeout: _durations.Duration | None = None,
    result_type: Any = None,
) -> Any:
    """Run a hook in this workflow and wait for it: returns the payload of `signal_id` if the
    hook sends it, else the hook's return value; raises the hook's error if it fails (errors
    are never swallowed). The default signal id is unique to this call. `timeout` bounds
    this wait only (the hook runs on); `execution_timeout` bounds the hook itself: the engine
    ends it and this call raises its TimeoutFailure (596). The result is given back as
    `result_type`, or as the return annotation of `workflow_name` when it is the function."""
    act = activation("exec_hook")
    name, tp = _workflow_named(workflow_name, result_type)
    sid = signal_id or f"{_position(act)}/hook-{act.upcoming_seq()}"
    await hook(
        workflow_name=name, args=args, task_queue=task_queue, signal_id=sid,
        execution_timeout=execution_timeout,
    )  # fmt: skip
    future = wait_for(sid, timeout)
    if tp is not None:
        future = act.typed(future, tp, f"the result of hook {name}")
    return await future


async def exec_hook_batch(hooks: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Run several hooks at once: `[{"key": k, "options": {exec_hook options}}, ...]`
    (workflow_name, args, task_queue, signal_id, timeout, execution_timeout, result_type);
    returns {key: result}. All hooks start before any wait; the first hook error (or
    timeout) raises here."""
    items = [(str(item["key"]), dict(item["options"])) for item in hooks]
    act = activation("exec_hook_batch")
    sids: list[str] = []
    limits = [options.get("timeout") for _key, options in items]
    types = []
    for _key, options in items:
        sid = options.pop("signal_id", None) or options.pop("signalId", None)
        sids.append(sid or f"{_position(act)}/hook-{act.upcoming_seq()}")
        options.setdefault("workflow_name", options.pop("workflowName", None))
        options.setdefault("task_queue", options.pop("taskQueue", None))
        name, tp = _workflow_named(options["workflow_name"], options.get("result_type"))
        types.append((name, tp))
        await hook(
            workflow_name=name,
            args=options.get("args", ()),
            task_queue=options["task_queue"],
            signal_id=sids[-1],
            execution_timeout=options.get("execution_timeout"),
        )
    waits = [wait_for(sid, limit) for sid, limit in zip(sids, limits, strict=True)]
    results = await asyncio.gather(
        *(
            wait if tp is None else act.typed(wait, tp, f"the result of hook {name}")
            for wait, (name, tp) in zip(waits, types, strict=True)
        )
    )
    return {key: result for (key, _), result in zip(items, results, strict=True)}


def _child(
    wait: bool,
    workflow: WorkflowName,
    args: Iterable[Any],
    task_queue: str | None,
    workflow_id: str | None,
    entity: str | None,
    options: dict[str, Any],
    result_type: Any = None,
) -> asyncio.Future[Any]:
    act = activation("exec_child" if wait else "start_child")
    workflow_name, tp = _workflow_named(workflow, result_type)
    try:
        arguments = encode_args(args, f"the args of child workflow {workflow_name}")
    except errors.FatalError as error:
        return act.fail_now(error)
    future = act.call(
        StartChild(workflow_name, arguments, task_queue, workflow_id, entity, options, wait)
    )
    if not wait or tp is None:
        return future
    return act.typed(future, tp, f"the result of child workflow {workflow_name}")


def exec_child(
    *,
    workflow_name: WorkflowName,
    args: Iterable[Any] = (),
    task_queue: str | None = None,
    workflow_id: str | None = None,
    entity: str | None = None,
    retry_policy: RetryPolicy | dict[str, Any] | None = None,
    priority: int | None = None,
    expire: _durations.Duration | None = None,
    execution_timeout: _durations.Duration | None = None,
    concurrency_key: str | None = None,
    result_type: Any = None,
) -> asyncio.Future[Any]:
    """Start a child workflow and wait for its result (this workflow suspends meanwhile; it
    holds no worker slot). A failed child raises its error, with its code, here (596 when its
    `execution_timeout` passed). The child id defaults to "<this id>-<thread>-<step>", the same
    on every replay. The result is given back as `result_type`, or as the return annotation
    of `workflow_name` when it is the child's function (docs/typed-payloads.md)."""
    options = start_options(
        retry_policy, priority, expire, execution_timeout, concurrency_key=concurrency_key
    )
    return _child(True, workflow_name, args, task_queue, workflow_id, entity, options, result_type)


def start_child(
    *,
    workflow_name: WorkflowName,
    args: Iterable[Any] = (),
    task_queue: str | None = None,
    workflow_id: str | None = None,
    entity: str | None = None,
    retry_policy: RetryPolicy | dict[str, Any] | None = None,
    priority: int | None = None,
    expire: _durations.Duration | None = None,
    execution_timeout: _durations.Duration | None = None,
    concurrency_key: str | None = None,
) -> asyncio.Future[Any]:
    """Start a child workflow and return its id at once."""
    options = start_options(
        retry_policy, priority, expire, execution_timeout, concurrency_key=concurrency_key
    )
    return _child(False, workflow_name, args, task_queue, workflow_id, entity, options)


def interrupt(
    workflow_id: str, *, reason: str | None = None, descend: bool = True
) -> asyncio.Future[Any]:
    """Cancel another workflow (and, with `descend`, its children), once; returns the ids
    cancelled. Cancelling a finished or unknown workflow raises here."""
    return activation("interrupt").call(CancelWorkflow(workflow_id, reason, descend))


async def entity() -> Entity:
    """This workflow's entity (jobs.context), shared with its hooks: `e = await
    workflow.entity()`. Each operation on it is a durable step, applied exactly once per code
    position. Unlike the seed's entity(), getting it takes no step number of its own."""
    return workflow_entity(activation("workflow.entity"))


context = entity
"""Alias of entity() (the seed's workflow.context())."""


# -- search attributes and events ---------------------------------------------------------------


class Search:
    """This workflow's search attributes (jobs.search): flat keys with JSON values that SQL
    can filter on (`where search @> '{"region": "eu"}'`, GIN-indexed). Each operation is a
    durable call, applied exactly once."""

    def _call(self, op: str, args: Any) -> asyncio.Future[Any]:
        act = activation(f"search().{op}")
        try:
            arguments = encode(args, f"the arguments of search().{op}")
        except errors.FatalError as error:
            return act.fail_now(error)
        return act.call(SearchOp(op, arguments))

    def set(self, fields: Mapping[str, Any]) -> asyncio.Future[Any]:
        """Set (merge) fields; returns how many were given."""
        return self._call("set", dict(fields))

    def get(self, key: str) -> asyncio.Future[Any]:
        """A field's value (None when missing)."""
        return self._call("get", [key])

    def mget(self, *keys: str) -> asyncio.Future[Any]:
        """Several fields' values, in order."""
        return self._call("mget", list(keys))

    def delete(self, *keys: str) -> asyncio.Future[Any]:
        """Remove fields; returns how many existed (the seed's `del`)."""
        return self._call("del", list(keys))

    def incr(self, key: str, by: float = 1) -> asyncio.Future[Any]:
        """Add to a numeric field (missing counts as 0); returns the new value."""
        return self._call("incr", [key, by])

    def mult(self, key: str, by: float) -> asyncio.Future[Any]:
        """Multiply a numeric field (missing counts as 1); returns the new value, stored as is
        (not as a logarithm, as the seed did)."""
        return self._call("mult", [key, by])


def search() -> Search:
    """This workflow's search attributes."""
    activation("search")
    return Search()


async def enrich(fields: Mapping[str, Any]) -> bool:
    """Set search attributes (the seed's enrich); returns True."""
    await search().set(fields)
    return True


def emit(events: Mapping[str, Any]) -> asyncio.Future[Any]:
    """Publish ephemeral events, once: a NOTIFY per topic on the app's channel (payload
    'e:{"workflow_id", "topic", "data"}'); nothing is stored. Each must stay under ~7.8 kB."""
    act = activation("emit")
    try:
        payload = encode(dict(events), "the events of emit")
    except errors.FatalError as error:
        return act.fail_now(error)
    for topic, data in payload.items():
        if len(json.dumps(data)) + len(topic) + len(act.task.job_id) > 7800:
            return act.fail_now(
                errors.InvalidArgument(f'event "{topic}" is too large for NOTIFY (max ~7.8 kB)')
            )

    return act.call(Emit(payload))
