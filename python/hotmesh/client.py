"""The client: `MemFlow.init`, `mf.workflow.start / get_handle`, `mf.worker.create`, Handle."""

from __future__ import annotations

import asyncio
import bisect
import builtins
import contextlib
import inspect
import os
import signal
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from hotmesh import _citus, _convert, _install, errors
from hotmesh._db import ADAPTERS, Database, StartItem
from hotmesh._durations import Duration, seconds
from hotmesh._listener import Listener
from hotmesh._runner import encode, encode_args
from hotmesh.codecs import Codec, Payloads
from hotmesh.entity import EntityClient
from hotmesh.interceptors import (
    CancelInput,
    Interceptor,
    SignalInput,
    StartInput,
    check,
    compose,
    overrides,
)
from hotmesh.retry import RetryPolicy
from hotmesh.rows import (
    HistoryEntry,
    HumanTask,
    MetricSample,
    QueueBacklog,
    QueueLimits,
    RetryOutcome,
    Schedule,
    SignalOutcome,
    WorkflowDescription,
    WorkflowSummary,
)
from hotmesh.worker import (
    PREFETCH,
    STICKY_CACHE,
    Registry,
    Worker,
    check_build_id,
    default_build_id,
)
from hotmesh.workflow import ActivityFunctions, _named, check_workflow_function, start_options

if TYPE_CHECKING:
    from hotmesh.metrics import WorkerMetrics

# The libpq variables that choose a server, shown when no DSN was given.
_LIBPQ_VARS = ("PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE")
_TERMINAL = ("completed", "failed", "cancelled")
_RESULT_POLL = 30.0  # seconds between looks while waiting for a result, should a NOTIFY be missed


def _dsn_source(dsn: str | None) -> str:
    """Where the connection string comes from, for an error message (no password shown)."""
    if dsn is None:
        dsn = os.environ.get("DATABASE_URL", "")
        origin = "DATABASE_URL"
    else:
        origin = "DATABASE_URL" if dsn and dsn == os.environ.get("DATABASE_URL") else "dsn="
    if dsn:
        try:
            parts = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            return f"{origin} (not a valid connection string)"
        shown = " ".join(f"{k}={v}" for k, v in parts.items() if k != "password")
        return f"{origin} ({shown})" if shown else origin
    libpq = [f"{k}={os.environ[k]}" for k in _LIBPQ_VARS if os.environ.get(k)]
    if libpq:
        return "the libpq variables: " + " ".join(libpq)
    return "libpq defaults: no dsn=, DATABASE_URL or PGHOST/PGPORT/... set"


class Handle:
    """A workflow, by id: its status, its result."""

    def __init__(self, mf: MemFlow, workflow_id: str) -> None:
        self._mf = mf
        self.workflow_id = workflow_id

    def __repr__(self) -> str:
        return f"Handle({self.workflow_id!r})"

    @property
    def _db(self) -> Database:
        """The engine of the workflow (its shard group's, on an app distributed by job_id)."""
        return self._mf._route(self.workflow_id).db

    async def status(self) -> str:
        """pending, running, waiting, completed, failed or cancelled."""
        return await self._db.workflow_status(self.workflow_id)

    async def signal(
        self, signal_id: str, data: Any = None, *, idempotency_key: str | None = None
    ) -> SignalOutcome:
        """Send signal `signal_id` to this workflow only (kept until it waits for it)."""
        return await self._mf.workflow.signal(
            signal_id, data, workflow_id=self.workflow_id, idempotency_key=idempotency_key
        )

    async def interrupt(self, reason: str | None = None, *, descend: bool = True) -> list[str]:
        """Cancel the workflow: it ends `cancelled` (code 410), its queued tasks are removed
        and, with `descend`, its children are cancelled too. Returns the ids cancelled;
        IllegalTransition if it already finished."""
        db = self._db

        async def cancel(given: CancelInput) -> list[str]:
            return await db.cancel_workflow(given.workflow_id, given.reason, given.descend, False)

        outbound = compose(self._mf.interceptors, "cancel_workflow", (), cancel)
        cancelled: list[str] = await outbound(CancelInput(self.workflow_id, reason, descend))
        return cancelled

    async def describe(self) -> WorkflowDescription:
        """Everything about the workflow (`<app>.get_workflow`): status, entity, tasks, ...,
        and what it waits on (`waiting_on` as text, `waits` one object per wait, `blocked_by`
        the open transaction holding its row: the `workflows` view's columns)."""
        doc = await self._db.get_workflow(self.workflow_id)
        # The views (sql/70_views.sql) are the app's, read through the coordinator when the
        # app is distributed by job_id: an engine has none of its own.
        waits = await self._mf._db.workflow_waits(self.workflow_id)
        return WorkflowDescription(
            **doc, waiting_on=waits.waiting_on, waits=waits.waits, blocked_by=waits.blocked_by
        )

    async def search_attributes(self) -> dict[str, Any]:
        """The workflow's search attributes: those seeded at start (`search=`) and those its
        code set (`workflow.search()`, `enrich`)."""
        return dict((await self._db.get_workflow(self.workflow_id))["search"])

    async def history(self) -> list[HistoryEntry]:
        """The workflow's timeline, step by step (`<app>.workflow_history`)."""
        return await self._db.workflow_history(self.workflow_id)

    async def export(self) -> dict[str, Any]:
        """The workflow as one JSON document (`<app>.export_workflow`): its row, threads,
        every step with inputs and outcomes, its entity's versions and its children; what
        hotmesh.testing.Replayer and `hotmesh replay --from-file` check code against."""
        return await self._db.export_workflow(self.workflow_id)

    async def retry(self) -> RetryOutcome:
        """Run a failed workflow again from its last recorded step, or make its dead tasks
        ready again (`<app>.retry_workflow`; the app's owner only). Returns what it did:
        {"workflow_id", "status", "reset_steps", "retried", "revived_tasks"}."""
        return await self._db.retry_workflow(self.workflow_id)

    async def result(
        self,
        timeout: Duration | None = None,  # noqa: ASYNC109 (seed API)
        *,
        result_type: Any = None,
    ) -> Any:
        """Wait for the workflow to finish (woken by NOTIFY; a 30 s fallback look) and return
        its result, as `result_type` when given (a dataclass, a pydantic model, `list[X]`,
        ...: docs/typed-payloads.md; PayloadTypeError naming the field when it does not fit).
        A failed or cancelled workflow raises the WorkflowError its stored error describes
        (FatalError 598, MaxedError 597, CancelledFailure 410, ...); TimeoutError when
        `timeout` seconds pass first."""
        limit = None if timeout is None else seconds(timeout, "timeout")
        listener = await self._mf._listening(self.workflow_id)
        event = asyncio.Event()
        listener.watch_done(self.workflow_id, event)
        try:
            async with asyncio.timeout(limit):
                while True:
                    event.clear()
                    outcome = await self._db.workflow_outcome(self.workflow_id)
                    if outcome.status == "completed":
                        value = self._mf.payloads.decode(outcome.result)
                        if result_type is None:
                            return value
                        what = f"the result of workflow {self.workflow_id}"
                        return _convert.from_json(value, result_type, what)
                    if outcome.status in _TERMINAL:
                        raise errors.from_payload(outcome.error or {"message": outcome.status})
                    # Woken by its NOTIFY; the periodic look guards against one never seen
                    # (sent by an engine version whose payloads this client does not read).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(event.wait(), _RESULT_POLL)
        finally:
            listener.unwatch_done(self.workflow_id, event)


