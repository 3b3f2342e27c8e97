"""Every SQL statement the Python side sends, and the typed calls that send them.

Python never writes engine tables: each call here is one stored function of the app schema,
sent on an autocommit connection, so it is one round trip and (at most) one commit. The app
schema name is the only identifier, composed with `sql.Identifier`.

Parameters are named (`%(workflow_id)s`). Rows become frozen dataclasses here, at the edge
(those the client returns are in `hotmesh.rows`): no row travels as a dict or a tuple. So do
the JSON documents Python reads: a durable call's step (`RecordedStep`), a failed run's
outcome (`FailOutcome`), a batch item's error (`ItemError`). The documents the client hands
back as documented dicts (describe, signal, retry) are the `TypedDict`s of `hotmesh.rows`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import select
import uuid
import weakref
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, TypedDict, TypeVar

import psycopg
from psycopg import pq, sql
from psycopg.adapt import AdaptersMap
from psycopg.rows import kwargs_row, tuple_row
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool

from hotmesh import errors
from hotmesh._commands import RecordedStep
from hotmesh._log import first_line
from hotmesh.rows import (
    HistoryEntry,
    HumanTask,
    MetricSample,
    QueueBacklog,
    QueueKey,
    QueueLimits,
    RetryOutcome,
    Schedule,
    SignalOutcome,
    Wait,
    WorkflowDocument,
    WorkflowSummary,
)


class ActivityPayload(TypedDict, total=False):
    """What an activity task carries (`tasks.payload`), and its workflow's trace context."""

    args: list[Any]
    retry_policy: dict[str, Any]
    traceparent: str  # the scheduling activation's trace context, else the workflow's
    schedule_to_start: float  # seconds it was due before its claim (absent: none)


class ActivationPayload(TypedDict, total=False):
    """What an activation carries: the build (worker code version) of the workflow's
    previous activation, when one recorded it, and its run from the second on."""

    build_id: str
    run: int
    traceparent: str  # the workflow's trace context (docs/tracing.md)
    schedule_to_start: float  # seconds it was due before its claim (absent: none)


@dataclass(frozen=True)
class Claimed:
    """A task a worker now holds (the `claimed_task` composite of claim_tasks); an
    activation's recorded steps arrive as `RecordedStep`s (from_row)."""

    task_id: int
    kind: str
    job_id: str
    thread: str
    seq: int | None
    name: str
    task_queue: str
    lease_token: uuid.UUID
    attempt: int
    args: Any
    # An activity's: its args and retry policy. An activation's: see ActivationPayload.
    payload: ActivityPayload | ActivationPayload | None
    workflow_name: str
    job_attempt: int
    steps: list[RecordedStep] | None

    @classmethod
    def from_row(cls, **row: Any) -> Claimed:
        steps = row["steps"]
        if steps is not None:
            row["steps"] = [RecordedStep.from_json(step) for step in steps]
        return cls(**row)

    @property
    def recorded_build_id(self) -> str | None:
        """An activation's: the build (worker code version) of the previous activation."""
        if self.kind != "workflow" or not self.payload:
            return None
        build = self.payload.get("build_id")
        return build if isinstance(build, str) else None

    @property
    def traceparent(self) -> str | None:
        """The W3C trace context the task continues, when there is one: an activity's, that of
        the activation that scheduled it; a hook thread's, that of the step that started it;
        else the workflow's (`jobs.traceparent`)."""
        found = self.payload.get("traceparent") if self.payload else None
        return found if isinstance(found, str) else None

    @property
    def schedule_to_start(self) -> float:
        """Seconds the task was due before its claim took it, on the engine's clock."""
        waited = self.payload.get("schedule_to_start") if self.payload else None
        return float(waited) if isinstance(waited, int | float) else 0.0

    @property
    def run(self) -> int:
        """The workflow's run (continue_as_new starts the next one): 1 unless an activation's
        payload says otherwise."""
        run = self.payload.get("run") if self.kind == "workflow" and self.payload else None
        return run if isinstance(run, int) else 1


@dataclass(frozen=True)
class FailOutcome:
    """What fail_task decided: run again at `run_at`, or failed for good with `error`."""

    status: Literal["retrying", "failed"]
    run_at: datetime | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> FailOutcome:
        run_at = doc.get("run_at")
        return cls(
            doc["status"],
            None if run_at is None else datetime.fromisoformat(run_at),
            doc.get("error"),
        )


@dataclass(frozen=True)
class ItemError:
    """A batch's answer for an item it could not do ({"error": {sqlstate, message}}): raised
    for that item's caller only."""

    sqlstate: str | None
    message: str

    @classmethod
    def from_json(cls, answer: Any) -> ItemError | None:
        """The error a batch answered, or None for any other answer."""
        if isinstance(answer, dict) and set(answer) == {"error"}:
            error = answer["error"]
            return cls(error.get("sqlstate"), str(error.get("message")))
        return None

    def exception(self) -> errors.HotMeshError:
        return errors.from_sqlstate(self.sqlstate)(self.message, sqlstate=self.sqlstate)


@dataclass(frozen=True)
class WorkflowOutcome:
    """A row of `workflow_outcome`: where a workflow stands, and how it ended."""

    status: str
    result: Any
    error: dict[str, Any] | None


@dataclass(frozen=True)
class WorkflowWaits:
    """What a workflow waits on (`workflows` view): as text, one JSON object per wait, and
    the open transaction that holds its row, if any."""

    waiting_on: str | None
    waits: list[Wait]
    blocked_by: str | None  # "pid N since T": an open transaction holds the workflow's row


@dataclass(frozen=True)
class EntityChange:
    """A row of `entity_history` (fields in the order `mf.entity.history` documents)."""

    version: int
    thread: str
    seq: int | None
    op: str
    path: list[str] | None
    value: Any
    result: Any
    document: Any
    caller: str | None
    recorded_at: datetime


@dataclass(frozen=True)
class EntityMatch:
    """A row of the entity_find functions."""

    id: str
    context: Any
    status: str


_decode = json.JSONDecoder().decode


def _json_loads(data: str | bytes) -> Any:
    """jsonb as Python, read as text: `json.loads` of bytes first sniffs their encoding,
    which cost more than decoding the usual small values of a claim."""
    return _decode(data if isinstance(data, str) else data.decode())


# The adapters of every pool connection (`connect(context=ADAPTERS)`): psycopg's defaults,
# with jsonb read by _json_loads.
ADAPTERS = AdaptersMap(psycopg.adapters)
set_json_loads(_json_loads, ADAPTERS)


