"""LISTEN on the app's channel with one connection per dashboard process and fan out to the
browsers' Server-Sent Event streams: however many tabs are open, the database sees one
listener and no polling. Notifications are coalesced (at most one `change` per 0.3 s), and a
lost connection is retried with backoff; the browsers are told when it is lost and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator

import psycopg
from psycopg import sql

_COALESCE = 0.3


class Live:
    def __init__(self, dsn: str, channel: str) -> None:
        self._dsn = dsn
        self._channel = channel
        self._queues: set[asyncio.Queue[tuple[str, str]]] = set()
        self._task: asyncio.Task[None] | None = None
        self.up = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hotmesh-ui-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[tuple[str, str]]]:
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=16)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    def _send(self, kind: str, data: str) -> None:
        for queue in self._queues:
            with contextlib.suppress(asyncio.QueueFull):  # a stalled tab misses a beat
                queue.put_nowait((kind, data))

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(sql.SQL("listen {}").format(sql.Identifier(self._channel)))
                    if not self.up:
                        self.up = True
                        self._send("db", "up")
                    delay = 0.2
                    await self._forward(conn)
            except (psycopg.Error, OSError):
                if self.up:
                    self.up = False
                    self._send("db", "down")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)

    async def _forward(self, conn: psycopg.AsyncConnection[object]) -> None:
        """One `change` per burst of notifications, naming the workflows that ended in it."""
        ended: set[str] = set()
        pending: asyncio.TimerHandle | None = None

        def flush() -> None:
            nonlocal pending
            pending = None
            self._send("change", json.dumps({"ended": sorted(ended)}))
            ended.clear()

        try:
            async for notify in conn.notifies():
                kind, _, body = notify.payload.partition(":")
                if kind == "d":
                    with contextlib.suppress(ValueError):
                        ids = json.loads(body) if body.startswith("[") else [body]
                        ended.update(str(i) for i in ids)
                if pending is None:
                    pending = asyncio.get_running_loop().call_later(_COALESCE, flush)
        finally:
            if pending is not None:
                pending.cancel()
