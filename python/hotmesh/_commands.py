"""Durable calls as data: the commands workflow code makes and the steps a history records.

A workflow's durable call becomes a command (kind, name, arguments) that says nothing about
how it is carried out: the worker maps each command to its stored function
(`worker._Executor`), and a replay with no database compares commands with a recorded history
instead. Each command also knows the input its stored function records in `steps.input`, so
a history that carries inputs (the `workflow_history` view, an export) is checked argument by
argument, not only by kind and name.

A live activation compares kind and name only, as the database's `_check_step` does: the
claim's history carries no inputs, because shipping them would make every activation fetch
and decode every recorded argument, payload and entity value of its thread again. Changed
arguments are what a replay of the recorded histories (`_runner.replay`) reports, before a
deploy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple


class _NotRecorded:
    """The input of a step whose history did not carry it (the claim's history does not)."""

    def __repr__(self) -> str:
        return "NOT_RECORDED"


NOT_RECORDED: Any = _NotRecorded()


class RecordedStep(NamedTuple):
    """One recorded durable call, as the claim's history (or `workflow_history`) gives it.

    A NamedTuple rather than a frozen dataclass: one is built for every step of every claim
    and every performed call, and a tuple is built in half the time."""

    seq: int
    kind: str
    name: str
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    attempt: int = 0
    due: bool | None = None
    input: Any = NOT_RECORDED

    @classmethod
    def from_json(cls, step: Mapping[str, Any]) -> RecordedStep:
        """A step from its JSON: the claim's {seq, kind, name, status, output, error, attempt,
        due}, or a `workflow_history` row, which adds `input`."""
        get = step.get
        return cls(
            step["seq"],
            step["kind"],
            step["name"],
            step["status"],
            get("output"),
            get("error"),
            get("attempt") or 0,
            get("due"),
            get("input", NOT_RECORDED),
        )


@dataclass(frozen=True, slots=True)
class Command:
    """A durable call. `kind` and `name` are what `steps.kind` and `steps.name` record."""

    kind: ClassVar[str]

    @property
    def name(self) -> str:
        return ""

    def recorded_input(self, job_id: str, thread: str, seq: int, run: int = 1) -> Any:
        """What the call's stored function records as `steps.input` at position `seq`."""
        raise NotImplementedError

    def comparable(self, recorded: Any) -> Any:
        """The part of a recorded input that the call determines."""
        return recorded

    def matches_input(
        self, recorded: Any, job_id: str, thread: str, seq: int, run: int = 1
    ) -> bool:
        """Whether a recorded input is the one this call would record (in run `run`)."""
        return bool(recorded == self.recorded_input(job_id, thread, seq, run))


@dataclass(frozen=True, slots=True)
class ScheduleActivity(Command):
    """Run activity `name` (inline when this worker serves `task_queue`, else through it)."""

    kind: ClassVar[str] = "activity"
    activity: str
    args: list[Any]
    task_queue: str
    retry_policy: dict[str, Any] | None = None
    concurrency_key: str | None = None

    @property
    def name(self) -> str:
        return self.activity

    def recorded_input(self, job_id: str, thread: str, seq: int, run: int = 1) -> Any:
        return self.args


@dataclass(frozen=True, slots=True)
class StartTimer(Command):
    kind: ClassVar[str] = "sleep"
    seconds: float

    def recorded_input(self, job_id: str, thread: str, seq: int, run: int = 1) -> Any:
        return {"seconds": self.seconds}


@dataclass(frozen=True, slots=True)
class WaitSignal(Command):
    kind: ClassVar[str] = "signal"
    signal_id: str
    timeout: float | None = None

    @property
    def name(self) -> str:
        return self.signal_id

    def recorded_input(self, job_id: str, thread: str, seq: int, run: int = 1) -> Any:
        return {"timeout": self.timeout}


@dataclass(frozen=True, slots=True)
class AskHuman(Command):
    """Wait for signal `signal_id` and write a human task for it (`ask_human`): recorded as the
    signal wait it is (no timeout: the task's due time is its SLA)."""

    kind: ClassVar[str] = "signal"
    signal_id: str
    request: dict[str, Any]

    @property
    def name(self) -> str:
        return self.signal_id

    def recorded_input(self, job_id: str, thread: str, seq: int, run: int = 1) -> Any:
        return {"timeout": None}


@dataclass(frozen=True, slots=True)
class SendSignal(Command):
    """Send a signal to `workflow_id` (None: this workflow; "*": whoever waits)."""

    kind: ClassVar[str] = "send"
    signal_id: str
    payload: Any = None
    workflow_id: str | None = None

    @property
    def name(self) -> str:
        return self.signal_id

    def recorded_input(self, job_id: str, thread: str, seq: int, run: int = 1) -> Any:
        target = job_id if self.workflow_id is None else self.workflow_id
        return {"payload": self.payload, "workflow_id": None if target == "*" else target}


@dataclass(frozen=True, slots=True)
class StartHook(Command):
    kind: ClassVar[str] = "hook"
    workflow_name: str
    args: list[Any]
    task_queue: str | None = None
    workflow_id: str | None = None
    signal_id: str | None = None
    # {"execution_timeout": seconds}; not part of the recorded input (as a child's options).
    options: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self.workflow_name

    def recorded_input(self, job_id: str, thread: str, seq: int, run: int = 1) -> Any:
        target = job_id if self.workflow_id is None else self.workflow_id
        return {"workflow_id": target, "args": self.args, "signal_id": self.signal_id}


@dataclass(frozen=True, slots=True)
class StartChild(Command):
    """Start a child workflow; with `wait`, the call settles when the child ends."""

    kind: ClassVar[str] = "child"
    workflow_name: str
    args: list[Any]
    task_queue: str | None = None
    workflow_id: str | None = None
    entity: str | None = None
    options: dict[str, Any] | None = None
    wait: bool = True

    @property
    def name(self) -> str:
        return self.workflow_name

    def recorded_input(self, job_id: str, thread: str, seq: int, run: int = 1) -> Any:
        # The child's args are the child's own (jobs.args), not this step's input. A default
        # id names the run from the second on (continue_as_new: sql/46_children_hooks.sql).
        suffix = f"-run{run}" if run > 1 else ""
        child = f"{job_id}-{thread}-{seq}{suffix}" if self.workflow_id is None else self.workflow_id
        return {"workflow_id": child, "await": self.wait}


@dataclass(frozen=True, slots=True)
class CancelWorkflow(Command):
    kind: ClassVar[str] = "cancel"
    workflow_id: str
    reason: str | None = None
    descend: bool = True

    @property
    def name(self) -> str:
        return self.workflow_id

    def recorded_input(self, job_id: str, thread: str, seq: int, run: int = 1) -> Any:
        return {"reason": self.reason, "descend": self.descend}


@dataclass(frozen=True, slots=True)
class EntityOp(Command):
    """Entity operation `op` at `path` (as the SQL functions take it: dotted text or a JSON
    array); `has_value` is False for operations that take no operand (get, delete, toggle)."""

    kind: ClassVar[str] = "entity"
    op: str
    path: str | None
    value: Any = None
    has_value: bool = True

    @property
    def name(self) -> str:
        return self.op

    def recorded_input(self, job_id: str, thread: str, seq: int, run: int = 1) -> Any:
        recorded: dict[str, Any] = {"path": _segments(self.path)}
        if self.has_value:
            recorded["value"] = self.value
        return recorded

    def comparable(self, recorded: Any) -> Any:
        # "by" names the worker or database user that applied it.
        if isinstance(recorded, dict):
            return {key: value for key, value in recorded.items() if key != "by"}
        return recorded

    def matches_input(
        self, recorded: Any, job_id: str, thread: str, seq: int, run: int = 1
    ) -> bool:
        recorded = self.comparable(recorded)
        expected = self.recorded_input(job_id, thread, seq, run)
        if recorded == expected:
            return True
        # A path the database refused is recorded as given, not as segments.
        return bool(recorded == {**expected, "path": self.path})


@dataclass(frozen=True, slots=True)
class SearchOp(Command):
    kind: ClassVar[str] = "search"
    op: str
    args: Any

    @property
    def name(self) -> str:
        return self.op

    def recorded_input(self, job_id: str, thread: str, seq: int, run: int = 1) -> Any:
        return self.args


@dataclass(frozen=True, slots=True)
class Emit(Command):
    kind: ClassVar[str] = "emit"
    events: dict[str, Any]

    def recorded_input(self, job_id: str, thread: str, seq: int, run: int = 1) -> Any:
        return self.events


@dataclass(frozen=True, slots=True)
class PatchMarker(Command):
    """The marker of `workflow.patched(patch_id)` (or `deprecate_patch`): this run took the
    new branch of that patch."""

    kind: ClassVar[str] = "patch"
    patch_id: str
    deprecated: bool = False

    @property
    def name(self) -> str:
        return self.patch_id

    def recorded_input(self, job_id: str, thread: str, seq: int, run: int = 1) -> Any:
        return {"deprecated": self.deprecated}

    def matches_input(
        self, recorded: Any, job_id: str, thread: str, seq: int, run: int = 1
    ) -> bool:
        # patched() and deprecate_patch() of one patch are the same marker: code that
        # deprecated it replays histories that patched() recorded, and back.
        return True


def _segments(path: str | None) -> Any:
    """A path as `_entity_path` records it: its segments as text (None without a path)."""
    if path is None:
        return None
    if not path.startswith("["):
        return path.split(".")
    try:
        segments = json.loads(path)
    except ValueError:
        return path
    if not isinstance(segments, list) or not all(
        isinstance(s, str) or (type(s) is int and s >= 0) for s in segments
    ):
        return path  # not a valid path: recorded as given
    return [s if isinstance(s, str) else str(s) for s in segments]


def divergence(
    step: RecordedStep,
    command: Command,
    job_id: str,
    thread: str,
    check_input: bool = True,
    run: int = 1,
) -> str | None:
    """How the call the code makes differs from the step recorded at its position (the
    non-determinism message, HM006), or None when it is the same call. Inputs are compared
    when the history carries them and `check_input` holds."""
    kind, name = command.kind, command.name
    if step.kind != kind or step.name != name:
        return (
            f'non-determinism in workflow "{job_id}" thread {thread}: step {step.seq} was '
            f'recorded as {step.kind} "{step.name}" but the code now calls {kind} "{name}"'
        )
    if (
        not check_input
        or step.input is NOT_RECORDED
        or command.matches_input(step.input, job_id, thread, step.seq, run)
    ):
        return None
    was = _shown(command.comparable(step.input))
    now = _shown(command.recorded_input(job_id, thread, step.seq, run))
    return (
        f'non-determinism in workflow "{job_id}" thread {thread}: step {step.seq} was '
        f'recorded as {kind} "{name}" with input {was} but the code now calls {kind} "{name}" '
        f"with input {now}"
    )


def _shown(value: Any, limit: int = 200) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."