# Each statement names its parameters (`%(task_id)s`); `{}` is the app schema and `{columns}`
# the fields of the dataclass its rows become (_ROWS), so a column list is written only in the
# SQL and in that dataclass.
_STATEMENTS = {
    "start_workflow": "select {}.start_workflow(%(workflow_name)s::text, %(args)s::jsonb,"
    " %(task_queue)s::text, %(workflow_id)s::text, %(entity)s::text, %(options)s::jsonb)",
    "start_workflows": "select {}.start_workflows(%(items)s::jsonb)",
    "workflow_status": "select {}.workflow_status(%(workflow_id)s::text)",
    "workflow_outcome": "select {columns} from {}.workflow_outcome(%(workflow_id)s::text)",
    "get_workflow": "select {}.get_workflow(%(workflow_id)s::text)",
    "claim_tasks": "select {columns} from {}.claim_tasks(%(queues)s::text[], %(worker_id)s::text,"
    " %(max_tasks)s::integer, %(lease)s::interval, %(build_id)s::text, %(prefetch)s::integer,"
    " %(prefetch_lease)s::interval)",
    "start_tasks": "select {}.start_tasks(%(task_ids)s::bigint[], %(tokens)s::uuid[],"
    " %(lease)s::interval)",
    "next_due": "select {}.next_due(%(queues)s::text[])",
    "complete_task": "select {}.complete_task(%(task_id)s::bigint, %(token)s::uuid,"
    " %(result)s::jsonb)",
    "fail_task": "select {}.fail_task(%(task_id)s::bigint, %(token)s::uuid, %(error)s::jsonb)",
    "continue_task": "select {}.continue_task(%(task_id)s::bigint, %(token)s::uuid,"
    " %(args)s::jsonb)",
    "bury_task": "select {}.bury_task(%(task_id)s::bigint, %(token)s::uuid, %(error)s::jsonb)",
    "heartbeat": "select {}.heartbeat(%(task_ids)s::bigint[], %(tokens)s::uuid[],"
    " %(lease)s::interval)",
    "activity_heartbeat": "select {}.activity_heartbeat(%(task_id)s::bigint, %(token)s::uuid,"
    " %(lease)s::interval)",
    "release_tasks": "select {}.release_tasks(%(task_ids)s::bigint[], %(tokens)s::uuid[])",
    "record_step": "select {}.record_step(%(task_id)s::bigint, %(token)s::uuid, %(seq)s::integer,"
    " %(kind)s::text, %(name)s::text, %(input)s::jsonb, %(output)s::jsonb, %(error)s::jsonb,"
    " %(retry_policy)s::jsonb)",
    "schedule_activity": "select {}.schedule_activity(%(task_id)s::bigint, %(token)s::uuid,"
    " %(seq)s::integer, %(name)s::text, %(args)s::jsonb, %(task_queue)s::text,"
    " %(retry_policy)s::jsonb, %(concurrency_key)s::text, %(traceparent)s::text)",
    "schedule_sleep": "select {}.schedule_sleep(%(task_id)s::bigint, %(token)s::uuid,"
    " %(seq)s::integer, %(seconds)s::numeric)",
    # entity
    "entity_step": "select {}.entity_step(%(task_id)s::bigint, %(token)s::uuid, %(seq)s::integer,"
    " %(op)s::text, %(path)s::text, %(value)s::jsonb)",
    "entity_set": "select {}.entity_set(%(workflow_id)s::text, %(value)s::jsonb, %(path)s::text,"
    " %(key)s::text)",
    "entity_merge": "select {}.entity_merge(%(workflow_id)s::text, %(value)s::jsonb,"
    " %(key)s::text)",
    "entity_get": "select {}.entity_get(%(workflow_id)s::text, %(path)s::text)",
    "entity_delete": "select {}.entity_delete(%(workflow_id)s::text, %(path)s::text,"
    " %(key)s::text)",
    "entity_append": "select {}.entity_append(%(workflow_id)s::text, %(path)s::text,"
    " %(value)s::jsonb, %(key)s::text)",
    "entity_prepend": "select {}.entity_prepend(%(workflow_id)s::text, %(path)s::text,"
    " %(value)s::jsonb, %(key)s::text)",
    "entity_remove": "select {}.entity_remove(%(workflow_id)s::text, %(path)s::text,"
    " %(value)s::integer, %(key)s::text)",
    "entity_increment": "select to_jsonb({}.entity_increment(%(workflow_id)s::text,"
    " %(path)s::text, %(value)s::numeric, %(key)s::text))",
    "entity_toggle": "select {}.entity_toggle(%(workflow_id)s::text, %(path)s::text,"
    " %(key)s::text)",
    "entity_set_if_not_exists": "select {}.entity_set_if_not_exists(%(workflow_id)s::text,"
    " %(path)s::text, %(value)s::jsonb, %(key)s::text)",
    "entity_history": "select {columns} from {}.entity_history(%(workflow_id)s::text)",
    "entity_find": "select {columns} from {}.entity_find(%(entity)s::text, %(where)s::jsonb,"
    " %(limit)s::integer, %(offset)s::integer)",
    "entity_find_by_condition": "select {columns} from {}.entity_find_by_condition("
    "%(entity)s::text, %(path)s::text, %(op)s::text, %(value)s::jsonb, %(limit)s::integer,"
    " %(offset)s::integer)",
    "entity_find_by_id": "select {columns} from {}.entity_find_by_id(%(entity)s::text,"
    " %(workflow_id)s::text)",
    "entity_create_index": "select {}.entity_create_index(%(entity)s::text, %(path)s::text,"
    " %(kind)s::text)",
    # signals, hooks, children, cancellation, search attributes, events
    "search_step": "select {}.search_step(%(task_id)s::bigint, %(token)s::uuid, %(seq)s::integer,"
    " %(op)s::text, %(args)s::jsonb)",
    "emit_step": "select {}.emit_step(%(task_id)s::bigint, %(token)s::uuid, %(seq)s::integer,"
    " %(events)s::jsonb)",
    "signal": "select {}.signal(%(signal_id)s::text, %(payload)s::jsonb, %(workflow_id)s::text,"
    " %(idempotency_key)s::text)",
    "hook": "select {}.hook(%(workflow_id)s::text, %(workflow_name)s::text, %(args)s::jsonb,"
    " %(task_queue)s::text, %(signal_id)s::text, %(options)s::jsonb)",
    "cancel_workflow": "select {}.cancel_workflow(%(workflow_id)s::text, %(reason)s::text,"
    " %(descend)s::boolean, %(ignore_finished)s::boolean)",
    "wait_signal": "select {}.wait_signal(%(task_id)s::bigint, %(token)s::uuid, %(seq)s::integer,"
    " %(signal_id)s::text, %(limit)s::numeric)",
    "ask_human": "select {}.ask_human(%(task_id)s::bigint, %(token)s::uuid, %(seq)s::integer,"
    " %(signal_id)s::text, %(request)s::jsonb)",
    "send_signal": "select {}.send_signal(%(task_id)s::bigint, %(token)s::uuid, %(seq)s::integer,"
    " %(signal_id)s::text, %(payload)s::jsonb, %(workflow_id)s::text)",
    "start_child": "select {}.start_child(%(task_id)s::bigint, %(token)s::uuid, %(seq)s::integer,"
    " %(workflow_name)s::text, %(args)s::jsonb, %(task_queue)s::text, %(workflow_id)s::text,"
    " %(entity)s::text, %(options)s::jsonb, %(wait)s::boolean)",
    "start_hook": "select {}.start_hook(%(task_id)s::bigint, %(token)s::uuid, %(seq)s::integer,"
    " %(workflow_name)s::text, %(args)s::jsonb, %(task_queue)s::text, %(workflow_id)s::text,"
    " %(signal_id)s::text, %(options)s::jsonb)",
    "record_patch": "select {}.record_patch(%(task_id)s::bigint, %(token)s::uuid,"
    " %(seq)s::integer, %(patch_id)s::text, %(deprecated)s::boolean)",
    "record_steps": "select {}.record_steps(%(items)s::jsonb)",
    "complete_tasks": "select {}.complete_tasks(%(items)s::jsonb)",
    "suspend_tasks": "select {}.suspend_tasks(%(items)s::jsonb)",
    "cancel_step": "select {}.cancel_step(%(task_id)s::bigint, %(token)s::uuid, %(seq)s::integer,"
    " %(workflow_id)s::text, %(reason)s::text, %(descend)s::boolean)",
    # -- operations: the views and functions of sql/70_views.sql and sql/71_retention.sql
    "list_workflows": "select {columns} from {0}.workflows"
    " where (%(status)s::text is null or status = %(status)s::text)"
    " and (%(entity)s::text is null or entity = %(entity)s::text)"
    " and (%(task_queue)s::text is null or task_queue = %(task_queue)s::text)"
    " and (%(search)s::jsonb is null"
    " or id in (select j.id from {0}.jobs as j where j.search @> %(search)s::jsonb))"
    " order by created_at desc, id limit %(limit)s::integer",
    "workflow_waits": "select {columns} from {}.workflows where id = %(workflow_id)s::text",
    "workflow_history": "select {columns} from {}.workflow_history(%(workflow_id)s::text)",
    "queue_backlog": "select {columns} from {}.queue_backlog order by task_queue, kind",
    "metrics": "select {columns} from {}.metrics order by metric, labels::text",
    "export_workflow": "select {}.export_workflow(%(workflow_id)s::text)",
    "export_workflows": "select {}.export_workflows(%(workflow_names)s::text[],"
    " %(statuses)s::text[], %(since)s::timestamptz, %(limit)s::integer)",
    "retry_workflow": "select {}.retry_workflow(%(workflow_id)s::text)",
    "prune": "call {}.prune(%(older_than)s::interval, %(batch)s::integer, %(dry_run)s::boolean,"
    " null)",
    "set_setting": "select {}.set_setting(%(key)s::text, %(value)s::jsonb)",
    # schedules (sql/48_schedules.sql)
    "create_schedule": "select {}.create_schedule(%(schedule_id)s::text, %(spec)s::text,"
    " %(workflow_name)s::text, %(args)s::jsonb, %(task_queue)s::text, %(options)s::jsonb)",
    "update_schedule": "select {}.update_schedule(%(schedule_id)s::text, %(spec)s::text,"
    " %(workflow_name)s::text, %(args)s::jsonb, %(task_queue)s::text, %(options)s::jsonb)",
    "pause_schedule": "select {}.pause_schedule(%(schedule_id)s::text)",
    "resume_schedule": "select {}.resume_schedule(%(schedule_id)s::text)",
    "trigger_schedule": "select {}.trigger_schedule(%(schedule_id)s::text)",
    "delete_schedule": "select {}.delete_schedule(%(schedule_id)s::text)",
    # human tasks (sql/49_human_tasks.sql)
    "list_human_tasks": "select {columns} from {}.list_human_tasks(%(role)s::text,"
    " %(assignee)s::text, %(status)s::text, %(type)s::text, %(metadata)s::jsonb,"
    " %(limit)s::integer, %(after)s::bigint)",
    "get_human_task": "select {columns} from {}.get_human_task(%(id)s::bigint)",
    "claim_human_task": "select {columns} from {}.claim_human_task(%(id)s::bigint, %(who)s::text)",
    "claim_next_human_task": "select {columns} from {}.claim_next_human_task(%(role)s::text,"
    " %(who)s::text)",
    "release_human_task": "select {columns} from {}.release_human_task(%(id)s::bigint,"
    " %(who)s::text)",
    "reassign_human_task": "select {columns} from {}.reassign_human_task(%(id)s::bigint,"
    " %(who)s::text, %(assignee)s::text, %(role)s::text)",
    "comment_human_task": "select {columns} from {}.comment_human_task(%(id)s::bigint,"
    " %(who)s::text, %(text)s::text)",
    "resolve_human_task": "select {columns} from {}.resolve_human_task(%(id)s::bigint,"
    " %(who)s::text, %(answer)s::jsonb)",
    "list_schedules": "select {columns} from {}.schedule_fires"
    " where %(schedule_id)s::text is null or id = %(schedule_id)s::text order by id",
    # flow control: sql/25_limits.sql
    "set_queue_limits": "select {}.set_queue_limits(%(task_queue)s::text,"
    " max_running => %(max_running)s::integer, rate => %(rate)s::integer,"
    " per => %(per)s::interval, key_max_running => %(key_max_running)s::integer,"
    " key_rate => %(key_rate)s::integer, key_per => %(key_per)s::interval)",
    "get_queue_limits": "select {columns} from {}.get_queue_limits()",
    "queue_keys": "select {columns} from {}.queue_keys(%(task_queue)s::text, %(limit)s::integer)",
    "get_setting": "select {}.get_setting(%(key)s::text)",
}