class QueueClient:
    """`mf.queue`: flow control per task queue, enforced by the claim (docs/flow-control.md)."""

    def __init__(self, mf: MemFlow) -> None:
        self._mf = mf

    async def set_limits(
        self,
        task_queue: str,
        *,
        max_running: int | None = None,
        rate: int | None = None,
        per: Duration | None = None,
        key_max_running: int | None = None,
        key_rate: int | None = None,
        key_per: Duration | None = None,
    ) -> None:
        """Limit `task_queue` (`<app>.set_queue_limits`): at most `max_running` tasks running
        at once across every worker, at most `rate` starts `per` interval (a token bucket),
        at most `key_max_running` running and `key_rate` starts `key_per` interval per
        concurrency key. None lifts that limit; the call sets all of them, so
        `set_limits(q)` lifts every limit. Applies at once."""
        interval = None if per is None else timedelta(seconds=seconds(per, "per"))
        key_interval = None if key_per is None else timedelta(seconds=seconds(key_per, "key_per"))
        await self._mf._db.set_queue_limits(task_queue, max_running, rate, interval,
                                            key_max_running, key_rate, key_interval)  # fmt: skip

    async def limits(self) -> list[QueueLimits]:
        """Every limited queue, its limits and where it stands (`<app>.get_queue_limits`)."""
        return await self._mf._db.get_queue_limits()


