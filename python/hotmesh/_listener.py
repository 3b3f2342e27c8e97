"""LISTEN on the app's channel with one dedicated autocommit connection per client, and wake
whoever waits: workers (a task became ready on their queue) and result waiters (a workflow
finished). After a reconnect everybody is woken, because notifications sent while the
connection was down are lost; waiters re-check the database, so nothing is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import psycopg
from psycopg import sql

from hotmesh._log import event as log_event
from hotmesh._log import first_line

log = logging.getLogger("hotmesh.listener")


def _done_ids(body: str) -> list[str]:
    """The workflow ids of a 'd:' payload: a JSON array of them, or (as engines before the
    batched form sent it) one bare id."""
    if body.startswith("["):
        with contextlib.suppress(ValueError):
            ids = json.loads(body)
            if isinstance(ids, list):
                return [str(i) for i in ids]
    return [body]


class Listener:
    def __init__(self, dsn: str, channel: str) -> None:
        self._dsn = dsn
        self._channel = channel
        self._queues: dict[str, set[asyncio.Event]] = {}
        self._done: dict[str, set[asyncio.Event]] = {}
        self._events: set[asyncio.Queue[dict[str, Any]]] = set()
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self) -> None:
        """Start listening; returns once the first LISTEN is active."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="hotmesh-listener")
        await self.ready.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def watch_queue(self, queue: str, event: asyncio.Event) -> None:
        self._queues.setdefault(queue, set()).add(event)

    def unwatch_queue(self, queue: str, event: asyncio.Event) -> None:
        self._queues.get(queue, set()).discard(event)

    def watch_done(self, workflow_id: str, event: asyncio.Event) -> None:
        self._done.setdefault(workflow_id, set()).add(event)

    def unwatch_done(self, workflow_id: str, event: asyncio.Event) -> None:
        waiters = self._done.get(workflow_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._done[workflow_id]

    def watch_events(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._events.add(queue)

    def unwatch_events(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._events.discard(queue)

    def _wake_all(self) -> None:
        for events in (*self._queues.values(), *self._done.values()):
            for event in events:
                event.set()

    def _dispatch(self, payload: str) -> None:
        """'q:<queue>' (a task is ready), 'd:["<workflow id>", ...]' (they ended), 'e:<event>'."""
        kind, _, body = payload.partition(":")
        if kind == "q":
            for event in self._queues.get(body, ()):
                event.set()
        elif kind == "d":
            if self._done:  # a worker that awaits no result does not parse the ids
                for workflow_id in _done_ids(body):
                    for event in self._done.get(workflow_id, ()):
                        event.set()
        elif kind == "e":
            message = json.loads(body)
            for queue in self._events:
                queue.put_nowait(message)

    async def _run(self) -> None:
        delay = 0.1
        failures = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
                async with conn:
                    await conn.execute(sql.SQL("listen {}").format(sql.Identifier(self._channel)))
                    if self.ready.is_set():
                        log_event(
                            log,
                            logging.WARNING,
                            "reconnect",
                            channel=self._channel,
                            failures=failures,
                        )
                    else:
                        log_event(log, logging.DEBUG, "listen", channel=self._channel)
                    failures = 0
                    self.ready.set()
                    self._wake_all()
                    delay = 0.1
                    async for notify in conn.notifies():
                        self._dispatch(notify.payload)
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as error:
                failures += 1
                log_event(
                    log,
                    logging.WARNING,
                    "db_error",
                    during="listen",
                    channel=self._channel,
                    failures=failures,
                    retry_in=delay,
                    error=first_line(error),
                )
                self._wake_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
