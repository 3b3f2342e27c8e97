"""The replay runner: one activation of one workflow thread.

Workflow code runs on a private event loop (`WorkflowLoop`) that only runs ready callbacks.
Workflow code does no I/O of its own: each durable call takes the thread's next step number,
returns its recorded outcome when there is one, and otherwise becomes a command that the
worker performs on its real event loop (run an inline activity and record it, schedule a
remote activity, start a timer, ...). When the private loop has nothing left to run, every
branch of the workflow waits on a durable call: the runner performs the new commands and
feeds their outcomes back, or, when only outside events can help, suspends the activation.
Suspension closes the workflow's coroutines; it never raises through user code, so a
`try/except Exception` around a durable call cannot swallow it.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import json
import logging
import re
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from hotmesh import errors
from hotmesh._log import event, log_failure, task_fields

if TYPE_CHECKING:
    from hotmesh._db import Claimed, Database

log = logging.getLogger("hotmesh.worker")

Step = dict[str, Any]
Perform = Callable[[int], Coroutine[Any, Any, Step]]

current: contextvars.ContextVar[Activation] = contextvars.ContextVar("hotmesh_activation")


class Runtime(Protocol):
    """What the worker process offers an activation: its activity registry."""

    def register_activities(
        self, task_queue: str, activities: Mapping[str, Callable[..., Any]]
    ) -> None: ...

    def inline_activity(self, task_queue: str, name: str) -> Callable[..., Any] | None:
        """The activity's function when this process serves its queue, else None."""
        ...


class SandboxError(errors.HotMeshError, RuntimeError):
    """Workflow code used something that is not durable (asyncio.sleep, real I/O, ...)."""


# \u0000 as JSON writes it (an escape not itself escaped: a string holding the six characters
# backslash-u-0-0-0-0 is fine).
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def encode(value: Any, what: str) -> Any:
    """The value as it will read back from Postgres (JSON round trip), so a first run and a
    replay see the same thing; FatalError when it cannot be stored."""
    if value is None or isinstance(value, bool):
        return value  # reads back as itself
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        text.encode("utf-8")  # a lone surrogate has no UTF-8 form (UnicodeEncodeError)
    except RecursionError:
        raise errors.FatalError(
            f"{what} is nested too deeply to be stored as JSON", type="SerializationError"
        ) from None
    except (TypeError, ValueError) as error:
        raise errors.FatalError(
            f"{what} is not JSON-serialisable: {error}", type="SerializationError"
        ) from None
    if _NUL.search(text):
        raise errors.FatalError(
            f"{what} contains a NUL character (\\u0000), which Postgres jsonb cannot store",
            type="SerializationError",
        )
    try:
        return json.loads(text)
    except RecursionError:
        raise errors.FatalError(
            f"{what} is nested too deeply to be stored as JSON", type="SerializationError"
        ) from None


def encode_args(args: Any, what: str) -> list[Any]:
    """Positional arguments as stored: a list or tuple only. FatalError for anything else,
    because list("A42") would quietly store ['A', '4', '2']."""
    if not isinstance(args, list | tuple):
        raise errors.FatalError(
            f"{what} must be a list of positional arguments, not {type(args).__name__}"
            f" (wrap a single argument: args=[value])",
            type="InvalidArgument",
        )
    encoded: list[Any] = encode(list(args), what)
    return encoded


class WorkflowLoop(asyncio.AbstractEventLoop):
    """A deterministic event loop for workflow code: ready callbacks only, no clock, no I/O."""

    def __init__(self) -> None:
        self._ready: collections.deque[asyncio.Handle] = collections.deque()
        self._tasks: list[asyncio.Task[Any]] = []
        self._closed = False

    def run_until_quiet(self) -> None:
        """Run callbacks until none is ready: every branch now awaits a durable call."""
        outer = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self)
        try:
            while self._ready:
                handle = self._ready.popleft()
                if not handle.cancelled():
                    handle._run()
        finally:
            asyncio.events._set_running_loop(outer)

    def call_soon(  # type: ignore[override]
        self,
        callback: Callable[..., object],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.Future(loop=self)

    def create_task(  # type: ignore[override]
        self,
        coro: Coroutine[Any, Any, Any],
        *,
        name: str | None = None,
        context: contextvars.Context | None = None,
    ) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=self, name=name, context=context)
        self._tasks.append(task)
        return task

    def _not_durable(self, *args: Any, **kwargs: Any) -> Any:
        raise SandboxError(
            "workflow code cannot use timers or I/O of its own (asyncio.sleep, call_later, "
            "sockets, ...): use workflow.sleep_for and activities"
        )

    call_later = call_at = call_soon_threadsafe = run_in_executor = _not_durable  # type: ignore[assignment]

    def time(self) -> float:
        return 0.0

    def get_debug(self) -> bool:
        return False

    def is_running(self) -> bool:
        return True

    def is_closed(self) -> bool:
        return self._closed

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        if not self._closed:
            log.debug("workflow loop: %s", context.get("message"))

    def close(self) -> None:
        """Close every unfinished coroutine of the workflow; `finally` blocks run, nothing
        they ask for is performed."""
        self._closed = True
        self._ready.clear()
        for task in self._tasks:
            if not task.done():
                try:
                    task.get_coro().close()
                except RuntimeError:
                    pass  # a coroutine that ignored GeneratorExit; it is dropped all the same
        self._tasks.clear()