class HumanTaskClient:
    """`mf.human_tasks`: the inbox of people's tasks (docs/people.md). Each call is the
    function of sql/49_human_tasks.sql of the same name, which any application can call too."""

    def __init__(self, mf: MemFlow) -> None:
        self._mf = mf

    async def list(
        self,
        *,
        role: str | None = None,
        assignee: str | None = None,
        status: str | None = None,
        type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int = 50,
        after: int | None = None,
    ) -> builtins.list[HumanTask]:
        """Tasks by role, assignee (assigned to or claimed by), status (None: open and
        claimed), type and metadata (containment), most urgent first; `after` (a task id)
        continues a page (`list_human_tasks`)."""
        where = None if metadata is None else Jsonb(encode(metadata, "the metadata filter"))
        params = {
            "role": role,
            "assignee": assignee,
            "status": status,
            "type": type,
            "metadata": where,
            "limit": limit,
            "after": after,
        }
        return await self._mf._db.human_tasks("list_human_tasks", params)

    async def get(self, task_id: int) -> HumanTask:
        """One task (TaskNotFound, HM005, when there is none)."""
        return (await self._mf._db.human_tasks("get_human_task", {"id": task_id}))[0]

    async def claim(self, task_id: int, who: str) -> HumanTask:
        """`who` takes the task: nobody else may resolve it until released or reassigned."""
        return await self._one("claim_human_task", {"id": task_id, "who": who})

    async def claim_next(self, role: str, who: str) -> HumanTask | None:
        """The most urgent open task of `role` (assigned to nobody or to `who`), claimed by
        `who`; None when there is none. Two callers never get the same task."""
        params = {"role": role, "who": who}
        # On an app distributed by job_id each shard group's engine claims its own tasks.
        for db in [shard.db for shard in self._mf._shards] or [self._mf._db]:
            rows = await db.human_tasks("claim_next_human_task", params)
            if rows:
                return rows[0]
        return None

    async def release(self, task_id: int, who: str) -> HumanTask:
        """Give a claimed task back: open again for its role."""
        return await self._one("release_human_task", {"id": task_id, "who": who})

    async def reassign(
        self, task_id: int, who: str, assignee: str | None, role: str | None = None
    ) -> HumanTask:
        """Assign the task to `assignee` (None: anyone with the role), and to `role` when
        given; it is open again."""
        params = {"id": task_id, "who": who, "assignee": assignee, "role": role}
        return await self._one("reassign_human_task", params)

    async def comment(self, task_id: int, who: str, text: str) -> HumanTask:
        """Append a comment to the task's events."""
        return await self._one("comment_human_task", {"id": task_id, "who": who, "text": text})

    async def resolve(self, task_id: int, who: str, answer: Any) -> HumanTask:
        """Answer the task: checked against its form, delivered to the waiting workflow and
        the task closed, in one transaction, once (a second resolve: IllegalTransition)."""
        params = {
            "id": task_id,
            "who": who,
            "answer": Jsonb(encode(answer, "the answer")),
        }
        return await self._one("resolve_human_task", params)

    async def _one(self, name: str, params: dict[str, Any]) -> HumanTask:
        db = self._mf._db
        if self._mf._shards:  # the engine of the task's workflow changes it
            db = self._mf._route((await self.get(params["id"])).job_id).db
        return (await db.human_tasks(name, params))[0]


def _start_item(
    *,
    workflow_name: str,
    args: Iterable[Any] = (),
    task_queue: str | None = None,
    workflow_id: str | None = None,
    entity: str | None = None,
    retry_policy: RetryPolicy | dict[str, Any] | None = None,
    priority: int | None = None,
    expire: Duration | None = None,
    execution_timeout: Duration | None = None,
    id_reuse: Literal["reject", "allow_finished", "terminate"] | None = None,
    idempotency_key: str | None = None,
    debounce: Duration | None = None,
    start_at: datetime | str | None = None,
    start_in: Duration | None = None,
    search: Mapping[str, Any] | None = None,
    concurrency_key: str | None = None,
) -> StartItem:
    """One start as start_workflow's parameters (an item of start_workflows): the arguments
    and durations checked and encoded here, the rest checked by the engine."""
    options = start_options(
        retry_policy,
        priority,
        expire,
        execution_timeout,
        id_reuse=id_reuse,
        idempotency_key=idempotency_key,
        debounce=None if debounce is None else seconds(debounce, "debounce"),
        start_at=start_at.isoformat() if isinstance(start_at, datetime) else start_at,
        start_in=None if start_in is None else seconds(start_in, "start_in"),
        search=dict(search) if isinstance(search, Mapping) else search,
        concurrency_key=concurrency_key,
    )
    try:
        arguments = encode_args(args, f"the args of workflow {workflow_name}")
    except errors.FatalError as error:
        # A caller's bad argument (22023), not a workflow-side failure (598).
        raise errors.InvalidArgument(error.message) from None
    return {
        "workflow_name": workflow_name,
        "args": arguments,
        "task_queue": task_queue,
        "workflow_id": workflow_id,
        "entity": entity,
        "options": options,
    }


# The fields of a start of start_many: start()'s keyword arguments.
_START_FIELDS = frozenset(inspect.signature(_start_item).parameters)


