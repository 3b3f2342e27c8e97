"""The replay runner: one activation of one workflow thread.

Workflow code runs on a private event loop (`WorkflowLoop`) that only runs ready callbacks.
Workflow code does no I/O of its own: each durable call takes the thread's next step number
and becomes a command (`_commands`): the recorded step at that number answers it (after the
determinism check), or, when there is none, the activation's `perform` carries it out (the
worker's `_Executor` calls its stored function). When the private loop has nothing left to
run, every branch of the workflow waits on a durable call: the runner performs the new
commands and feeds their outcomes back, or, when only outside events can help, suspends.
Suspension closes the workflow's coroutines; it never raises through user code, so a
`try/except Exception` around a durable call cannot swallow it.

The runner touches no database: it ends with an `Outcome` that its caller applies. Without a
`perform` it replays a recorded history alone (`replay`) and reports the first divergence.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import json
import logging
import re
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from hotmesh import _convert, errors
from hotmesh._commands import Command, PatchMarker, RecordedStep, WaitSignal, divergence
from hotmesh.interceptors import Interceptor, compose, outbound, overrides

log = logging.getLogger("hotmesh.worker")

Perform = Callable[[int, Command, RecordedStep | None], Coroutine[Any, Any, RecordedStep]]
"""Carries out a command at a step number (the recorded step when it is a retry)."""

current: contextvars.ContextVar[Activation] = contextvars.ContextVar("hotmesh_activation")


class Thread(Protocol):
    """What the runner reads of the workflow thread it runs (a claimed activation)."""

    @property
    def job_id(self) -> str: ...
    @property
    def thread(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def workflow_name(self) -> str: ...
    @property
    def task_queue(self) -> str: ...
    @property
    def job_attempt(self) -> int: ...
    @property
    def args(self) -> Any: ...
    @property
    def steps(self) -> Sequence[RecordedStep] | None: ...
    @property
    def run(self) -> int: ...


class Runtime(Protocol):
    """Where `proxy_activities(activities=...)` registers what it is given (the worker's
    registry; the executor later runs them inline when this process serves their queue)."""

    def register_activities(
        self, task_queue: str, activities: Mapping[str, Callable[..., Any]]
    ) -> None: ...


@dataclass(frozen=True)
class WorkflowContext:
    """What a workflow knows about its own run (`workflow.get_context()`; what workflow
    interceptors are given: `replaying` says there whether the call is answered by history)."""

    workflow_id: str
    workflow_name: str
    task_queue: str
    thread: str
    attempt: int
    replaying: bool
    run: int = 1
    # The W3C trace context the workflow continues (docs/tracing.md), when it has one.
    traceparent: str | None = None
    # The function the thread runs: the workflow's, or a hook's own.
    function: str = ""


class SandboxError(errors.HotMeshError, RuntimeError):
    """Workflow code used something that is not durable (asyncio.sleep, real I/O, ...)."""


class ContinueAsNew(BaseException):
    """Raised by `workflow.continue_as_new`: the run ends and the next one starts with `args`.
    A BaseException, so a `try/except Exception` in workflow code cannot swallow it."""

    def __init__(self, args: list[Any]) -> None:
        super().__init__()
        self.next_args = args


# \u0000 as JSON writes it (an escape not itself escaped: a string holding the six characters
# backslash-u-0-0-0-0 is fine).
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def encode(value: Any, what: str) -> Any:
    """The value as it will read back from Postgres (JSON round trip), so a first run and a
    replay see the same thing; FatalError when it cannot be stored."""
    if value is None or isinstance(value, bool):
        return value  # reads back as itself
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, default=_convert.default)
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

    def drop(self, task: asyncio.Task[Any]) -> None:
        """Close one unfinished task's coroutine (its `finally` blocks run), the others
        waiting where they are."""
        self._tasks.remove(task)
        task._log_destroy_pending = False  # type: ignore[attr-defined]  # closed, not lost
        with contextlib.suppress(RuntimeError):  # a coroutine that ignored GeneratorExit
            task.get_coro().close()
        task.cancel()  # its wait ends too (as in close()): no cycle left to collect

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
                # Its wait ends too: the future's callback no longer refers to the task, so
                # reference counting frees both (a kept workflow's memory returns at once,
                # not at the cycle collector's next full pass).
                task.cancel()
        self._ready.clear()  # the callbacks the cancels scheduled: never run
        self._tasks.clear()


class _Call(NamedTuple):
    seq: int
    command: Command
    future: asyncio.Future[Any]


@dataclass(frozen=True, slots=True)
class Completed:
    result: Any  # as stored (encoded)


@dataclass(frozen=True, slots=True)
class Failed:
    error: BaseException


@dataclass(frozen=True, slots=True)
class Continued:
    """The main thread continued as new: the next run starts with `args` (as stored), unless
    `unseen`: a call still in flight when the code decided settled (it took a signal, say), so
    the run must replay with that outcome and decide again."""

    args: list[Any]
    unseen: bool = False


@dataclass(frozen=True, slots=True)
class Suspended:
    """Every branch waits. Without `perform`, `commands` are the calls the history does not
    answer, as (step number, command): what the code would do next."""

    commands: tuple[tuple[int, Command], ...] = ()


@dataclass(frozen=True, slots=True)
class Diverged:
    error: errors.NonDeterminismError


Outcome = Completed | Failed | Continued | Suspended | Diverged


class Activation:
    """One run of a workflow thread, from its claim to its completion or suspension."""

    def __init__(
        self,
        task: Thread,
        fn: Callable[..., Coroutine[Any, Any, Any]],
        runtime: Runtime,
        perform: Perform | None = None,
        *,
        check_input: bool = True,
        interceptors: Sequence[Interceptor] = (),
    ) -> None:
        self.task = task
        self.fn = fn
        self.runtime = runtime
        self.perform = perform
        self.check_input = check_input  # compare inputs where the history carries them
        self.loop = WorkflowLoop()  # type: ignore[abstract]  # the unused half of the ABC
        self.history = {s.seq: s for s in task.steps or ()}
        self.last_recorded = max(self.history, default=0)
        self.seq = 0
        self.pending: list[_Call] = []
        # Calls whose outcome is not recorded yet (an activity through its queue, a timer, a
        # signal wait), and the status of every step this activation knows of: what a
        # resume() from the sticky cache checks the next claim's history against.
        self.waiting: dict[int, _Call] = {}
        self.known: dict[int, str] = {s.seq: s.status for s in task.steps or ()}
        self.main: asyncio.Task[Any] | None = None
        self.fault: errors.NonDeterminismError | None = None
        self.patches: dict[str, bool] = {}  # patched()'s answers: the same all run long
        self.interceptors = tuple(interceptors)
        # Without an interceptor that wraps durable calls (or signal deliveries), a call is
        # the plain future: nothing of this costs the hot path. `by_kind`: the interceptors
        # that wrap each kind of call (Interceptor.durable_kinds), as met.
        self.outbound = overrides(self.interceptors, "durable_call") or overrides(
            self.interceptors, "handle_signal"
        )
        self.by_kind: dict[str, tuple[Interceptor, ...]] = {}
        # The interceptors whose execute_workflow is around each activation (sticky ones:
        # run or resumed), and the others', around the function run from the top.
        around = tuple(layer for layer in self.interceptors if layer.sticky)
        self.around = around if overrides(around, "execute_workflow") else ()
        self.inner = tuple(layer for layer in self.interceptors if not layer.sticky)
        self.resumed = False  # resume() took it up: the new outcomes are to be handed over
        self._contexts: dict[bool, WorkflowContext] = {}  # context() of this claim, as made
        # The W3C trace context the activity calls of this activation continue (set around
        # each activation by the tracing interceptor, hotmesh.otel): a plain attribute, so
        # that tracing does not wrap every activity call in an interceptor's durable_call.
        self.calls_traceparent: str | None = None

    @property
    def replaying(self) -> bool:
        return self.seq < self.last_recorded

    def next_seq(self, kind: str = "") -> int:
        """The step number of the thread's next call. A patch marker that the code does not
        ask about (its patched() call was removed once every live run had taken the new
        branch) is passed over, as Temporal does, so the calls after it keep their steps."""
        self.seq = self.seq + 1 if kind == PatchMarker.kind else self.upcoming_seq()
        return self.seq

    def upcoming_seq(self) -> int:
        """The step number the next call other than a patch marker takes."""
        seq = self.seq + 1
        while (step := self.history.get(seq)) is not None and step.kind == PatchMarker.kind:
            seq += 1
        return seq

    def patched(self, patch_id: str, deprecated: bool) -> bool:
        """Whether this run takes the new branch of patch `patch_id`: yes when its history
        has the marker here, or when the history ends before here (a new run, or one that
        reaches the patch now: the marker is recorded); no when the run went past this
        point on the old code."""
        answer = self.patches.get(patch_id)
        if answer is None:
            step = self.history.get(self.seq + 1)
            answer = not self.replaying or (
                step is not None and step.kind == PatchMarker.kind and step.name == patch_id
            )
            if answer:
                self.call(PatchMarker(patch_id, deprecated))
            self.patches[patch_id] = answer
        return answer

    def context(self, replaying: bool | None = None) -> WorkflowContext:
        if replaying is None:
            replaying = self.replaying
        made = self._contexts.get(replaying)
        if made is not None:
            return made  # frozen: one per claim and value of `replaying` (one per call is slow)
        task = self.task
        made = self._contexts[replaying] = WorkflowContext(
            workflow_id=task.job_id,
            workflow_name=task.workflow_name,
            task_queue=task.task_queue,
            thread=task.thread,
            attempt=task.job_attempt,
            replaying=replaying,
            run=task.run,
            traceparent=getattr(task, "traceparent", None),
            function=task.name,
        )
        return made

    def call(self, command: Command) -> asyncio.Future[Any]:
        """The future of the thread's next durable call: its recorded outcome, a parked wait,
        or a new command. The step number is taken now, also when interceptors wrap the
        call, so they do not change the numbering."""
        seq = self.next_seq(command.kind)
        if not self.outbound or command.kind == PatchMarker.kind:
            return self._call_at(seq, command)
        layers = self.by_kind.get(command.kind)
        if layers is None:
            layers = self.by_kind[command.kind] = outbound(self.interceptors, command.kind)
        if not layers:
            return self._call_at(seq, command)
        return self.loop.create_task(self._intercepted(seq, command, layers))

    async def _intercepted(
        self, seq: int, command: Command, layers: tuple[Interceptor, ...]
    ) -> Any:
        """A durable call through the interceptors' `durable_call` (and, for a signal wait,
        `handle_signal` around its delivery)."""
        ctx = self.context(replaying=seq in self.history)
        made = False

        def last(given: Command) -> asyncio.Future[Any]:
            nonlocal made
            if made:
                raise SandboxError(f"an interceptor made durable call {seq} twice")
            if given.kind != command.kind:
                raise SandboxError(
                    f"an interceptor turned durable call {seq} ({command.kind}) into a "
                    f"{given.kind}: it may change a call's arguments, not its kind"
                )
            made = True
            return self._call_at(seq, given)

        outcome = await compose(layers, "durable_call", (ctx, seq), last)(command)
        if isinstance(command, WaitSignal):
            # A delivery this activation is the first to see: no step after the wait was
            # recorded (an earlier activation went on past a delivery it saw).
            seen = self.context(replaying=seq < self.last_recorded)
            delivered = compose(layers, "handle_signal", (seen, command.signal_id), _delivered)
            outcome = await delivered(outcome)
        return outcome

    def _call_at(self, seq: int, command: Command) -> asyncio.Future[Any]:
        future = self.loop.create_future()
        step = self.history.get(seq)
        if step is not None:
            task = self.task
            fault = divergence(step, command, task.job_id, task.thread, self.check_input, task.run)
            if fault is not None:
                self.fault = errors.NonDeterminismError(fault)
                return future
            if not _apply(future, step):
                if not future.done():
                    self.waiting[seq] = _Call(seq, command, future)
                return future
        self.pending.append(_Call(seq, command, future))
        return future

    def fail_now(self, error: BaseException) -> asyncio.Future[Any]:
        """A call that fails before anything is recorded (bad arguments); it still takes its
        step number, so numbering does not depend on the arguments' validity."""
        self.next_seq()
        future = self.loop.create_future()
        future.set_exception(error)
        return future

    async def run(self, keep: bool = False) -> Outcome:
        """Run the thread until it returns, raises or waits on something outside. With
        `keep`, an activation that suspends stays alive (its coroutines wait where they are)
        for resume(); close() ends it."""
        token = current.set(self)
        try:
            if self.around:
                watched = self.loop.create_task(self._activation())
            else:
                if self.main is None:
                    self.main = self.loop.create_task(self._body())
                self._settle()
                watched = self.main
        finally:
            current.reset(token)
        outcome: Outcome | None = None
        try:
            outcome = await self._drive(watched)
            return outcome
        finally:
            if not (keep and isinstance(outcome, Suspended) and self.perform is not None):
                self.close()
            elif watched is not self.main:
                self.loop.drop(watched)  # this activation ends; the code waits where it is

    def close(self) -> None:
        """End a kept activation: its coroutines are closed, nothing they ask is performed."""
        self.loop.close()
        self.main = None  # its context refers to this activation: no cycle left to collect

    def resume(self, task: Thread, perform: Perform) -> bool:
        """Take up a kept (suspended) activation for the thread's next claim: True when the
        claim's history is what this activation recorded, with only outcomes of the calls it
        waits for added (each checked against its call, and settled); False, changing
        nothing, when anything else differs (another worker advanced the thread, a retry or
        a new run started): the caller then replays from the history."""
        old = self.task
        steps = {s.seq: s for s in task.steps or ()}
        if (
            (task.job_id, task.thread, task.run, task.job_attempt)
            != (old.job_id, old.thread, old.run, old.job_attempt)
            or steps.keys() != self.known.keys()
            or any(
                step.status != self.known[seq]
                for seq, step in steps.items()
                if seq not in self.waiting
            )
        ):
            return False
        for seq, call in self.waiting.items():
            step = steps[seq]
            if step.status != self.known[seq] and divergence(
                step, call.command, task.job_id, task.thread, self.check_input, task.run
            ):
                return False  # cannot happen for a call it recorded itself; replay says why
        self.task, self.perform, self.history = task, perform, steps
        self._contexts.clear()
        self.known = {seq: step.status for seq, step in steps.items()}
        self.last_recorded = max(steps, default=0)
        self.resumed = True
        return True

    def _settle(self) -> None:
        """Hand the outcomes a resumed activation's claim brought to the calls waiting for
        them (at its start: inside its interceptors, when they wrap each activation)."""
        if not self.resumed:
            return
        self.resumed = False
        for seq, call in list(self.waiting.items()):
            if _apply(call.future, self.history[seq]):
                self.pending.append(call)  # an inline retry now due: performed again
                del self.waiting[seq]
            elif call.future.done():
                del self.waiting[seq]

    async def _drive(self, main: asyncio.Task[Any]) -> Outcome:
        running: dict[asyncio.Task[RecordedStep], _Call] = {}
        try:
            while True:
                self.loop.run_until_quiet()
                if self.fault is not None:
                    return Diverged(self.fault)
                if main.done():
                    outcome = self._outcome(main)
                    if isinstance(outcome, Continued) and running:
                        return await _after_in_flight(outcome, running)
                    return outcome
                if self.perform is None:
                    return Suspended(tuple((call.seq, call.command) for call in self.pending))
                for call in self.pending:
                    step = self.history.get(call.seq)
                    running[asyncio.create_task(self.perform(call.seq, call.command, step))] = call
                self.pending.clear()
                if not running:
                    return Suspended()
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for finished in sorted(done, key=lambda t: running[t].seq):
                    call = running.pop(finished)
                    try:
                        step = finished.result()
                    except errors.InvalidArgument as error:
                        call.future.set_exception(error)  # a bad call fails only itself
                        continue
                    self.known[call.seq] = step.status
                    if _apply(call.future, step):
                        self.pending.append(call)
                    elif not call.future.done():
                        self.waiting[call.seq] = call
        finally:
            for leftover in running:
                leftover.cancel()

    def _args(self) -> list[Any]:
        # Called inside a task, so a call that fails at once (wrong number of arguments)
        # fails the workflow like any error of its code, instead of crashing the runner.
        # Typed parameters (dataclasses, pydantic models, datetimes, ...) get their type back.
        args = list(self.task.args or [])
        if _convert.arg_plan(self.fn) is not None:
            args = _convert.convert_args(self.fn, args, f"workflow {self.task.name}")
        return args

    async def _body(self, args: list[Any] | None = None) -> Any:
        if args is None:
            args = self._args()
        if not self.inner:
            return await self.fn(*args)
        return await compose(self.inner, "execute_workflow", (self.context(),), self._fn)(args)

    async def _activation(self) -> Any:
        """One activation inside the sticky interceptors' execute_workflow; `next` runs the
        code (the first) or lets it go on (a resumed one) until it ends or waits."""
        wrapped = compose(self.around, "execute_workflow", (self.context(),), self._proceed)
        return await wrapped(self._args())

    async def _proceed(self, args: list[Any]) -> Any:
        if self.main is None:
            self.main = self.loop.create_task(self._body(args))
        self._settle()
        main, waiter = self.main, self.loop.create_future()

        def relay(done: asyncio.Task[Any]) -> None:
            if waiter.done():
                return
            if done.cancelled():
                waiter.cancel()
            elif (error := done.exception()) is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(done.result())

        main.add_done_callback(relay)
        try:
            return await waiter
        finally:
            main.remove_done_callback(relay)  # a kept run outlives this activation

    async def _fn(self, args: list[Any]) -> Any:
        return await self.fn(*args)

    def typed(self, future: asyncio.Future[Any], tp: Any, what: str) -> asyncio.Future[Any]:
        """A future settled with `future`'s result as type `tp` (`_convert.from_json`): on
        the first run and in every replay alike, since both read the value as stored."""
        out = self.loop.create_future()

        def settle(done: asyncio.Future[Any]) -> None:
            if out.done():
                return
            if done.cancelled():
                out.cancel()
            elif (error := done.exception()) is not None:
                out.set_exception(error)
            else:
                try:
                    out.set_result(_convert.from_json(done.result(), tp, what))
                except _convert.PayloadTypeError as problem:
                    out.set_exception(problem)

        future.add_done_callback(settle)
        return out

    def _outcome(self, main: asyncio.Task[Any]) -> Outcome:
        error = main.exception()
        if isinstance(error, ContinueAsNew):
            return Continued(error.next_args)
        if error is not None:
            return Failed(error)
        try:
            return Completed(encode(main.result(), f"the result of workflow {self.task.name}"))
        except errors.FatalError as fatal:
            return Failed(fatal)


