"""What the client's inspection calls return: one frozen dataclass per row shape, and one
`TypedDict` per JSON document that the client hands back as a dict.

Each field of a dataclass is a column of the SQL view or function the row comes from, in its
order, under its name: `_db` selects exactly these fields, so the column list is written once,
here (and in the SQL). `dataclasses.asdict(row)` gives the row as a dict (`hotmesh list
--json` prints that). JSON columns arrive as Python values (dict, list, str, ...), as psycopg
reads jsonb; `Any` is left only where the value is the user's own JSON (args, results, the
entity) or an open error payload.

`handle.describe()`, `handle.signal()` / `mf.workflow.signal()` and `handle.retry()` return
the JSON document their SQL function builds, as a plain dict that is typed by a `TypedDict`
here (docs/python-api.md): `describe()["waits"]` and `== {"status": "duplicate"}` work as
documented, and mypy knows the keys. Timestamps in these documents are ISO 8601 text, as
`jsonb` writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, NotRequired, TypedDict


class Wait(TypedDict):
    """One thing a workflow waits on (`<app>.workflow_waits`): a `timer` (`until`), a
    `signal`, an `activity` (its `state`: running, queued, retrying), a `child`
    (`workflow_id`), a `workflow_retry` or a `dead` task (`task_id`)."""

    thread: str
    kind: str
    seq: NotRequired[int]
    name: NotRequired[str]
    until: NotRequired[str]
    workflow_id: NotRequired[str]
    state: NotRequired[str]
    retry_at: NotRequired[str]
    attempt: NotRequired[int]
    error: NotRequired[str]
    task_id: NotRequired[int]


@dataclass(frozen=True)
class WorkflowSummary:
    """A row of the `<app>.workflows` view: `mf.workflow.list()`, `hotmesh list`."""

    id: str
    workflow_name: str
    entity: str
    status: str
    task_queue: str
    age: timedelta
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    attempt: int
    waiting_on: str | None  # what it waits on, as text ("signal approve")
    waits: list[Wait]  # the same, one JSON object per wait
    error: str | None  # the message of a failed workflow's error
    parent_id: str | None
    expire_at: datetime | None
    schedule_id: str | None  # the schedule that started this run
    build_id: str | None  # the code version of its last activation


@dataclass(frozen=True)
class HistoryEntry:
    """A row of `<app>.workflow_history(id)`: `handle.history()`, `hotmesh history`."""

    at: datetime
    thread: str
    seq: int | None  # None for the workflow's own start and end
    kind: str
    name: str
    status: str
    attempt: int | None
    entity_version: int | None
    input: Any
    output: Any
    error: dict[str, Any] | None
    completed_at: datetime | None


@dataclass(frozen=True)
class QueueBacklog:
    """A row of the `<app>.queue_backlog` view: `mf.queue_backlog()`, `hotmesh queues`."""

    task_queue: str
    kind: str
    ready: int
    delayed: int
    leased: int
    lease_expired: int
    dead: int
    oldest_ready_age: timedelta | None
    next_run_at: datetime | None
    # The queue's limits (None: no limit of that kind; docs/flow-control.md) and where it stands.
    max_running: int | None
    running: int | None
    rate: int | None
    per: timedelta | None
    tokens: float | None
    next_token_at: datetime | None
    key_max_running: int | None
    key_rate: int | None
    key_per: timedelta | None


@dataclass(frozen=True)
class MetricSample:
    """A row of the `<app>.metrics` view (docs/metrics.md): a series, its labels, its value."""

    metric: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class QueueLimits:
    """A row of `<app>.get_queue_limits()`: `mf.queue.limits()`, `hotmesh queue limits`."""

    task_queue: str
    max_running: int | None
    running: int
    rate: int | None
    per: timedelta | None
    tokens: float | None
    next_token_at: datetime | None
    key_max_running: int | None
    key_rate: int | None
    key_per: timedelta | None
    updated_at: datetime


@dataclass(frozen=True)
class QueueKey:
    """A row of `<app>.queue_keys(task_queue)`: one concurrency key of a queue and its tasks."""

    concurrency_key: str
    running: int
    ready: int
    delayed: int
    oldest_ready_age: timedelta | None
    tokens: float | None  # left in the key's bucket, with a key rate
    next_token_at: datetime | None


@dataclass(frozen=True)
class Schedule:
    """A row of the `<app>.schedule_fires` view: `mf.schedule.list()`, `hotmesh schedule list`."""

    id: str
    spec: str  # cron expression, macro (@daily) or "@every 10m"
    timezone: str
    status: str  # active | paused
    workflow_name: str
    task_queue: str
    overlap: str  # skip | buffer_one | allow
    catchup_window: timedelta
    jitter: timedelta
    next_fire_at: datetime | None
    due_at: datetime | None  # the next fire with its jitter; None while paused
    last_fire_at: datetime | None
    last_run_id: str | None
    last_run_status: str | None
    buffered_at: datetime | None  # buffer_one: a fire waiting for the last run to end
    fires: int
    skipped: int
    last_error: dict[str, Any] | None  # why the last fire's run could not start
    note: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class HumanTask:
    """A row of `<app>.human_tasks`: what `mf.human_tasks.*` and `hotmesh tasks` return
    (docs/people.md)."""

    id: int
    job_id: str  # the workflow that waits for the answer
    thread: str
    seq: int
    signal_id: str
    role: str
    assignee: str | None
    type: str
    priority: int  # higher first
    title: str
    description: str | None
    metadata: dict[str, Any]
    form: dict[str, Any] | None  # the JSON schema the answer must match
    due_at: datetime | None
    escalate_to: str | None
    escalate_after: timedelta | None  # the new due time after an escalation, from then
    status: str  # open | claimed | resolved | expired | cancelled
    created_at: datetime
    claimed_by: str | None
    claimed_at: datetime | None
    resolved_by: str | None
    resolved_at: datetime | None
    answer: Any
    events: list[dict[str, Any]]  # append-only: created, claimed, comment, resolved, ...


class TaskSummary(TypedDict):
    """A queued task of a workflow, in `describe()["tasks"]`."""

    id: int
    kind: str
    thread: str
    name: str
    task_queue: str
    state: str
    run_at: str
    attempt: int
    lease_owner: str | None


class WorkflowDocument(TypedDict):
    """What `<app>.get_workflow(id)` returns: the workflow's row, its step count and tasks."""

    id: str
    entity: str
    workflow_name: str
    task_queue: str
    status: str
    args: Any
    context: Any
    result: Any
    error: dict[str, Any] | None
    parent_id: str | None
    attempt: int
    priority: int
    created_at: str
    updated_at: str
    completed_at: str | None
    expire_at: str | None
    steps: int
    tasks: list[TaskSummary]
    build_id: str | None  # the code version of its last activation
    search: dict[str, Any]  # its search attributes
    run: int  # 1, or the run continue_as_new started


class WorkflowDescription(WorkflowDocument):
    """`handle.describe()`: get_workflow's document and what the workflow waits on (the
    `workflows` view's columns of the same names)."""

    waiting_on: str | None
    waits: list[Wait]
    blocked_by: str | None


class SignalOutcome(TypedDict):
    """What `signal` did: `delivered` (to `workflow_id`'s wait at `thread`/`seq`), `kept`
    (as signal `id`, until one waits) or `duplicate` (its idempotency key was used)."""

    status: Literal["delivered", "kept", "duplicate"]
    workflow_id: NotRequired[str]
    thread: NotRequired[str]
    seq: NotRequired[int]
    id: NotRequired[int]


class RetryOutcome(TypedDict):
    """What `retry_workflow` did: the workflow runs again (`pending`) with `reset_steps` of its
    steps to run again and the children `retried`, or `revived_tasks` dead tasks are ready."""

    workflow_id: str
    status: str
    reset_steps: int
    retried: list[str]
    revived_tasks: int
