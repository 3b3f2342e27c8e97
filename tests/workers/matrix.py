"""A worker process for the crash matrix (tests/test_crash_matrix.py): it serves a mixed
workflow and, when told to, kills itself with SIGKILL right before or right after one of its
database calls.

    python tests/workers/matrix.py DSN APP SLOT [SLOT ...]

For every SLOT it serves queue "wq-SLOT" (the workflow `matrix_main`, its hook `matrix_hook`
and its child `matrix_child`, concurrency 1, inline activities) from one client and queue
"aq-SLOT" (the remote activity) from a second client of the same process, so the remote call
really goes through the queue. `matrix_main` makes every kind of durable call: entity writes,
an inline and a remote activity, a timer, a hook, a child and a signal (sent by the child,
kept until the parent waits for it). Every `effect` call inserts one row into the app's
`effects` table: the side-effect counter, keyed by workflow and step name.

The kill is injected by counting calls, in this process only: `Database._fetch_on` (every SQL
statement the worker sends, a held claim's included) is wrapped here. The calls that move a
workflow are counted per statement name: a claim that returned tasks, and every other call
except the housekeeping ones (next_due, heartbeat, release_tasks, empty claims), whose number
depends on timing. "After" a call of a held claim's transaction is before its commit.

    HOTMESH_TEST_KILL_AT=<statement>#<n>   die at the n-th call of that statement ...
    HOTMESH_TEST_KILL_WHEN=before|after    ... before it is sent, or once it has committed
    HOTMESH_TEST_TRACE=<file>              append "<statement>#<n>" per counted call and
                                           "killed <when> <statement>#<n>" before dying

MATRIX_LEASE sets the lease (seconds, default 1) so a killed worker's work is taken over fast.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
from typing import Any

import psycopg
from _effects import CONFIG, insert

from hotmesh import MemFlow, workflow
from hotmesh._db import Database

HOUSEKEEPING = frozenset({"next_due", "heartbeat", "release_tasks"})


# -- the kill switch ----------------------------------------------------------------------------


def _trace(line: str) -> None:
    path = os.environ.get("HOTMESH_TEST_TRACE")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


# A held claim (docs/performance.md: a woken workflow's claim and outcome commit together)
# sends a one-item batch where a claim committed alone sends the single call: one label for
# both, so a kill point of the baseline is reached whichever way the run goes.
SAME_CALL = {"complete_tasks": "complete_task", "record_steps": "record_step"}


def install_kill_switch() -> None:
    """Wrap Database._fetch_on, which every statement goes through (a held claim's too):
    count the calls, trace them, die at the chosen one."""
    target = os.environ.get("HOTMESH_TEST_KILL_AT", "")
    when = os.environ.get("HOTMESH_TEST_KILL_WHEN", "after")
    if when not in ("before", "after"):
        raise SystemExit(f"HOTMESH_TEST_KILL_WHEN must be before or after, not {when!r}")
    counts: collections.Counter[str] = collections.Counter()
    original = Database._fetch_on

    def die(label: str) -> None:
        _trace(f"killed {when} {label}")
        os.kill(os.getpid(), signal.SIGKILL)

    async def fetch(
        self: Database,
        conn: psycopg.AsyncConnection[Any],
        name: str,
        params: Any,
        around: Any = None,
    ) -> list[Any]:
        if name in HOUSEKEEPING:
            return await original(self, conn, name, params, around)
        if name == "claim_tasks":  # counted only when it claimed something
            rows = await original(self, conn, name, params, around)
            if rows:
                counts[name] += 1
                label = f"{name}#{counts[name]}"
                _trace(label)
                if label == target:
                    die(label)  # "before" a claim is "after" the call before it
            return rows
        call = SAME_CALL.get(name, name)
        counts[call] += 1
        label = f"{call}#{counts[call]}"
        _trace(label)
        if label == target and when == "before":
            die(label)
        rows = await original(self, conn, name, params, around)
        if label == target:
            die(label)  # committed (a held claim's outcome with its commit), or rolled back
        return rows

    Database._fetch_on = fetch  # type: ignore[method-assign]


# -- the workflow -------------------------------------------------------------------------------


async def effect(name: str) -> str:
    """The side effect: one row per run."""
    async with await psycopg.AsyncConnection.connect(CONFIG["dsn"], autocommit=True) as conn:
        await conn.execute(*insert(name))
    return f"{name} done"


async def matrix_main(tag: str, activity_queue: str) -> Any:
    e = await workflow.entity()
    await e.set({"tag": tag, "log": []})
    inline = workflow.proxy_activities(activities=[effect])
    await e.append("log", await inline.effect("inline"))
    # Every claim of the remote call counts as an attempt, also one whose worker is killed
    # before it runs it: the fuzz loop kills dozens of workers, and the default 3 attempts
    # would (rightly) fail a call that three of them held. Durability is what is tested here.
    remote = workflow.proxy_activities(
        task_queue=activity_queue, retry_policy={"maximum_attempts": 20}
    )
    await e.append("log", await remote.effect("remote"))
    await workflow.sleep_for(0.2)
    hooked = await workflow.exec_hook(workflow_name="matrix_hook", args=[tag])
    me = workflow.get_context().workflow_id
    child = await workflow.exec_child(workflow_name="matrix_child", args=[tag, me])
    ping = await workflow.wait_for("ping")
    await e.merge({"hook": hooked, "child": child, "ping": ping})
    await e.increment("done")
    return await e.get()


async def matrix_hook(tag: str) -> str:
    inline = workflow.proxy_activities(activities=[effect])
    done = await inline.effect("hook")
    e = await workflow.entity()
    await e.append("log", f"{tag} hook")
    return str(done)


async def matrix_child(tag: str, parent: str) -> str:
    inline = workflow.proxy_activities(activities=[effect])
    done = await inline.effect("child")
    e = await workflow.entity()
    await e.set({"parent": parent, "tag": tag})
    await workflow.signal("ping", {"from": "child", "tag": tag}, workflow_id=parent)
    return str(done)


async def main(dsn: str, app: str, slots: list[str]) -> None:
    lease = float(os.environ.get("MATRIX_LEASE", "1.0"))
    flows = await MemFlow.init(app_id=app, dsn=dsn, migrate=False, pool_size=4)
    acts = await MemFlow.init(app_id=app, dsn=dsn, migrate=False, pool_size=4)
    for slot in slots:
        await flows.worker.create(
            task_queue=f"wq-{slot}",
            workflow=[matrix_main, matrix_hook, matrix_child],
            concurrency=1,
            lease=lease,
        )
        await acts.worker.register_activities(
            task_queue=f"aq-{slot}", activities=[effect], concurrency=1, lease=lease
        )
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await asyncio.gather(flows.close(grace=1.0), acts.close(grace=1.0))


if __name__ == "__main__":
    CONFIG.update(dsn=sys.argv[1], app=sys.argv[2])
    install_kill_switch()
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))
