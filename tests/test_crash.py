"""Crash tests: worker processes killed with SIGKILL in the middle of an inline activity and
in the middle of a remote one. A fresh worker finishes the workflow once the dead worker's
lease expires; the side-effect counter shows every step recorded before the kill ran exactly
once, and the history is intact.

The worker processes are tests/workers/crashy.py; the test synchronises with them through
the database (it waits for the side effect of the call it wants to interrupt)."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import Workers, kill9, until_row, workers_fixture
from hotmesh import MemFlow, workflow

pytestmark = pytest.mark.timeout(90)

EXPECTED = ["a done", "b done", "c done", "d done"]


workers = workers_fixture("crashy")


def effect_counts(db: Any, job_id: str) -> dict[str, int]:
    return dict(db.rows("select name, count(*) from effects where job_id = %s group by 1", job_id))


def history(db: Any, job_id: str) -> list[tuple[Any, ...]]:
    return db.rows(
        "select seq, kind, name, status, input, output from steps where job_id = %s order by seq",
        job_id,
    )


def finished_history(job_id: str) -> list[tuple[Any, ...]]:
    return [
        (seq, "activity", "effect", "completed", [name], f"{name} done")
        for seq, name in enumerate("abcd", start=1)
    ]


async def test_kill9_during_inline_activity(mf: MemFlow, db: Any, workers: Workers) -> None:
    handle = await mf.workflow.start(
        workflow_name="crashy_inline", task_queue="wq", workflow_id="crash-inline"
    )
    first = workers.spawn("inline", "c")
    await until_row(db, "select count(*) from effects where name = 'c'")
    # a and b are recorded; c ran its side effect but its outcome is not recorded
    assert history(db, "crash-inline") == finished_history("crash-inline")[:2]
    kill9(first)
    state, owner = db.rows("select state, lease_owner from tasks where job_id = 'crash-inline'")[0]
    assert state == "leased" and owner.split(":")[1] == str(first.pid)  # held by the dead

    second = workers.spawn("inline")
    assert await handle.result(timeout=40) == EXPECTED

    # every step recorded before the kill ran exactly once; c (interrupted before it was
    # recorded) ran once in each process; d once
    assert effect_counts(db, "crash-inline") == {"a": 1, "b": 1, "c": 2, "d": 1}
    pids = db.rows("select name, pid from effects order by id")
    assert pids == [
        ("a", first.pid),
        ("b", first.pid),
        ("c", first.pid),
        ("c", second.pid),
        ("d", second.pid),
    ]
    assert history(db, "crash-inline") == finished_history("crash-inline")
    assert db.rows("select status, context, attempt from jobs") == [("completed", {}, 1)]
    assert db.one("select count(*) from tasks") == 0


async def test_kill9_during_remote_activity(mf: MemFlow, db: Any, workers: Workers) -> None:
    async def crashy_remote() -> list[str]:
        acts = workflow.proxy_activities(task_queue="aq")
        return [await acts.effect(name) for name in "abcd"]

    await mf.worker.create(task_queue="wq", workflow=crashy_remote, lease=1.0)
    handle = await mf.workflow.start(
        workflow_name="crashy_remote", task_queue="wq", workflow_id="crash-remote"
    )
    first = workers.spawn("activities", "c")
    await until_row(db, "select count(*) from effects where name = 'c'")
    # a and b are recorded; c is scheduled, its task leased by the worker about to die
    assert history(db, "crash-remote")[:2] == finished_history("crash-remote")[:2]
    assert history(db, "crash-remote")[2] == (3, "activity", "effect", "scheduled", ["c"], None)
    kill9(first)
    kind, state, attempt = db.rows("select kind, state, attempt from tasks where seq = 3")[0]
    assert (kind, state, attempt) == ("activity", "leased", 1)

    second = workers.spawn("activities")
    assert await handle.result(timeout=40) == EXPECTED

    assert effect_counts(db, "crash-remote") == {"a": 1, "b": 1, "c": 2, "d": 1}
    assert db.rows("select name, attempt, pid from effects where name = 'c' order by id") == [
        ("c", 1, first.pid),
        ("c", 2, second.pid),  # the same task, claimed again after the dead worker's lease
    ]
    assert history(db, "crash-remote") == finished_history("crash-remote")
    assert db.one("select attempt from steps where seq = 3") == 2
    assert db.rows("select status, context, attempt from jobs") == [("completed", {}, 1)]
    assert db.one("select count(*) from tasks") == 0