@dataclass(frozen=True, slots=True)
class RecordedThread:
    """A workflow thread known only from its history: what `replay` runs."""

    job_id: str
    steps: Sequence[RecordedStep]
    args: Any = ()
    thread: str = "main"
    name: str = ""
    workflow_name: str = ""
    task_queue: str = ""
    job_attempt: int = 1
    run: int = 1


class _NoRuntime:
    def register_activities(
        self, task_queue: str, activities: Mapping[str, Callable[..., Any]]
    ) -> None:
        pass  # a replay runs no activity


async def replay(
    fn: Callable[..., Coroutine[Any, Any, Any]],
    history: Iterable[Mapping[str, Any]],
    *,
    args: Sequence[Any] = (),
    workflow_id: str = "replay",
    thread: str = "main",
    workflow_name: str | None = None,
    task_queue: str = "",
    check_input: bool = True,
    run: int = 1,
) -> Outcome:
    """Run workflow `fn` against a recorded history with no database: each call is answered
    by its recorded step, nothing is performed. Diverged names the first step whose kind, name
    or (where `history` carries `input`, e.g. `workflow_history` rows, and `check_input`
    holds) input differs from what the code asks; Suspended lists what the code would do
    beyond the history; Completed and Failed are the run's end."""
    name = workflow_name or str(getattr(fn, "__name__", ""))
    recorded = RecordedThread(
        job_id=workflow_id,
        # workflow_history rows also show the run and its threads starting and ending
        # (no seq); the claim's history has no thread (it is the claimed one's).
        steps=[
            RecordedStep.from_json(step)
            for step in history
            if step.get("seq") is not None and step.get("thread", thread) == thread
        ],
        args=list(args),
        thread=thread,
        name=name,
        workflow_name=name,
        task_queue=task_queue,
        run=run,
    )
    return await Activation(recorded, fn, _NoRuntime(), check_input=check_input).run()


async def _after_in_flight(
    outcome: Continued, running: Mapping[asyncio.Task[RecordedStep], _Call]
) -> Continued:
    """The calls still in flight when the code continued as new finish first: an outcome they
    settled (a kept signal its wait took, an activity's result) is one the code never saw."""
    await asyncio.wait(running)
    for finished in running:
        try:
            settled = finished.result().status in ("completed", "failed")
        except errors.InvalidArgument:
            settled = True
        if settled:
            return Continued(outcome.args, unseen=True)
    return outcome


async def _delivered(payload: Any) -> Any:
    return payload


def _apply(future: asyncio.Future[Any], step: RecordedStep) -> bool:
    """Settle a call's future from its recorded step; True when the call must be performed
    (again): an inline activity whose retry is due."""
    status = step.status
    if status == "completed":
        future.set_result(step.output)
    elif status == "failed":
        future.set_exception(errors.from_payload(step.error or {}))
    elif status == "retrying":
        return bool(step.due)
    return False


def activation(what: str) -> Activation:
    """The activation running the calling workflow code."""
    try:
        return current.get()
    except LookupError:
        raise SandboxError(f"{what} can only be called inside a workflow function") from None
