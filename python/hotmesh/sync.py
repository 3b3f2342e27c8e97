"""The sync client (docs/python-api.md): `from hotmesh.sync import MemFlow` for scripts, Flask
and Django. The same API as `hotmesh.MemFlow` with no `await`: each call runs on an event loop
of its own in a background thread, and blocks the calling thread until it is done.

    mf = MemFlow.init(app_id="my_app")
    handle = mf.workflow.start(workflow_name="claims_intake", args=["A42"], task_queue="claims")
    print(handle.result(timeout=60), mf.entity(handle.workflow_id).get())
    mf.close()
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Coroutine
from typing import Any

from hotmesh import client as _client
from hotmesh import entity as _entity

# What a call may give back that is itself a client object: wrapped in turn.
_WRAPPED = (
    _client.Handle,
    _client.WorkflowClient,
    _client.WorkerFactory,
    _client.ScheduleClient,
    _client.QueueClient,
    _entity.EntityClient,
    _entity.Entity,
)


class _Loop:
    """An event loop running in a daemon thread; `run` blocks until a coroutine is done."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="hotmesh-sync", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("the sync client cannot be called from its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class _Sync:
    """A client object whose awaitable results are awaited on the background loop."""

    def __init__(self, target: Any, loop: _Loop) -> None:
        self._target = target
        self._loop = loop

    def __repr__(self) -> str:
        return f"sync {self._target!r}"

    def _wrap(self, value: Any) -> Any:
        if inspect.isawaitable(value):
            value = self._loop.run(_awaited(value))
        if isinstance(value, _WRAPPED):
            return _Sync(value, self._loop)
        return value

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if callable(value) and not isinstance(value, _WRAPPED):

            def call(*args: Any, **kwargs: Any) -> Any:
                return self._wrap(value(*args, **kwargs))

            call.__name__ = name
            call.__doc__ = getattr(value, "__doc__", None)
            return call
        return self._wrap(value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._wrap(self._target(*args, **kwargs))


class MemFlow(_Sync):
    """`hotmesh.MemFlow` without `await`: `MemFlow.init(...)` connects (and migrates, as the
    async client does); `mf.workflow.start(...)`, `handle.result()`, `handle.signal(...)`,
    `handle.interrupt()`, `mf.entity(id).get()` / `.set(...)`, ... block until done.
    `close()` (or a `with` block) stops it."""

    @classmethod
    def init(cls, app_id: str = "memflow", dsn: str | None = None, **options: Any) -> MemFlow:
        """Connect to app `app_id`; the options are `hotmesh.MemFlow.init`'s."""
        loop = _Loop()
        try:
            target = loop.run(_client.MemFlow.init(app_id, dsn, **options))
        except BaseException:
            loop.stop()
            raise
        return cls(target, loop)

    @property
    def app_id(self) -> str:
        return str(self._target.app_id)

    def close(self, grace: float = 10.0) -> None:
        """Stop the client (and any worker started through it), then its thread."""
        try:
            self._loop.run(self._target.close(grace))
        finally:
            self._loop.stop()

    def __enter__(self) -> MemFlow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