class WorkflowClient:
    """`mf.workflow`: start workflows and find them again."""

    def __init__(self, mf: MemFlow) -> None:
        self._mf = mf

    async def start(
        self,
        *,
        workflow_name: str,
        args: Iterable[Any] = (),
        task_queue: str | None = None,
        workflow_id: str | None = None,
        entity: str | None = None,
        retry_policy: RetryPolicy | dict[str, Any] | None = None,
        priority: int | None = None,
        expire: Duration | None = None,
        execution_timeout: Duration | None = None,
        id_reuse: Literal["reject", "allow_finished", "terminate"] | None = None,
        idempotency_key: str | None = None,
        debounce: Duration | None = None,
        start_at: datetime | str | None = None,
        start_in: Duration | None = None,
        search: Mapping[str, Any] | None = None,
        concurrency_key: str | None = None,
    ) -> Handle:
        """Start a workflow; returns its Handle at once. `task_queue` defaults to `entity`;
        `entity` (the jobs.entity column) defaults to the workflow name. `expire` is how long
        the finished workflow is kept (default 7 days); `retry_policy` re-runs a failing body.

        Start options (docs/python-api.md): `execution_timeout` fails the run (596) when it
        has not finished in time; `id_reuse` says what a taken `workflow_id` does (reject,
        allow_finished, terminate); a start with an `idempotency_key` a run already holds
        returns that run; `debounce` (needs `workflow_id`) waits that long for more starts of
        the id, which take the run's place with their arguments; `start_at` / `start_in` delay
        the start; `search` seeds its search attributes. Its activations share the per-key
        limit of their queue with the other workflows of `concurrency_key` (a customer, a
        tenant: docs/flow-control.md)."""
        item = _start_item(
            workflow_name=workflow_name,
            args=args,
            task_queue=task_queue,
            workflow_id=workflow_id,
            entity=entity,
            retry_policy=retry_policy,
            priority=priority,
            expire=expire,
            execution_timeout=execution_timeout,
            id_reuse=id_reuse,
            idempotency_key=idempotency_key,
            debounce=debounce,
            start_at=start_at,
            start_in=start_in,
            search=search,
            concurrency_key=concurrency_key,
        )
        mf, payloads = self._mf, self._mf.payloads

        async def start(given: StartInput) -> str:
            workflow_id = mf._new_id(given.workflow_id)
            return await mf._route(workflow_id).db.start_workflow(
                given.workflow_name, payloads.encode_args(list(given.args)), given.task_queue,
                workflow_id, given.entity, dict(given.options),
            )  # fmt: skip

        outbound = compose(self._mf.interceptors, "start_workflow", (), start)
        return Handle(self._mf, await outbound(StartInput(**item)))

    async def start_many(self, starts: Iterable[Mapping[str, Any]]) -> builtins.list[Handle]:
        """Start many workflows in one call (one transaction, one round trip); returns their
        Handles in order. Each start is a mapping of `start()`'s keyword arguments, e.g.
        `{"workflow_name": "greet", "args": ["Ann"], "task_queue": "hello", "priority": 5}`.
        All or nothing: a bad start, a taken `workflow_id` or an id given twice refuses the
        whole batch (the error names it) and starts nothing (docs/python-api.md)."""
        items = []
        for number, start in enumerate(starts, 1):
            if not isinstance(start, Mapping):
                raise errors.InvalidArgument(
                    f"start {number}: a start is a mapping of start()'s keyword arguments, "
                    f"not {type(start).__name__}"
                )
            unknown = sorted(set(start) - _START_FIELDS)
            if unknown:
                raise errors.InvalidArgument(
                    f"start {number}: unknown field(s) {', '.join(map(str, unknown))} (the "
                    "fields are start()'s keyword arguments)"
                )
            if "workflow_name" not in start:
                raise errors.InvalidArgument(f"start {number}: workflow_name is required")
            try:
                items.append(_start_item(**start))
            except errors.InvalidArgument as error:
                raise errors.InvalidArgument(f"start {number}: {error.message}") from None
        ids = await self._start_batch([StartInput(**item) for item in items])
        return [Handle(self._mf, workflow_id) for workflow_id in ids]

    async def _start_batch(self, inputs: builtins.list[StartInput]) -> builtins.list[str]:
        """The starts as one start_workflows call. With start_workflow interceptors, each
        start goes through them as one of `start()` does: the call is made once every start
        has reached the end of its chain (or an interceptor answered or refused it itself),
        and each chain gets its own start's workflow id back."""
        mf, payloads = self._mf, self._mf.payloads

        async def send(batch: builtins.list[StartInput]) -> builtins.list[str]:
            items: builtins.list[StartItem] = [
                {"workflow_name": given.workflow_name,
                 "args": payloads.encode_args(list(given.args)),
                 "task_queue": given.task_queue, "workflow_id": mf._new_id(given.workflow_id),
                 "entity": given.entity, "options": dict(given.options)}
                for given in batch
            ]  # fmt: skip
            return await mf._start_items(items)

        layers = self._mf.interceptors
        if not overrides(layers, "start_workflow"):
            return await send(inputs)
        loop = asyncio.get_running_loop()
        arrived: dict[int, tuple[StartInput, asyncio.Future[str]]] = {}
        wake = asyncio.Event()

        def chain(index: int) -> Callable[[StartInput], Awaitable[str]]:
            async def last(given: StartInput) -> str:
                if index in arrived:
                    raise errors.HotMeshError("start_many: an interceptor called next twice")
                future: asyncio.Future[str] = loop.create_future()
                arrived[index] = (given, future)
                wake.set()
                return await future

            return compose(layers, "start_workflow", (), last)

        runs = [asyncio.ensure_future(chain(i)(given)) for i, given in enumerate(inputs)]
        try:
            while waiting := [r for i, r in enumerate(runs) if i not in arrived and not r.done()]:
                wake.clear()
                woken = asyncio.ensure_future(wake.wait())
                await asyncio.wait([*waiting, woken], return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
            for run in runs:
                if run.done() and run.exception() is not None:
                    await run  # an interceptor refused a start: none is started
            order = sorted(arrived)
            try:
                ids = await send([arrived[i][0] for i in order])
            except Exception as error:
                for i in order:
                    arrived[i][1].set_exception(error)
                await asyncio.gather(*runs, return_exceptions=True)
                raise
            for i, workflow_id in zip(order, ids, strict=True):
                arrived[i][1].set_result(workflow_id)
            return list(await asyncio.gather(*runs))
        finally:
            for run in runs:
                run.cancel()

    async def signal(
        self,
        signal_id: str,
        data: Any = None,
        *,
        workflow_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> SignalOutcome:
        """Send a signal: to the oldest wait for `signal_id` (in `workflow_id` only, when
        given), or kept until one waits. A repeated `idempotency_key` is ignored. Returns
        {"status": "delivered" | "kept" | "duplicate", ...}."""
        try:
            payload = encode(data, f"the data of signal {signal_id}")
        except errors.FatalError as error:
            raise errors.InvalidArgument(error.message) from None
        mf, payloads = self._mf, self._mf.payloads

        async def send(given: SignalInput) -> SignalOutcome:
            if given.workflow_id is None and mf._shards:
                raise errors.InvalidArgument(
                    f"signal {given.signal_id}: app {mf.app_id} is distributed by job_id, so a "
                    "signal names its workflow_id (the oldest wait across shard groups is not "
                    "looked for: docs/citus-row-distribution.md)"
                )
            db = mf._db if given.workflow_id is None else mf._route(given.workflow_id).db
            return await db.signal(
                given.signal_id, payloads.encode(given.data), given.workflow_id,
                given.idempotency_key,
            )  # fmt: skip

        outbound = compose(self._mf.interceptors, "signal_workflow", (), send)
        outcome: SignalOutcome = await outbound(
            SignalInput(signal_id, payload, workflow_id, idempotency_key)
        )
        return outcome

    async def hook(
        self,
        *,
        workflow_id: str,
        workflow_name: str,
        args: Iterable[Any] = (),
        task_queue: str | None = None,
        signal_id: str | None = None,
        execution_timeout: Duration | None = None,
    ) -> str:
        """Start a hook in a running workflow from outside; returns the hook's thread. With
        `execution_timeout`, the engine ends the hook failed (596) when it runs longer."""
        try:
            arguments = encode_args(args, f"the args of hook {workflow_name}")
        except errors.FatalError as error:
            raise errors.InvalidArgument(error.message) from None
        arguments = self._mf.payloads.encode_args(arguments)
        options = start_options(execution_timeout=execution_timeout) or None
        return await self._mf._route(workflow_id).db.hook(
            workflow_id, workflow_name, arguments, task_queue, signal_id, options
        )

    def get_handle(self, workflow_id: str) -> Handle:
        """The Handle of an existing workflow (no query: status() and result() check)."""
        return Handle(self._mf, workflow_id)

    async def list(
        self,
        *,
        status: str | None = None,
        entity: str | None = None,
        task_queue: str | None = None,
        limit: int = 50,
        search: Mapping[str, Any] | None = None,
    ) -> builtins.list[WorkflowSummary]:
        """Workflows, newest first (rows of the `<app>.workflows` view), optionally only
        those in one status, of one entity type, started on one task queue or whose search
        attributes contain `search` (e.g. {"region": "eu"})."""
        wanted = dict(search) if isinstance(search, Mapping) else search
        return await self._mf._db.list_workflows(status, entity, task_queue, limit, wanted)


class ScheduleClient:
    """`mf.schedule`: workflows the engine starts by itself, on a cron expression or an
    interval (docs/schedules.md). Every call is one function of sql/48_schedules.sql."""

    def __init__(self, mf: MemFlow) -> None:
        self._mf = mf

    async def create(
        self,
        schedule_id: str,
        spec: str,
        *,
        workflow_name: str,
        args: Iterable[Any] = (),
        task_queue: str | None = None,
        timezone: str | None = None,
        overlap: str | None = None,
        catchup_window: Duration | None = None,
        jitter: Duration | None = None,
        paused: bool = False,
        entity: str | None = None,
        note: str | None = None,
        retry_policy: RetryPolicy | dict[str, Any] | None = None,
        priority: int | None = None,
        expire: Duration | None = None,
    ) -> datetime:
        """Create schedule `schedule_id`: a run of `workflow_name(*args)` at every fire of
        `spec` ("0 9 * * mon-fri", "@daily", "@every 10m") in `timezone` (default UTC).
        `overlap` (skip, buffer_one, allow) decides about a fire whose previous run has not
        ended; fires missed while no worker ran are caught up within `catchup_window`
        (default 1 hour). Returns the next fire. DuplicateJobError (HM001) when the id is taken."""
        fields = {k: v for k, v in locals().items() if k not in ("self", "schedule_id", "spec")}
        return await self._save(True, schedule_id, spec, fields)

    async def update(self, schedule_id: str, spec: str, **fields: Any) -> datetime:
        """Replace everything `create` set, with the same arguments (counters and the last
        fire are kept); the next fire is computed from now. Returns it."""
        return await self._save(False, schedule_id, spec, fields)

    async def _save(
        self, create: bool, schedule_id: str, spec: str, fields: dict[str, Any]
    ) -> datetime:
        unknown = sorted(set(fields) - set(inspect.signature(self.create).parameters))
        if unknown:
            raise errors.InvalidArgument(f"schedule {schedule_id}: unknown option(s) {unknown}")
        if "workflow_name" not in fields:
            raise errors.InvalidArgument(f"schedule {schedule_id}: workflow_name is required")
        workflow_name = fields.pop("workflow_name")
        args, task_queue = fields.pop("args", ()), fields.pop("task_queue", None)
        options = start_options(
            fields.pop("retry_policy", None),
            fields.pop("priority", None),
            fields.pop("expire", None),
        )
        for key in ("catchup_window", "jitter"):
            if fields.get(key) is not None:
                fields[key] = seconds(fields[key], key)
        options.update({k: v for k, v in fields.items() if v is not None and v is not False})
        try:
            arguments = encode_args(args, f"the args of schedule {schedule_id}")
        except errors.FatalError as error:
            raise errors.InvalidArgument(error.message) from None
        arguments = self._mf.payloads.encode_args(arguments)
        return await self._mf._db.save_schedule(
            create, schedule_id, spec, workflow_name, arguments, task_queue, options
        )

    async def pause(self, schedule_id: str) -> None:
        """Stop firing until `resume`. IllegalTransition when it is paused already."""
        await self._mf._db.schedule_call("pause", schedule_id)

    async def resume(self, schedule_id: str) -> datetime:
        """Fire again from now on (what was missed while paused is not caught up); returns
        the next fire."""
        value: datetime = await self._mf._db.schedule_call("resume", schedule_id)
        return value

    async def trigger(self, schedule_id: str) -> Handle:
        """Start a run now, whatever the overlap policy; returns its Handle."""
        return Handle(self._mf, str(await self._mf._db.schedule_call("trigger", schedule_id)))

    async def delete(self, schedule_id: str) -> None:
        """Delete the schedule (its runs stay). WorkflowNotFound (HM002) when there is none."""
        await self._mf._db.schedule_call("delete", schedule_id)

    async def list(self) -> builtins.list[Schedule]:
        """Every schedule with its next and last fires (the `<app>.schedule_fires` view)."""
        return await self._mf._db.list_schedules(None)

    async def get(self, schedule_id: str) -> Schedule | None:
        """One schedule, or None."""
        rows = await self._mf._db.list_schedules(schedule_id)
        return rows[0] if rows else None


class WorkerFactory:
    """`mf.worker`: serve task queues from this process."""

    def __init__(self, mf: MemFlow) -> None:
        self._mf = mf

    async def create(
        self,
        *,
        task_queue: str,
        workflow: Callable[..., Any] | Iterable[Callable[..., Any]] | None = None,
        concurrency: int = 8,
        lease: float = 30.0,
        build_id: str | None = None,
        interceptors: Iterable[Interceptor] | None = None,
        sticky_cache: int = STICKY_CACHE,
        prefetch: int = PREFETCH,
    ) -> Worker:
        """Register `workflow` (an `async def`, or several) on `task_queue` and serve the
        queue. A second create for the same queue adds to the worker that already serves it.
        `build_id` names this code version: each activation records it (`workflows.build_id`);
        by default a digest of the source of the queue's workflow functions. `interceptors`
        wrap the queue's workflows and activities, inside the client's (docs/interceptors.md).
        `sticky_cache`: how many suspended workflows the worker keeps in memory to resume
        without replay when it is woken again (0: always replay; docs/performance.md).
        `prefetch`: how many tasks the worker may claim ahead of its free slots, on a short
        lease until each starts (0: none; docs/performance.md)."""
        if interceptors is not None:
            given = check(interceptors)
            registry = self._mf.registry
            registry.queue_interceptors[task_queue] = registry.interceptors + given
        functions: list[Callable[..., Any]] = []
        if callable(workflow):
            functions = [workflow]
        elif workflow is not None:
            functions = list(workflow)
        for fn in functions:
            check_workflow_function(fn)
        table = self._mf.registry.workflows.setdefault(task_queue, {})
        table.update({fn.__name__: fn for fn in functions})
        build = check_build_id(build_id) or default_build_id(table.values())
        return await self._mf._serve(task_queue, concurrency, lease, build, sticky_cache, prefetch)

    async def register_activities(
        self,
        *,
        task_queue: str,
        activities: ActivityFunctions,
        concurrency: int = 8,
        lease: float = 30.0,
        prefetch: int = PREFETCH,
    ) -> Worker:
        """Serve `activities` on `task_queue`: workflows anywhere that proxy them with this
        queue get them run here (`prefetch` as for create)."""
        self._mf.registry.register_activities(task_queue, _named(activities))
        return await self._mf._serve(task_queue, concurrency, lease, prefetch=prefetch)


def _pool(dsn: str, size: int) -> AsyncConnectionPool:
    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "context": ADAPTERS},
        open=False,
    )


