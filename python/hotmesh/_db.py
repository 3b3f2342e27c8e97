"""Every SQL statement the Python side sends, and the typed calls that send them.

Python never writes engine tables: each call here is one stored function of the app schema,
sent on an autocommit connection, so it is one round trip and (at most) one commit. The app
schema name is the only identifier, composed with `sql.Identifier`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from hotmesh import errors


@dataclass(frozen=True)
class Claimed:
    """A task a worker now holds (the `claimed_task` composite of claim_tasks)."""

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
    payload: dict[str, Any]
    workflow_name: str
    job_attempt: int
    steps: list[dict[str, Any]] | None


_STATEMENTS = {
    "start_workflow": "select {}.start_workflow(%s::text, %s::jsonb, %s::text, %s::text,"
    " %s::text, %s::jsonb)",
    "workflow_status": "select {}.workflow_status(%s::text)",
    "workflow_outcome": "select status, result, error from {}.workflow_outcome(%s::text)",
    "get_workflow": "select {}.get_workflow(%s::text)",
    "claim_tasks": "select * from {}.claim_tasks(%s::text[], %s::text, %s::integer, %s::interval)",
    "next_due": "select {}.next_due(%s::text[])",
    "complete_task": "select {}.complete_task(%s::bigint, %s::uuid, %s::jsonb)",
    "fail_task": "select {}.fail_task(%s::bigint, %s::uuid, %s::jsonb)",
    "suspend_task": "select {}.suspend_task(%s::bigint, %s::uuid)",
    "bury_task": "select {}.bury_task(%s::bigint, %s::uuid, %s::jsonb)",
    "heartbeat": "select {}.heartbeat(%s::bigint[], %s::uuid[], %s::interval)",
    "release_tasks": "select {}.release_tasks(%s::bigint[], %s::uuid[])",
    "record_step": "select {}.record_step(%s::bigint, %s::uuid, %s::integer, %s::text,"
    " %s::text, %s::jsonb, %s::jsonb, %s::jsonb, %s::jsonb)",
    "schedule_activity": "select {}.schedule_activity(%s::bigint, %s::uuid, %s::integer,"
    " %s::text, %s::jsonb, %s::text, %s::jsonb)",
    "schedule_sleep": "select {}.schedule_sleep(%s::bigint, %s::uuid, %s::integer, %s::numeric)",
}


def _json(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


class Database:
    """The stored functions of one app schema, called through a connection pool."""

    def __init__(self, pool: AsyncConnectionPool, app_id: str) -> None:
        self.pool = pool
        self.app_id = app_id
        schema = sql.Identifier(app_id)
        self._sql = {name: sql.SQL(text).format(schema) for name, text in _STATEMENTS.items()}

    async def _fetch(self, name: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(self._sql[name], params)
                return await cur.fetchall()
        except psycopg.Error as error:
            if error.sqlstate and (error.sqlstate.startswith("HM") or error.sqlstate[:2] == "22"):
                raise errors.from_database(error) from error
            raise

    async def _value(self, name: str, params: Sequence[Any]) -> Any:
        rows = await self._fetch(name, params)
        return rows[0][0] if rows else None

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
        params = (workflow_name, Jsonb(args), task_queue, workflow_id, entity, Jsonb(options))
        return str(await self._value("start_workflow", params))

    async def workflow_status(self, workflow_id: str) -> str:
        return str(await self._value("workflow_status", (workflow_id,)))

    async def workflow_outcome(self, workflow_id: str) -> tuple[str, Any, Any]:
        rows = await self._fetch("workflow_outcome", (workflow_id,))
        status, result, error = rows[0]
        return str(status), result, error

    async def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        return dict(await self._value("get_workflow", (workflow_id,)))

    # -- tasks ---------------------------------------------------------------------------
    async def claim_tasks(
        self, queues: list[str], worker_id: str, max_tasks: int, lease: timedelta
    ) -> list[Claimed]:
        rows = await self._fetch("claim_tasks", (queues, worker_id, max_tasks, lease))
        return [Claimed(*row) for row in rows]

    async def next_due(self, queues: list[str]) -> datetime | None:
        value = await self._value("next_due", (queues,))
        return value if isinstance(value, datetime) else None

    async def complete_task(self, task: Claimed, result: Any) -> None:
        await self._fetch("complete_task", (task.task_id, task.lease_token, Jsonb(result)))

    async def fail_task(self, task: Claimed, error: dict[str, Any]) -> dict[str, Any]:
        value = await self._value("fail_task", (task.task_id, task.lease_token, Jsonb(error)))
        return dict(value)

    async def suspend_task(self, task: Claimed) -> datetime | None:
        value = await self._value("suspend_task", (task.task_id, task.lease_token))
        return value if isinstance(value, datetime) else None

    async def bury_task(self, task: Claimed, error: dict[str, Any]) -> None:
        await self._fetch("bury_task", (task.task_id, task.lease_token, Jsonb(error)))

    async def heartbeat(self, tasks: Sequence[Claimed], lease: timedelta) -> set[int]:
        ids = [t.task_id for t in tasks]
        tokens = [t.lease_token for t in tasks]
        held = await self._value("heartbeat", (ids, tokens, lease))
        return set(held or ())

    async def release_tasks(self, tasks: Sequence[Claimed]) -> int:
        ids = [t.task_id for t in tasks]
        tokens = [t.lease_token for t in tasks]
        return int(await self._value("release_tasks", (ids, tokens)) or 0)

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
    ) -> dict[str, Any]:
        params = (
            task.task_id,
            task.lease_token,
            seq,
            kind,
            name,
            _json(input),
            _json(output) if error is None else None,
            _json(error),
            _json(retry_policy),
        )
        return dict(await self._value("record_step", params))

    async def schedule_activity(
        self,
        task: Claimed,
        seq: int,
        name: str,
        args: list[Any],
        task_queue: str,
        retry_policy: dict[str, Any] | None,
    ) -> dict[str, Any]:
        params = (
            task.task_id,
            task.lease_token,
            seq,
            name,
            Jsonb(args),
            task_queue,
            _json(retry_policy),
        )
        return dict(await self._value("schedule_activity", params))

    async def schedule_sleep(self, task: Claimed, seq: int, seconds: float) -> dict[str, Any]:
        params = (task.task_id, task.lease_token, seq, seconds)
        return dict(await self._value("schedule_sleep", params))
