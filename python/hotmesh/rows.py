"""What the client's inspection calls return: one frozen dataclass per row shape.

Each field is a column of the SQL view or function the row comes from, in its order, under
its name: `_db` selects exactly these fields, so the column list is written once, here (and
in the SQL). `dataclasses.asdict(row)` gives the row as a dict (`hotmesh list --json` prints
that). JSON columns arrive as Python values (dict, list, str, ...), as psycopg reads jsonb.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any


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
    waits: list[dict[str, Any]]  # the same, one JSON object per wait
    error: str | None  # the message of a failed workflow's error
    parent_id: str | None
    expire_at: datetime | None


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
    updated_at: datetime