@dataclass(frozen=True)
class _Engine:
    """Where the calls about a workflow go: the app's functions and listener, or on an app
    distributed by job_id those of the workflow's shard group, on its node."""

    db: Database
    listener: Listener


class MemFlow:
    """One app: its schema, a connection pool, a listener and the workers of this process.
    On an app distributed by job_id (docs/citus-row-distribution.md), also a pool per node
    and the engine of each shard group, to which every call about a workflow is routed."""

    def __init__(
        self,
        app_id: str,
        dsn: str,
        pool: AsyncConnectionPool,
        interceptors: tuple[Interceptor, ...] = (),
        payloads: Payloads | None = None,
        shards: Sequence[tuple[_citus.ShardEngine, AsyncConnectionPool]] = (),
    ) -> None:
        self.app_id = app_id
        self.dsn = dsn
        self._db = Database(pool, app_id)
        self.interceptors = interceptors
        self.registry = Registry()
        self.registry.interceptors = interceptors
        self.payloads = payloads or Payloads(None)
        self.registry.payloads = self.payloads
        # A worker per task queue, or one per shard group on an app distributed by job_id.
        self.workers: dict[str, list[Worker]] = {}
        self.workflow = WorkflowClient(self)
        self.worker = WorkerFactory(self)
        self.schedule = ScheduleClient(self)
        self.queue = QueueClient(self)
        self.human_tasks = HumanTaskClient(self)
        self.entity = EntityClient(self._db, self.payloads, lambda wid: self._route(wid).db)
        self._listener = Listener(dsn, app_id)
        self._home = _Engine(self._db, self._listener)
        # The shard groups' engines in hash order, and the low end of each one's range.
        self._shards = [
            _Engine(Database(node, engine.schema), Listener(engine.dsn, engine.schema))
            for engine, node in shards
        ]
        self._lows = [engine.low for engine, _ in shards]
        self._pools = list({id(p): p for p in [pool, *(node for _, node in shards)]}.values())

    def _route(self, workflow_id: str | None) -> _Engine:
        """The engine of workflow `workflow_id`: on an app distributed by job_id, that of
        the shard group whose hash range holds Citus's hash of the id (computed here: no
        round trip); the app's otherwise (and for None)."""
        if workflow_id is None or not self._shards:
            return self._home
        at = bisect.bisect_right(self._lows, _citus.worker_hash(workflow_id)) - 1
        return self._shards[at]

    def _new_id(self, workflow_id: str | None) -> str | None:
        """The id to start a workflow with: the engine names one left out, except on an app
        distributed by job_id, where the id must be known to find its shard group (the
        engine's form: 'H' and 32 hex digits)."""
        if workflow_id is None and self._shards:
            return "H" + uuid.uuid4().hex
        return workflow_id

    async def _start_items(self, items: builtins.list[StartItem]) -> builtins.list[str]:
        """start_workflows: one call, or on an app distributed by job_id one per shard group
        that has starts, each in a transaction of its own on its node, committed only once
        every group's starts succeeded (a bad start refuses them all)."""
        if not self._shards:
            return await self._db.start_workflows(items)
        groups: dict[int, builtins.list[int]] = {}
        for i, item in enumerate(items):
            engine = self._route(item["workflow_id"])
            groups.setdefault(self._shards.index(engine), []).append(i)
        ids = [""] * len(items)
        async with contextlib.AsyncExitStack() as stack:
            for group in sorted(groups):  # in one order: two batches never wait in a circle
                db, members = self._shards[group].db, groups[group]
                conn = await stack.enter_async_context(db.pool.connection())
                await stack.enter_async_context(conn.transaction())
                started = await db.start_workflows([items[i] for i in members], conn)
                for i, workflow_id in zip(members, started, strict=True):
                    ids[i] = workflow_id
        return ids

    @classmethod
    async def init(
        cls,
        app_id: str = "memflow",
        dsn: str | None = None,
        *,
        migrate: bool = True,
        pool_size: int = 10,
        interceptors: Iterable[Interceptor] | None = None,
        codec: Codec | Sequence[Codec] | None = None,
        encode_entity_fields: Sequence[str] = (),
    ) -> MemFlow:
        """Connect to app `app_id` (a Postgres schema), installing or upgrading it first.
        `dsn` defaults to DATABASE_URL, else the libpq environment (PGHOST, ...).
        `interceptors` wrap this client's starts, signals and cancels and the workflows and
        activities its workers run, the first outermost (docs/interceptors.md).
        `codec` (hotmesh.codecs: AesGcm, Compression, or a list applied in order) encodes
        every workflow and activity argument and result and every signal payload before it
        reaches the database, and the top-level entity fields in `encode_entity_fields`
        (docs/codecs.md)."""
        _install.check_app_id(app_id)
        layers = check(interceptors)
        payloads = Payloads(codec, encode_entity_fields)
        source = _dsn_source(dsn)
        dsn = os.environ.get("DATABASE_URL", "") if dsn is None else dsn
        try:
            if migrate:
                await _install.migrate(dsn, app_id)
            else:
                await _install.check_installed(dsn, app_id)
        except psycopg.OperationalError as error:
            if error.sqlstate is not None:  # the server answered: not a connection failure
                raise
            first = str(error).strip().splitlines()[0] if str(error).strip() else "failed"
            raise errors.DatabaseUnreachable(f"{first} (connecting with {source})") from error
        pool = _pool(dsn, pool_size)
        await pool.open(wait=True)
        nodes: dict[str, AsyncConnectionPool] = {}
        try:
            # Once, here: an app distributed by job_id has an engine per shard group.
            async with pool.connection() as conn:
                engines = await _citus.shard_engines(conn, dsn, app_id)
            for engine in engines:
                if engine.dsn not in nodes:
                    nodes[engine.dsn] = _pool(engine.dsn, pool_size)
                    await nodes[engine.dsn].open(wait=True)
        except BaseException:
            await asyncio.gather(*(p.close() for p in [pool, *nodes.values()]))
            raise
        shards = [(engine, nodes[engine.dsn]) for engine in engines]
        return cls(app_id, dsn, pool, layers, payloads, shards)

    async def events(self, topic: str | None = None) -> AsyncGenerator[dict[str, Any], None]:
        """Events workflows publish with `workflow.emit` from now on (all topics, or one):
        dicts {"workflow_id", "topic", "data"}. Ephemeral: nothing sent earlier is replayed."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        listeners = [engine.listener for engine in self._shards or [self._home]]
        for listener in listeners:
            await listener.start()
            listener.watch_events(queue)
        try:
            while True:
                event = await queue.get()
                if topic is None or event.get("topic") == topic:
                    yield event
        finally:
            for listener in listeners:
                listener.unwatch_events(queue)

    async def _listening(self, workflow_id: str | None = None) -> Listener:
        """The listener that hears about workflow `workflow_id` (the app's for None),
        listening."""
        listener = self._route(workflow_id).listener
        await listener.start()
        return listener

    async def _serve(
        self,
        task_queue: str,
        concurrency: int,
        lease: float,
        build_id: str | None = None,
        sticky_cache: int = STICKY_CACHE,
        prefetch: int = PREFETCH,
    ) -> Worker:
        workers = self.workers.get(task_queue)
        if not workers or workers[0].stopping:
            # On an app distributed by job_id, a worker (a claim loop) per shard group's
            # engine, listening on its node: each wake-up is heard where it is raised.
            workers = [
                Worker(
                    engine.db,
                    engine.listener,
                    self.registry,
                    task_queue,
                    concurrency=concurrency,
                    lease=lease,
                    build_id=build_id,
                    sticky_cache=sticky_cache,
                    prefetch=prefetch,
                )
                for engine in self._shards or [self._home]
            ]
            self.workers[task_queue] = workers
            for worker in workers:
                await worker.listener.start()
                await worker.start()
        elif build_id is not None:
            for worker in workers:
                worker.build_id = build_id  # more workflows registered on the queue
        return workers[0]

    async def close(self, grace: float = 10.0) -> None:
        """Stop the workers (in-flight work gets `grace` seconds, then its leases are
        released), the listener and the pool."""
        await asyncio.gather(*(w.stop(grace) for ws in self.workers.values() for w in ws))
        self.workers.clear()
        for engine in [self._home, *self._shards]:
            await engine.listener.stop()
        await asyncio.gather(*(pool.close() for pool in self._pools))

    # -- operations: the app as a whole ------------------------------------------------------
    def serve_metrics(self, port: int, host: str = "0.0.0.0") -> WorkerMetrics:  # noqa: S104
        """Count what this process's workers do and serve it as Prometheus metrics on
        http://host:port/metrics (needs hotmesh[metrics]; docs/metrics.md). Call it before
        creating workers. HotMeshError when the port is taken."""
        from hotmesh.metrics import WorkerMetrics, serve

        metrics = self.registry.metrics or WorkerMetrics.default()
        serve(metrics, port, host)
        self.registry.metrics = metrics
        return metrics

    async def metrics(self) -> list[MetricSample]:
        """The database's own metrics (the `<app>.metrics` view: backlog, oldest ready task,
        running tasks, unfinished workflows); `hotmesh.metrics.render` makes them Prometheus
        text."""
        return await self._db.metrics()

    async def queue_backlog(self) -> list[QueueBacklog]:
        """The task backlog per task queue and kind (the `<app>.queue_backlog` view)."""
        return await self._db.queue_backlog()

    async def prune(
        self, *, older_than: timedelta = timedelta(0), batch: int = 1000, dry_run: bool = False
    ) -> int:
        """Delete finished workflows whose retention ran out (and finished at least
        `older_than` ago), `batch` per transaction (`call <app>.prune(...)`; the app's owner
        only). Returns how many went, or would go with `dry_run`."""
        return await self._db.prune(older_than, batch, dry_run)

    async def get_setting(self, key: str) -> Any:
        """An app setting (`<app>.get_setting`): default_retention, in seconds."""
        return await self._db.get_setting(key)

    async def set_setting(self, key: str, value: Any) -> Any:
        """Change an app setting, or with None go back to its built-in default
        (`<app>.set_setting`; the app's owner only). Returns the value now in force."""
        return await self._db.set_setting(key, value)

    async def run_until_signal(self, grace: float = 10.0) -> None:
        """Serve until SIGTERM or SIGINT, then close gracefully. Raises SchemaMismatch, after
        the close, when a worker found that it cannot serve the app's engine (an upgrade)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        waits = [asyncio.ensure_future(e.wait()) for e in (stop, self.registry.halted)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            await self.close(grace)
        if self.registry.mismatch is not None:
            raise self.registry.mismatch

    async def __aenter__(self) -> MemFlow:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