@dataclass
class Command:
    """A durable call with no recorded outcome yet: the worker performs it."""

    seq: int
    kind: str
    name: str
    future: asyncio.Future[Any]
    perform: Perform


class Activation:
    """One run of a workflow thread, from its claim to its completion or suspension."""

    def __init__(
        self,
        db: Database,
        task: Claimed,
        fn: Callable[..., Coroutine[Any, Any, Any]],
        runtime: Runtime,
        settling: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.settling = settling  # called when only the activation's last call remains
        self.task = task
        self.fn = fn
        self.runtime = runtime
        self.loop = WorkflowLoop()  # type: ignore[abstract]  # the unused half of the ABC
        self.history: dict[int, Step] = {step["seq"]: step for step in task.steps or []}
        self.last_recorded = max(self.history, default=0)
        self.seq = 0
        self.pending: list[Command] = []
        self.fault: errors.HotMeshError | None = None

    @property
    def replaying(self) -> bool:
        return self.seq < self.last_recorded

    def call(self, kind: str, name: str, perform: Perform) -> asyncio.Future[Any]:
        """The future of the thread's next durable call: its recorded outcome, a parked wait,
        or a new command."""
        self.seq += 1
        future = self.loop.create_future()
        step = self.history.get(self.seq)
        if step is not None and (step["kind"] != kind or step["name"] != name):
            self.fault = errors.NonDeterminismError(
                f'non-determinism in workflow "{self.task.job_id}" thread {self.task.thread}: '
                f'step {self.seq} was recorded as {step["kind"]} "{step["name"]}" but the '
                f'code now calls {kind} "{name}"'
            )
            return future
        if step is None or _apply(future, step):
            self.pending.append(Command(self.seq, kind, name, future, perform))
        return future

    def fail_now(self, error: BaseException) -> asyncio.Future[Any]:
        """A call that fails before anything is recorded (bad arguments); it still takes its
        step number, so numbering does not depend on the arguments' validity."""
        self.seq += 1
        future = self.loop.create_future()
        future.set_exception(error)
        return future

    async def run(self) -> None:
        """Run the thread until it returns, raises or waits on something outside."""
        token = current.set(self)
        try:
            main = self.loop.create_task(self._body())
        finally:
            current.reset(token)
        running: dict[asyncio.Task[Step], Command] = {}
        try:
            while True:
                self.loop.run_until_quiet()
                if self.fault is not None:
                    await self._bury(self.fault)
                    return
                if main.done():
                    break
                for command in self.pending:
                    running[asyncio.create_task(command.perform(command.seq))] = command
                self.pending.clear()
                if not running:
                    self.settling()
                    next_run = await self.db.suspend_task(self.task)
                    self._log("suspend", next_run=next_run)
                    return
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for finished in sorted(done, key=lambda t: running[t].seq):
                    command = running.pop(finished)
                    try:
                        step = finished.result()
                    except errors.InvalidArgument as error:
                        command.future.set_exception(error)  # a bad call fails only itself
                        continue
                    if _apply(command.future, step):
                        self.pending.append(command)
            await self._finish(main)
        finally:
            for leftover in running:
                leftover.cancel()
            self.loop.close()

    async def _body(self) -> Any:
        # Called inside the task, so a call that fails at once (wrong number of arguments)
        # fails the workflow like any error of its code, instead of crashing the runner.
        return await self.fn(*(self.task.args or []))

    async def _finish(self, main: asyncio.Task[Any]) -> None:
        self.settling()
        error = main.exception()
        if error is None:
            try:
                result = encode(main.result(), f"the result of workflow {self.task.name}")
            except errors.FatalError as fatal:
                error = fatal
            else:
                await self.db.complete_task(self.task, result)
                self._log("complete")
                return
        outcome = await self.db.fail_task(self.task, errors.to_payload(error))
        log_failure(log, self.task, outcome, error)

    def _log(self, name: str, level: int = logging.INFO, **values: object) -> None:
        task = self.task
        event(
            log,
            level,
            name,
            **task_fields(task),
            steps=self.seq,
            **values,
        )

    async def _bury(self, fault: errors.HotMeshError) -> None:
        self._log("stuck", logging.ERROR, error=fault.message)
        payload = {"message": fault.message, "type": type(fault).__name__, "code": 500}
        payload["sqlstate"] = fault.sqlstate
        await self.db.bury_task(self.task, payload)


def _apply(future: asyncio.Future[Any], step: Step) -> bool:
    """Settle a call's future from its recorded step; True when the call must be performed
    (again): an inline activity whose retry is due."""
    status = step["status"]
    if status == "completed":
        future.set_result(step["output"])
    elif status == "failed":
        future.set_exception(errors.from_payload(step["error"] or {}))
    elif status == "retrying":
        return bool(step.get("due"))
    return False


def activation(what: str) -> Activation:
    """The activation running the calling workflow code."""
    try:
        return current.get()
    except LookupError:
        raise SandboxError(f"{what} can only be called inside a workflow function") from None