# The statements whose rows become dataclasses, and which.
_ROWS: dict[str, type[Any]] = {
    "workflow_outcome": WorkflowOutcome,
    "claim_tasks": Claimed,
    "entity_history": EntityChange,
    "entity_find": EntityMatch,
    "entity_find_by_condition": EntityMatch,
    "entity_find_by_id": EntityMatch,
    "list_workflows": WorkflowSummary,
    "workflow_waits": WorkflowWaits,
    "workflow_history": HistoryEntry,
    "queue_backlog": QueueBacklog,
    "metrics": MetricSample,
    "list_schedules": Schedule,
    "list_human_tasks": HumanTask,
    "get_human_task": HumanTask,
    "claim_human_task": HumanTask,
    "claim_next_human_task": HumanTask,
    "release_human_task": HumanTask,
    "reassign_human_task": HumanTask,
    "comment_human_task": HumanTask,
    "resolve_human_task": HumanTask,
    "get_queue_limits": QueueLimits,
    "queue_keys": QueueKey,
}


def _statement(text: str, schema: sql.Identifier, row: type[Any] | None) -> sql.Composed:
    if row is None:
        return sql.SQL(text).format(schema)
    columns = sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(row))
    return sql.SQL(text).format(schema, columns=columns)


def _json(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def _next_run(answer: dict[str, Any]) -> datetime | None:
    """suspend_tasks' answer for an item: when its thread runs next."""
    value = answer.get("next_run")
    return None if value is None else datetime.fromisoformat(value)


def _held(task: Claimed, seq: int) -> dict[str, object]:
    """The parameters every durable call of an activation starts with: its task, the lease
    token that proves the task is still held (fencing), and the call's step number."""
    return {"task_id": task.task_id, "token": task.lease_token, "seq": seq}


def _start(
    workflow_name: str,
    args: list[Any],
    task_queue: str | None,
    workflow_id: str | None,
    entity: str | None,
    options: dict[str, Any],
) -> dict[str, object]:
    """The parameters of a new workflow, as start_workflow and start_child take them."""
    return {
        "workflow_name": workflow_name,
        "args": Jsonb(args),
        "task_queue": task_queue,
        "workflow_id": workflow_id,
        "entity": entity,
        "options": Jsonb(options),
    }


Params = Mapping[str, object]
R = TypeVar("R")
Item = TypeVar("Item")


class StartItem(TypedDict):
    """An item of start_workflows (the parameters of start_workflow)."""

    workflow_name: str
    args: list[Any]
    task_queue: str | None
    workflow_id: str | None
    entity: str | None
    options: dict[str, Any]


class _Completion(TypedDict):
    """An item of complete_tasks (the arguments of complete_task)."""

    task_id: int
    token: str
    result: Any


class ActivityCall(TypedDict):
    """An activity call an activation sends through its queue with its suspension (the
    arguments of schedule_activity)."""

    seq: int
    name: str
    args: list[Any]
    task_queue: str
    retry_policy: dict[str, Any] | None
    concurrency_key: str | None
    traceparent: str | None  # the scheduling activation's trace context (docs/tracing.md)


class _Suspension(TypedDict):
    """An item of suspend_tasks."""

    task_id: int
    token: str
    schedules: list[ActivityCall]


class _StepOutcome(TypedDict):
    """An item of record_steps (the arguments of record_step)."""

    task_id: int
    token: str
    seq: int
    kind: str
    name: str
    input: Any
    output: Any
    error: dict[str, Any] | None
    retry_policy: dict[str, Any] | None


class _GroupCommit(Generic[Item, R]):
    """Coalesces concurrent calls of one kind into one transaction.

    The first call is sent at once; calls that arrive while a batch is in flight wait for it
    and go together in the next one. An idle worker pays no delay, a busy one pays one commit
    and one round trip per batch instead of per call. Items a batch answers with
    {"error": ...} raise that error for their caller only; if the batch itself fails, its
    items are retried one by one so each caller gets its own outcome. At most `limit` items
    go in one transaction (a few milliseconds of row locks at 256; bigger batches of a
    draining queue measured faster up to there, `hotmesh bench` queue).
    """

    def __init__(
        self,
        single: Callable[[Item], Awaitable[R]],
        many: Callable[[list[Item]], Awaitable[list[R | ItemError]]],
        limit: int = 256,
    ) -> None:
        self._single = single
        self._many = many
        self._limit = limit
        self._waiting: list[tuple[Item, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> R:
        if _patient.get():  # a call that met a held lock waits alone, never in a batch
            return await self._single(item)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        try:
            return await future
        except (psycopg.Error, errors.HotMeshError) as error:
            if not lock_busy(error):
                raise
        # It met a lock another transaction holds: once more on its own, in the patient lane
        # if a lane connection is free (Database.patient), so that the batches behind it
        # never wait for that transaction.
        token = _patient.set(_IF_FREE)
        try:
            return await self._single(item)
        finally:
            _patient.reset(token)

    async def _flush(self) -> None:
        _flushing.set(True)  # this task's calls never wait past the quick lock_timeout
        while self._waiting:
            batch = self._waiting[: self._limit]
            del self._waiting[: self._limit]
            if len(batch) == 1:
                await self._one(*batch[0])
                continue
            try:
                results = await self._many([item for item, _ in batch])
            except (psycopg.Error, errors.HotMeshError):
                await asyncio.gather(*(self._one(item, future) for item, future in batch))
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, ItemError):
                    future.set_exception(result.exception())
                else:
                    future.set_result(result)

    async def _one(self, item: Item, future: asyncio.Future[R]) -> None:
        try:
            result = await self._single(item)
        except BaseException as error:  # handed to the waiting caller, then re-raised if fatal
            if not future.done():
                future.set_exception(error)
            if not isinstance(error, Exception):
                raise
        else:
            if not future.done():
                future.set_result(result)


def _ended_by_server(conn: psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle pooled connection is gone, without a round trip: it receives nothing
    from the server unless the server ended it (restart, pg_terminate_backend, idle timeout: a
    FATAL message, then EOF), so a readable socket means it is gone."""
    if conn.closed or conn.broken:
        return True
    poller = select.poll()  # not select.select: it fails for descriptors >= 1024
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


_CONFLICT_RETRIES = 4
# A call in the patient lane (Database.patient): it may wait LOCK_TIMEOUT_MS for a lock, and
# only a quarter of the pool's connections at once may be in that lane. _IF_FREE: only if a
# lane connection is free at once (a call that holds a worker slot meanwhile); _WAIT: it waits
# up to LOCK_TIMEOUT_MS for one.
_OUT, _IF_FREE, _WAIT = 0, 1, 2
_patient: contextvars.ContextVar[int] = contextvars.ContextVar("hotmesh_patient", default=_OUT)
# Set in a group commit's flusher: a lock wait there would hold up every batch behind it.
_flushing: contextvars.ContextVar[bool] = contextvars.ContextVar("hotmesh_flush", default=False)
# The calls that only read, and how long apart they are sent again after a lost connection.
_READS = frozenset(
    {
        "list_human_tasks",
        "get_human_task",
        "workflow_status",
        "workflow_outcome",
        "get_workflow",
        "next_due",
        "entity_get",
        "entity_history",
        "entity_find",
        "entity_find_by_condition",
        "entity_find_by_id",
        "list_workflows",
        "workflow_waits",
        "workflow_history",
        "queue_backlog",
        "metrics",
        "export_workflow",
        "export_workflows",
        "get_queue_limits",
        "queue_keys",
    }
)
_RECONNECT_WAITS = (0.1, 0.2, 0.4, 0.8, 1.6, 2.0)

# The calls a worker makes while it runs tasks. None of them may wait long for a lock an
# application's open transaction holds: every call first runs with QUICK_LOCK_TIMEOUT_MS, and
# one that meets it is sent once more in the patient lane (LOCK_TIMEOUT_MS, a quarter of the
# pool at most); a worker call that meets that too (55P03) raises, so the worker gives its task
# back or retries the call later (again in the lane) instead of filling a slot or a connection
# (docs/reliability.md).
WORKER_CALLS = frozenset(
    {
        "claim_tasks",
        "next_due",
        "complete_task",
        "complete_tasks",
        "fail_task",
        "suspend_tasks",
        "continue_task",
        "bury_task",
        "heartbeat",
        "activity_heartbeat",
        "release_tasks",
        "start_tasks",
        "record_step",
        "record_steps",
        "schedule_activity",
        "schedule_sleep",
        "entity_step",
        "search_step",
        "emit_step",
        "wait_signal",
        "ask_human",
        "send_signal",
        "start_child",
        "start_hook",
        "cancel_step",
        "record_patch",
    }
)
QUICK_LOCK_TIMEOUT_MS = 100  # every call's first try: longer than a worker's own transactions
LOCK_TIMEOUT_MS = 1000  # a call in the patient lane
# How long a held claim's transaction may sit idle (its activation running in memory) before
# the server ends the session: claim and outcome roll back, the task is claimable again and
# the workflow replays. What bounds a held claim, whatever the workflow code does.
HELD_IDLE_MS = 1000
# An application's call (signal, entity_merge, ...) that meets the lock_timeout was rolled
# back whole (one autocommit statement) and is sent again: a caller still waits for a caller,
# as it would without the timeout, but in rounds of at most this long apart.
_LOCK_RETRY_MAX = 1.0


def lock_busy(error: BaseException) -> bool:
    """Whether a call failed because a lock stayed held past lock_timeout (55P03), raised by
    Postgres or answered for one item of a batch."""
    return isinstance(error, (psycopg.Error, errors.HotMeshError)) and (
        getattr(error, "sqlstate", None) == "55P03"
    )


def _connection_lost(error: psycopg.OperationalError) -> bool:
    """The connection broke or the server is going down or starting up (no SQLSTATE, class
    08, or 57P01-57P03), not a statement that failed (a timeout's 57014 is not retried)."""
    state = error.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


class Claims(list[Claimed]):
    """What claim_tasks took, and with `hold` the transaction it took them in, still open."""

    def __init__(self, tasks: Iterable[Claimed] = (), held: HeldClaim | None = None) -> None:
        super().__init__(tasks)
        self.held = held


_THEN_COMMIT = (sql.SQL(""), sql.SQL("; commit"))


class HeldClaim:
    """A claim whose transaction is still open (claim_tasks with `hold`). A worker that claimed
    nothing but one activation, which its sticky cache resumes in memory, sends that
    activation's completion or suspension in the same transaction: claim and outcome commit
    together, one commit and one round trip fewer on a woken workflow's path
    (docs/performance.md). Anything else ends it first (`end`). Until then the task's row and
    its workflow's are locked by it; if the outcome fails, both roll back, the task is ready
    again at once and the caller's run is dropped (LeaseLost). The server ends a transaction
    left idle longer than HELD_IDLE_MS the same way (idle_in_transaction_session_timeout), so
    no workflow code keeps the rows locked longer."""

    def __init__(
        self, db: Database, conn: psycopg.AsyncConnection[Any], stack: contextlib.AsyncExitStack
    ) -> None:
        self._db = db
        self._conn = conn
        self._stack = stack  # gives the connection back to the pool
        self._ending = asyncio.Lock()
        self.open = True
        self.ended = asyncio.Event()

    async def end(self, commit: bool = True) -> None:
        """Commit (or roll back) the claim alone, if it is still open."""
        async with self._ending:
            if self.open:
                self.open = False
                try:
                    async with self._stack:
                        if not commit:
                            await self._conn.rollback()
                            return
                        try:
                            await self._conn.commit()
                        except psycopg.Error as error:
                            # The server ended it (held past HELD_IDLE_MS), or the connection
                            # broke: the claim rolled back, and its task is claimable again.
                            raise errors.LeaseLost(
                                f"the claim's transaction ended before its commit"
                                f" ({first_line(error)}); its tasks are claimable again"
                            ) from error
                finally:
                    self.ended.set()

    async def finish(self, name: str, item: Mapping[str, Any]) -> Any:
        """`name` (complete_tasks, suspend_tasks) for one item, then the commit: its answer
        (a one-item list), or None when the claim had already been committed alone."""
        async with self._ending:
            if not self.open:
                return None
            self.open = False
            try:
                async with self._stack:
                    try:
                        # The outcome and the commit in one round trip.
                        rows = await self._db._fetch_on(
                            self._conn, name, {"items": Jsonb([item])}, _THEN_COMMIT
                        )
                    except (psycopg.Error, errors.HotMeshError) as error:
                        with contextlib.suppress(psycopg.Error):
                            await self._conn.rollback()
                        raise errors.LeaseLost(
                            f"task {item['task_id']}: its claim was rolled back with its outcome"
                            f" ({first_line(error)}); it is claimable again"
                        ) from error
            finally:
                self.ended.set()
            answers: list[Any] = rows[0][0]
            return answers


class Database:
    """The stored functions of one app schema, called through a connection pool."""

    def __init__(self, pool: AsyncConnectionPool, app_id: str) -> None:
        self.pool = pool
        self.app_id = app_id
        schema = sql.Identifier(app_id)
        self._sql = {
            name: _statement(text, schema, _ROWS.get(name)) for name, text in _STATEMENTS.items()
        }
        self._steps: _GroupCommit[_StepOutcome, RecordedStep] = _GroupCommit(
            self._record_one, self._record_many
        )
        self._completions: _GroupCommit[_Completion, None] = _GroupCommit(
            self._complete_one, self._complete_many
        )
        self._suspensions: _GroupCommit[_Suspension, datetime | None] = _GroupCommit(
            self._suspend_one, self._suspend_many
        )
        # The lock_timeout each pool connection runs with (set when it changes, not per call).
        self._bounded: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], int] = (
            weakref.WeakKeyDictionary()
        )
        # The patient lane: how many connections may wait LOCK_TIMEOUT_MS for a lock at once.
        self.lane = max(1, pool.max_size // 4)
        self._lane = asyncio.Semaphore(self.lane)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection the server has not ended. A dead one (the server restarted, an
        operator terminated it) is closed and handed back, so the pool replaces it, and the
        next one is taken at once: after a restart the first call does not fail on a stale
        connection. (The pool's own `check` backs off 1, 2, 4, ... s per dead connection, so
        with a pool full of them a call waited out its whole timeout.) In the patient lane
        (`patient`) it is one of the lane's few, and may wait LOCK_TIMEOUT_MS for a lock;
        otherwise QUICK_LOCK_TIMEOUT_MS: no number of held rows takes more of the pool."""
        patient = _patient.get()
        if patient == _IF_FREE and self._lane.locked():
            raise psycopg.errors.LockNotAvailable(
                f"the patient lane's {self.lane} connections all wait for held locks"
            )
        if patient:
            try:
                await asyncio.wait_for(self._lane.acquire(), LOCK_TIMEOUT_MS / 1000)
            except TimeoutError:
                # As if it had waited for the lock itself: handled as a lock timeout.
                raise psycopg.errors.LockNotAvailable(
                    f"the patient lane ({self.lane} connections) stayed full for"
                    f" {LOCK_TIMEOUT_MS} ms: other calls wait for held locks"
                ) from None
        try:
            conn = await self.pool.getconn()
            for _ in range(2 * self.pool.max_size):
                if not _ended_by_server(conn):
                    break
                await conn.close()
                await self.pool.putconn(conn)
                conn = await self.pool.getconn()
            try:
                timeout = LOCK_TIMEOUT_MS if patient else QUICK_LOCK_TIMEOUT_MS
                if self._bounded.get(conn) != timeout:
                    await conn.execute(
                        sql.SQL("set lock_timeout = {}").format(sql.Literal(timeout))
                    )
                    self._bounded[conn] = timeout
                yield conn
            finally:
                await self.pool.putconn(conn)
        finally:
            if patient:
                self._lane.release()

    @contextlib.contextmanager
    def patient(self) -> Iterator[None]:
        """The calls in this block run in the patient lane: a call that met a lock another
        transaction holds waits for it there, up to LOCK_TIMEOUT_MS, one of `lane` at most."""
        token = _patient.set(_WAIT)
        try:
            yield
        finally:
            _patient.reset(token)

    async def _fetch(self, name: str, params: Params) -> list[Any]:
        # Each call is one autocommit statement, so one that lost a deadlock or a
        # serialization conflict was rolled back whole and is safe to send again. A read whose
        # connection was lost (a server restart, a terminated backend) is sent again on a
        # fresh one, for about 5 s: reading twice changes nothing. A write is not: whether it
        # committed before the connection went is unknown, so its caller decides.
        # One that met a lock past QUICK_LOCK_TIMEOUT_MS is sent again in the patient lane:
        # a worker's once, if a lane connection is free at once (then it raises: the worker
        # frees its slot), an application's until it succeeds (a caller waits for a caller, in
        # rounds). In a group commit's flusher it raises at once: its caller sends it again
        # alone (_GroupCommit.submit), so no batch waits behind it.
        conflicts = 0
        busy = 0.0
        lane = _patient.get()
        waits = iter(_RECONNECT_WAITS if name in _READS else ())
        while True:
            try:
                return await self._fetch_once(name, params, lane)
            except psycopg.errors.LockNotAvailable:
                if _flushing.get() or (lane and name in WORKER_CALLS):
                    raise
                if lane:
                    busy = min(max(busy * 2, 0.05), _LOCK_RETRY_MAX)
                    await asyncio.sleep(busy)
                lane = _IF_FREE if name in WORKER_CALLS else _WAIT
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                conflicts += 1
                if conflicts == _CONFLICT_RETRIES:
                    raise
                await asyncio.sleep(0.01 * 2 ** (conflicts - 1))
            except psycopg.OperationalError as error:
                wait = next(waits, None) if _connection_lost(error) else None
                if wait is None:
                    raise
                await asyncio.sleep(wait)

    async def _fetch_once(self, name: str, params: Params, lane: int = _OUT) -> list[Any]:
        """The statement's rows: its dataclass (_ROWS) or tuples; `lane`: see _patient."""
        token = _patient.set(lane)
        try:
            async with self._connection() as conn:
                return await self._fetch_on(conn, name, params)
        finally:
            _patient.reset(token)

    async def _fetch_on(
        self,
        conn: psycopg.AsyncConnection[Any],
        name: str,
        params: Params,
        around: tuple[sql.Composable, sql.Composable] | None = None,
    ) -> list[Any]:
        """The statement's rows on `conn`, its errors mapped as every call's are. With
        `around`, the statement goes between those two (a held claim's `begin`, an outcome's
        `commit`) in one round trip: the simple protocol, the parameters bound client-side."""
        row = _ROWS.get(name)
        try:
            # A row class builds itself from the columns: from_row where it converts some.
            factory = kwargs_row(getattr(row, "from_row", row)) if row else tuple_row
            if around is None:
                cur: psycopg.AsyncCursor[Any] = conn.cursor(row_factory=factory)
                query: sql.Composed = self._sql[name]
            else:
                cur = psycopg.AsyncClientCursor(conn, row_factory=factory)
                query = sql.Composed([around[0], self._sql[name], around[1]])
            try:
                await cur.execute(query, params)
            except (TypeError, ValueError, RecursionError) as error:
                # An argument psycopg cannot send (a str with a lone surrogate, an int of
                # thousands of digits, JSON nested too deeply or not JSON at all): nothing
                # was sent.
                message = f"{name}: an argument cannot be sent to Postgres: {error}"
                raise errors.InvalidArgument(message) from error
            while cur.pgresult is not None and cur.pgresult.status != pq.ExecStatus.TUPLES_OK:
                if not cur.nextset():  # the rows are the statement's, between the others
                    break
            return await cur.fetchall()
        except psycopg.Error as error:
            if error.sqlstate and (error.sqlstate.startswith("HM") or error.sqlstate[:2] == "22"):
                raise errors.from_database(error) from error
            if isinstance(error, psycopg.errors.WithCheckOptionViolation):
                # A per-shard engine's jobs view refuses a job of another shard group: a bad
                # id, which fails only the call that named it (a child's start, in its parent).
                raise errors.InvalidArgument(
                    f"{name}: a workflow id outside shard group {self.app_id}: an app "
                    "distributed by job_id starts and reaches only workflows of the caller's "
                    "shard group from there (a child or a signal to a workflow of another "
                    "group is not supported: docs/citus-row-distribution.md)",
                    sqlstate=error.sqlstate,
                ) from error
            if error.sqlstate is None and isinstance(error, psycopg.DataError):
                # Refused before it was sent: a NUL character in a text argument.
                raise errors.InvalidArgument(f"{name}: {error}") from error
            raise

    async def _rows(self, name: str, row: type[R], params: Params) -> list[R]:
        """The rows of a statement of _ROWS, as `row` (the class _ROWS names for it)."""
        assert _ROWS[name] is row  # noqa: S101 - a programming error, caught by every test
        return await self._fetch(name, params)

    async def _value(self, name: str, params: Params) -> Any:
        rows = await self._fetch(name, params)
        return rows[0][0] if rows else None

    async def _step(self, name: str, params: Params) -> RecordedStep:
        """A durable call of an activation: the step it recorded (or found recorded)."""
        return RecordedStep.from_json(await self._value(name, params))

    # -- workflows -----------------------------------------------------------------------
    async def start_workflow(
        self,
        workflow_name: str,
        args: list[Any],
        task_queue: str | None,
        workflow_id: str | None,
        entity: str | None,
        options: dict[str, Any],
    ) -> str:
        params = _start(workflow_name, args, task_queue, workflow_id, entity, options)
        return str(await self._value("start_workflow", params))

    async def start_workflows(
        self, items: list[StartItem], conn: psycopg.AsyncConnection[Any] | None = None
    ) -> list[str]:
        """Many starts in one call, all or nothing; their workflow ids in order. On `conn`
        when given (in its caller's transaction), else on a pooled connection."""
        params = {"items": Jsonb(items)}
        if conn is None:
            ids: list[str] = await self._value("start_workflows", params)
            return ids
        return list((await self._fetch_on(conn, "start_workflows", params))[0][0])

    async def workflow_status(self, workflow_id: str) -> str:
        return str(await self._value("workflow_status", {"workflow_id": workflow_id}))

    async def workflow_outcome(self, workflow_id: str) -> WorkflowOutcome:
        params = {"workflow_id": workflow_id}
        return (await self._rows("workflow_outcome", WorkflowOutcome, params))[0]

    async def get_workflow(self, workflow_id: str) -> WorkflowDocument:
        doc: WorkflowDocument = await self._value("get_workflow", {"workflow_id": workflow_id})
        return doc

    # -- tasks ---------------------------------------------------------------------------
    async def claim_tasks(
        self,
        queues: list[str],
        worker_id: str,
        max_tasks: int,
        lease: timedelta,
        build_id: str | None = None,
        prefetch: int = 0,
        prefetch_lease: timedelta = timedelta(seconds=5),
        hold: bool = False,
    ) -> Claims:
        """Up to `max_tasks` tasks started now, then up to `prefetch` more claimed ahead (not
        started, on the short `prefetch_lease`): the rows come back in that order. With
        `hold`, the claim's transaction is left open (`Claims.held`) for the caller to end."""
        params = {
            "queues": queues,
            "worker_id": worker_id,
            "max_tasks": max_tasks,
            "lease": lease,
            "build_id": build_id,
            "prefetch": prefetch,
            "prefetch_lease": prefetch_lease,
        }
        if not hold:
            return Claims(await self._rows("claim_tasks", Claimed, params))
        stack = contextlib.AsyncExitStack()
        conn = await stack.enter_async_context(self._connection())
        held = HeldClaim(self, conn, stack)
        begin = sql.SQL("begin; set local idle_in_transaction_session_timeout = {}; ")
        try:
            around = (begin.format(sql.Literal(HELD_IDLE_MS)), sql.SQL(""))
            return Claims(await self._fetch_on(conn, "claim_tasks", params, around), held)
        except BaseException:
            await held.end(commit=False)
            raise

    async def start_tasks(self, tasks: Sequence[Claimed], lease: timedelta) -> set[int]:
        """Start prefetched tasks (their run deadline begins, their lease becomes `lease`);
        the ids of those still held."""
        params = {
            "task_ids": [t.task_id for t in tasks],
            "tokens": [t.lease_token for t in tasks],
            "lease": lease,
        }
        return set(await self._value("start_tasks", params) or ())

    async def next_due(self, queues: list[str]) -> datetime | None:
        value = await self._value("next_due", {"queues": queues})
        return value if isinstance(value, datetime) else None

    async def complete_task(
        self, task: Claimed, result: Any, held: HeldClaim | None = None
    ) -> None:
        """Complete a task; concurrent completions share one transaction (group commit), or
        with `held` open, the completion commits with the claim."""
        item: _Completion = {
            "task_id": task.task_id,
            "token": str(task.lease_token),
            "result": result,
        }
        answers = None if held is None else await held.finish("complete_tasks", item)
        if answers is None:
            await self._completions.submit(item)
        elif (error := ItemError.from_json(answers[0])) is not None:
            raise error.exception()  # the claim committed without it (55P03: sent again)

    async def _complete_one(self, item: _Completion) -> None:
        await self._fetch("complete_task", {**item, "result": Jsonb(item["result"])})

    async def _complete_many(self, items: list[_Completion]) -> list[ItemError | None]:
        answers = await self._value("complete_tasks", {"items": Jsonb(items)})
        return [ItemError.from_json(answer) for answer in answers]

    async def fail_task(self, task: Claimed, error: dict[str, Any]) -> FailOutcome:
        params = {"task_id": task.task_id, "token": task.lease_token, "error": Jsonb(error)}
        return FailOutcome.from_json(await self._value("fail_task", params))

    async def suspend_task(
        self, task: Claimed, schedules: Sequence[ActivityCall] = (), held: HeldClaim | None = None
    ) -> datetime | None:
        """Suspend an activation, first sending the activity calls it made through their
        queues; concurrent suspensions share one transaction (group commit), or with `held`
        open, the suspension commits with the claim. When the thread runs next: None when
        something it awaits is recorded."""
        item: _Suspension = {
            "task_id": task.task_id,
            "token": str(task.lease_token),
            "schedules": [*schedules],
        }
        answers = None if held is None else await held.finish("suspend_tasks", item)
        if answers is None:
            return await self._suspensions.submit(item)
        if (error := ItemError.from_json(answers[0])) is not None:
            raise error.exception()
        return _next_run(answers[0])

    async def _suspend_one(self, item: _Suspension) -> datetime | None:
        answer = (await self._value("suspend_tasks", {"items": Jsonb([item])}))[0]
        error = ItemError.from_json(answer)
        if error is not None:
            raise error.exception()
        return _next_run(answer)

    async def _suspend_many(self, items: list[_Suspension]) -> list[datetime | ItemError | None]:
        answers = await self._value("suspend_tasks", {"items": Jsonb(items)})
        return [ItemError.from_json(a) or _next_run(a) for a in answers]

    async def continue_task(self, task: Claimed, args: list[Any]) -> int | None:
        """End the run and start the next one with `args`: the new run's number, or None
        when something arrived that the activation has not seen (it must replay first)."""
        params = {"task_id": task.task_id, "token": task.lease_token, "args": Jsonb(args)}
        value = await self._value("continue_task", params)
        return value if isinstance(value, int) else None

    async def bury_task(self, task: Claimed, error: dict[str, Any]) -> None:
        params = {"task_id": task.task_id, "token": task.lease_token, "error": Jsonb(error)}
        await self._fetch("bury_task", params)

    async def heartbeat(self, tasks: Sequence[Claimed], lease: timedelta) -> set[int]:
        params = {
            "task_ids": [t.task_id for t in tasks],
            "tokens": [t.lease_token for t in tasks],
            "lease": lease,
        }
        return set(await self._value("heartbeat", params) or ())

    async def activity_heartbeat(self, task: Claimed, lease: timedelta) -> bool:
        """An activity's own heartbeat: extends its lease and restarts its heartbeat_timeout;
        False when the task is no longer held (it timed out, or another worker took it)."""
        params = {"task_id": task.task_id, "token": task.lease_token, "lease": lease}
        return bool(await self._value("activity_heartbeat", params))

    async def release_tasks(self, tasks: Sequence[Claimed]) -> int:
        params = {"task_ids": [t.task_id for t in tasks], "tokens": [t.lease_token for t in tasks]}
        return int(await self._value("release_tasks", params) or 0)

    # -- steps ---------------------------------------------------------------------------
    async def record_step(
        self,
        task: Claimed,
        seq: int,
        kind: str,
        name: str,
        input: Any,
        output: Any,
        error: dict[str, Any] | None = None,
        retry_policy: dict[str, Any] | None = None,
    ) -> RecordedStep:
        """Record an inline call's outcome; concurrent records share one transaction."""
        item: _StepOutcome = {
            "task_id": task.task_id,
            "token": str(task.lease_token),
            "seq": seq,
            "kind": kind,
            "name": name,
            "input": input,
            "output": output if error is None else None,
            "error": error,
            "retry_policy": retry_policy,
        }
        return await self._steps.submit(item)

    async def _record_one(self, item: _StepOutcome) -> RecordedStep:
        params = {
            **item,
            "input": _json(item["input"]),
            "output": _json(item["output"]),
            "error": _json(item["error"]),
            "retry_policy": _json(item["retry_policy"]),
        }
        return await self._step("record_step", params)

    async def _record_many(self, items: list[_StepOutcome]) -> list[RecordedStep | ItemError]:
        answers = await self._value("record_steps", {"items": Jsonb(items)})
        return [ItemError.from_json(a) or RecordedStep.from_json(a) for a in answers]

    async def schedule_activity(
        self,
        task: Claimed,
        seq: int,
        name: str,
        args: list[Any],
        task_queue: str,
        retry_policy: dict[str, Any] | None,
        concurrency_key: str | None = None,
        traceparent: str | None = None,
    ) -> RecordedStep:
        params = {
            **_held(task, seq),
            "name": name,
            "args": Jsonb(args),
            "task_queue": task_queue,
            "retry_policy": _json(retry_policy),
            "concurrency_key": concurrency_key,
            "traceparent": traceparent,
        }
        return await self._step("schedule_activity", params)

    async def schedule_sleep(self, task: Claimed, seq: int, seconds: float) -> RecordedStep:
        params = {**_held(task, seq), "seconds": seconds}
        return await self._step("schedule_sleep", params)

    # -- signals, hooks, children, cancellation ------------------------------------------
    async def signal(
        self, signal_id: str, payload: Any, workflow_id: str | None, idempotency_key: str | None
    ) -> SignalOutcome:
        params = {
            "signal_id": signal_id,
            "payload": Jsonb(payload),
            "workflow_id": workflow_id,
            "idempotency_key": idempotency_key,
        }
        outcome: SignalOutcome = await self._value("signal", params)
        return outcome

    async def hook(
        self,
        workflow_id: str,
        workflow_name: str,
        args: list[Any],
        task_queue: str | None,
        signal_id: str | None,
        options: dict[str, Any] | None = None,
    ) -> str:
        params = {
            "workflow_id": workflow_id,
            "workflow_name": workflow_name,
            "args": Jsonb(args),
            "task_queue": task_queue,
            "signal_id": signal_id,
            "options": None if options is None else Jsonb(options),
        }
        return str(await self._value("hook", params))

    async def cancel_workflow(
        self, workflow_id: str, reason: str | None, descend: bool, ignore_finished: bool
    ) -> list[str]:
        params = {
            "workflow_id": workflow_id,
            "reason": reason,
            "descend": descend,
            "ignore_finished": ignore_finished,
        }
        return list(await self._value("cancel_workflow", params) or [])

    async def wait_signal(
        self, task: Claimed, seq: int, signal_id: str, limit: float | None
    ) -> RecordedStep:
        params = {**_held(task, seq), "signal_id": signal_id, "limit": limit}
        return await self._step("wait_signal", params)

    async def ask_human(
        self, task: Claimed, seq: int, signal_id: str, request: dict[str, Any]
    ) -> RecordedStep:
        params = {**_held(task, seq), "signal_id": signal_id, "request": Jsonb(request)}
        return await self._step("ask_human", params)

    async def send_signal(
        self, task: Claimed, seq: int, signal_id: str, payload: Any, workflow_id: str | None
    ) -> RecordedStep:
        params = {
            **_held(task, seq),
            "signal_id": signal_id,
            "payload": Jsonb(payload),
            "workflow_id": workflow_id,
        }
        return await self._step("send_signal", params)

    async def start_child(
        self,
        task: Claimed,
        seq: int,
        workflow_name: str,
        args: list[Any],
        task_queue: str | None,
        workflow_id: str | None,
        entity: str | None,
        options: dict[str, Any],
        wait: bool,
    ) -> RecordedStep:
        params = {
            **_held(task, seq),
            **_start(workflow_name, args, task_queue, workflow_id, entity, options),
            "wait": wait,
        }
        return await self._step("start_child", params)

    async def start_hook(
        self,
        task: Claimed,
        seq: int,
        workflow_name: str,
        args: list[Any],
        task_queue: str | None,
        workflow_id: str | None,
        signal_id: str | None,
        options: dict[str, Any] | None = None,
    ) -> RecordedStep:
        params = {
            **_held(task, seq),
            "workflow_name": workflow_name,
            "args": Jsonb(args),
            "task_queue": task_queue,
            "workflow_id": workflow_id,
            "signal_id": signal_id,
            "options": None if options is None else Jsonb(options),
        }
        return await self._step("start_hook", params)

    async def search_step(self, task: Claimed, seq: int, op: str, args: Any) -> RecordedStep:
        params = {**_held(task, seq), "op": op, "args": Jsonb(args)}
        return await self._step("search_step", params)

    async def emit_step(self, task: Claimed, seq: int, events: dict[str, Any]) -> RecordedStep:
        params = {**_held(task, seq), "events": Jsonb(events)}
        return await self._step("emit_step", params)

    async def record_patch(
        self, task: Claimed, seq: int, patch_id: str, deprecated: bool
    ) -> RecordedStep:
        params = {**_held(task, seq), "patch_id": patch_id, "deprecated": deprecated}
        return await self._step("record_patch", params)

    async def cancel_step(
        self, task: Claimed, seq: int, workflow_id: str, reason: str | None, descend: bool
    ) -> RecordedStep:
        params = {
            **_held(task, seq),
            "workflow_id": workflow_id,
            "reason": reason,
            "descend": descend,
        }
        return await self._step("cancel_step", params)

    # -- entity --------------------------------------------------------------------------
    async def entity_step(
        self,
        task: Claimed,
        seq: int,
        op: str,
        path: str | None,
        value: Any,
        has_value: bool = True,
    ) -> RecordedStep:
        operand = Jsonb(value) if has_value else None  # None: JSON null; no operand: SQL null
        params = {**_held(task, seq), "op": op, "path": path, "value": operand}
        return await self._step("entity_step", params)

    async def entity_call(
        self, op: str, workflow_id: str, path: str | None, value: Any, key: str | None
    ) -> Any:
        """One entity_<op> function of the SQL API; `value` is the operand (JSON value, index
        or amount: sent as is for remove and increment, as jsonb otherwise). Each statement
        takes the parameters it names."""
        operand = value if op in ("remove", "increment") else Jsonb(value)
        params = {"workflow_id": workflow_id, "path": path, "value": operand, "key": key}
        return await self._value(f"entity_{op}", params)

    async def entity_history(self, workflow_id: str) -> list[EntityChange]:
        params = {"workflow_id": workflow_id}
        return await self._rows("entity_history", EntityChange, params)

    async def entity_find(
        self, entity: str, where: dict[str, Any], limit: int | None, offset: int
    ) -> list[EntityMatch]:
        params = {"entity": entity, "where": Jsonb(where), "limit": limit, "offset": offset}
        return await self._rows("entity_find", EntityMatch, params)

    async def entity_find_by_condition(
        self,
        entity: str,
        path: str | None,
        op: str,
        value: Any,
        limit: int | None,
        offset: int,
    ) -> list[EntityMatch]:
        params = {
            "entity": entity,
            "path": path,
            "op": op,
            "value": Jsonb(value),
            "limit": limit,
            "offset": offset,
        }
        return await self._rows("entity_find_by_condition", EntityMatch, params)

    async def entity_find_by_id(self, entity: str, workflow_id: str) -> EntityMatch | None:
        params = {"entity": entity, "workflow_id": workflow_id}
        rows = await self._rows("entity_find_by_id", EntityMatch, params)
        return rows[0] if rows else None

    async def entity_create_index(self, entity: str, path: str | None, kind: str) -> str:
        params = {"entity": entity, "path": path, "kind": kind}
        return str(await self._value("entity_create_index", params))

    # -- operations ----------------------------------------------------------------------
    async def list_workflows(
        self,
        status: str | None,
        entity: str | None,
        task_queue: str | None,
        limit: int,
        search: dict[str, Any] | None = None,
    ) -> list[WorkflowSummary]:
        """Rows of the `workflows` view, newest first; with `search`, only the workflows
        whose search attributes contain it (`jobs.search @> search`)."""
        params = {
            "status": status,
            "entity": entity,
            "task_queue": task_queue,
            "limit": limit,
            "search": _json(search),
        }
        return await self._rows("list_workflows", WorkflowSummary, params)

    async def workflow_waits(self, workflow_id: str) -> WorkflowWaits:
        """What the workflow waits on (`workflows` view); nothing when it is not found."""
        rows = await self._rows("workflow_waits", WorkflowWaits, {"workflow_id": workflow_id})
        return rows[0] if rows else WorkflowWaits(waiting_on=None, waits=[], blocked_by=None)

    async def workflow_history(self, workflow_id: str) -> list[HistoryEntry]:
        params = {"workflow_id": workflow_id}
        return await self._rows("workflow_history", HistoryEntry, params)

    async def export_workflow(self, workflow_id: str) -> dict[str, Any]:
        return dict(await self._value("export_workflow", {"workflow_id": workflow_id}))

    async def export_workflows(
        self,
        workflow_names: Sequence[str] | None,
        statuses: Sequence[str] | None,
        since: datetime | None,
        limit: int | None,
    ) -> list[dict[str, Any]]:
        params = {
            "workflow_names": None if workflow_names is None else list(workflow_names),
            "statuses": None if statuses is None else list(statuses),
            "since": since,
            "limit": limit,
        }
        return [row[0] for row in await self._fetch("export_workflows", params)]

    async def queue_backlog(self) -> list[QueueBacklog]:
        return await self._rows("queue_backlog", QueueBacklog, {})

    async def metrics(self) -> list[MetricSample]:
        return await self._rows("metrics", MetricSample, {})

    async def retry_workflow(self, workflow_id: str) -> RetryOutcome:
        outcome: RetryOutcome = await self._value("retry_workflow", {"workflow_id": workflow_id})
        return outcome

    async def prune(self, older_than: timedelta, batch: int, dry_run: bool) -> int:
        """`call prune(...)`: every batch commits on its own (the pool's connections are in
        autocommit mode, which a procedure that commits needs)."""
        params = {"older_than": older_than, "batch": batch, "dry_run": dry_run}
        return int(await self._value("prune", params) or 0)

    async def set_setting(self, key: str, value: Any) -> Any:
        params = {"key": key, "value": None if value is None else Jsonb(value)}
        return await self._value("set_setting", params)

    async def get_setting(self, key: str) -> Any:
        return await self._value("get_setting", {"key": key})

    # -- schedules -----------------------------------------------------------------------
    async def save_schedule(
        self,
        create: bool,
        schedule_id: str,
        spec: str,
        workflow_name: str,
        args: Any,
        task_queue: str | None,
        options: dict[str, Any],
    ) -> datetime:
        """create_schedule (or update_schedule): returns the next fire."""
        params = {
            "schedule_id": schedule_id,
            "spec": spec,
            "workflow_name": workflow_name,
            "args": Jsonb(args),
            "task_queue": task_queue,
            "options": Jsonb(options),
        }
        value: datetime = await self._value(
            "create_schedule" if create else "update_schedule", params
        )
        return value

    async def schedule_call(self, name: str, schedule_id: str) -> Any:
        """pause / resume / trigger / delete_schedule: what the function returns."""
        return await self._value(f"{name}_schedule", {"schedule_id": schedule_id})

    async def human_tasks(self, name: str, params: Params) -> list[HumanTask]:
        """A human task function of sql/49_human_tasks.sql: the rows it returns."""
        return await self._rows(name, HumanTask, params)

    async def list_schedules(self, schedule_id: str | None) -> list[Schedule]:
        return await self._rows("list_schedules", Schedule, {"schedule_id": schedule_id})

    async def set_queue_limits(
        self,
        task_queue: str,
        max_running: int | None,
        rate: int | None,
        per: timedelta | None,
        key_max_running: int | None,
        key_rate: int | None = None,
        key_per: timedelta | None = None,
    ) -> None:
        params = {
            "task_queue": task_queue,
            "max_running": max_running,
            "rate": rate,
            "per": per,
            "key_max_running": key_max_running,
            "key_rate": key_rate,
            "key_per": key_per,
        }
        await self._value("set_queue_limits", params)

    async def get_queue_limits(self) -> list[QueueLimits]:
        return await self._rows("get_queue_limits", QueueLimits, {})

    async def queue_keys(self, task_queue: str, limit: int) -> list[QueueKey]:
        return await self._rows("queue_keys", QueueKey, {"task_queue": task_queue, "limit": limit})
