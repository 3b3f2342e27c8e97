"""Races, made deterministic: one session holds a lock in an open transaction, the other
operation starts in a second session, `pg_stat_activity` (and `pg_blocking_pids`) proves it
waits on that very session, then the lock is released and the outcome is checked. Where the
right behaviour is *not* to wait (claims use SKIP LOCKED) the test proves the call returned
while the lock was still held. No sleep is used to order anything."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

import psycopg
import pytest

from helpers import until
from hotmesh import MemFlow, workflow

pytestmark = pytest.mark.timeout(60)

T0 = "2031-01-01 00:00:00+00"


class Session:
    """One autocommit connection on the app schema (an outside application, a worker)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.pid = conn.info.backend_pid

    async def one(self, query: str, *params: Any) -> Any:
        row = await (await self.conn.execute(query, params)).fetchone()  # type: ignore[arg-type]
        return None if row is None else (row[0] if len(row) == 1 else row)

    async def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        return await (await self.conn.execute(query, params)).fetchall()  # type: ignore[arg-type]


@pytest.fixture
async def sessions(app: str, dsn: str) -> AsyncIterator[list[Session]]:
    """Three sessions on the app: two actors and an observer (sees committed data only)."""
    conns = [
        await psycopg.AsyncConnection.connect(dsn, autocommit=True, options=f"-c search_path={app}")
        for _ in range(3)
    ]
    for conn in conns:  # the engine's clock, so lease expiry is a setting, not a wait
        await conn.execute("select set_config('hotmesh.fake_now', %s, false)", (T0,))
    try:
        yield [Session(c) for c in conns]
    finally:
        for conn in conns:
            await conn.close()


async def blocked_by(observer: Session, waiter: int, holder: int) -> None:
    """Return once backend `waiter` waits on a lock held by backend `holder` (bounded poll)."""
    async with asyncio.timeout(10):
        while True:
            row = await observer.one(
                "select wait_event_type, %s = any(pg_blocking_pids(pid))"
                " from pg_stat_activity where pid = %s",
                holder,
                waiter,
            )
            if row is not None and row[0] == "Lock" and row[1]:
                return
            await asyncio.sleep(0.005)


async def outcome(call: Awaitable[Any]) -> Any:
    """The call's result, or the SQLSTATE it raised."""
    try:
        return await call
    except psycopg.Error as error:
        return error.sqlstate


async def open_race(
    obs: Session,
    holder: Session,
    hold: str,
    waiter: Session,
    call: str,
    *,
    hold_params: Sequence[Any] = (),
    call_params: Sequence[Any] = (),
) -> tuple[Any, Any]:
    """`holder` runs `hold` in an open transaction; `waiter`'s `call` is proved to wait on it;
    then `holder` commits. What `hold` returned, and the call's outcome (result or SQLSTATE)."""
    await holder.conn.execute("begin")
    held = await holder.one(hold, *hold_params)
    waiting = asyncio.create_task(outcome(waiter.one(call, *call_params)))
    await blocked_by(obs, waiter.pid, holder.pid)
    await holder.conn.execute("commit")
    return held, await waiting


async def started_claim(s: Session, wid: str, worker: str) -> Any:
    """Workflow `wid` started on queue q, its activation claimed by `worker`: (task_id, token)."""
    await s.one("select start_workflow('w', '[]', 'q', %s)", wid)
    return await s.one("select task_id, lease_token from claim_tasks(array['q'], %s, 1)", worker)


async def waiting_workflow(s: Session, wid: str, signal_id: str) -> None:
    """A workflow whose main thread waits for `signal_id`: no task left, status waiting."""
    task = await started_claim(s, wid, "w1")
    await s.one("select wait_signal(%s, %s, 1, %s, null)", *task, signal_id)
    await s.one("select suspend_task(%s, %s)", *task)
    assert await s.one("select status from jobs where id = %s", wid) == "waiting"
    assert await s.one("select count(*) from tasks where job_id = %s", wid) == 0


# ------------------------------------------------------------------------ two workers, one task


async def test_two_starts_with_one_idempotency_key(sessions: list[Session]) -> None:
    """The second start waits for the first's open transaction: once it commits, the second
    returns its run; had it rolled back, the second takes the key and starts its own."""
    a, b, obs = sessions
    start = "select start_workflow('w', '[]', 'q', %s, null, '{\"idempotency_key\": \"k\"}')"
    held, second = await open_race(
        obs, a, start, b, start, hold_params=["first"], call_params=["second"]
    )
    assert (held, second) == ("first", "first")
    await obs.one("select _delete_jobs(array['first'])")
    await a.conn.execute("begin")
    assert await a.one(start, "again") == "again"
    waiting = asyncio.create_task(outcome(b.one(start, "mine")))
    await blocked_by(obs, b.pid, a.pid)
    await a.conn.execute("rollback")
    assert await waiting == "mine"
    assert await obs.rows("select id from jobs") == [("mine",)]
    assert await obs.rows("select idempotency_key, job_id from start_keys") == [("k", "mine")]


async def test_two_workers_claiming_one_task(sessions: list[Session]) -> None:
    a, b, obs = sessions
    await obs.one("select start_workflow('w', '[]', 'q', 'one')")
    await a.conn.execute("begin")
    claimed_a = await a.rows("select task_id, lease_token from claim_tasks(array['q'], 'A', 5)")
    assert len(claimed_a) == 1
    # B does not wait for A's open claim (SKIP LOCKED): it returns at once, with nothing.
    assert await b.rows("select * from claim_tasks(array['q'], 'B', 5)") == []
    await a.conn.execute("commit")
    assert await b.rows("select * from claim_tasks(array['q'], 'B', 5)") == []
    row = await obs.one("select lease_owner, lease_token, attempt from tasks where job_id = 'one'")
    assert row == ("A", claimed_a[0][1], 1)


async def test_a_claim_rolled_back_leaves_the_task_to_the_other_worker(
    sessions: list[Session],
) -> None:
    a, b, obs = sessions
    await obs.one("select start_workflow('w', '[]', 'q', 'one')")
    await a.conn.execute("begin")
    assert len(await a.rows("select * from claim_tasks(array['q'], 'A', 1)")) == 1
    await a.conn.execute("rollback")
    claimed = await b.rows("select job_id, attempt from claim_tasks(array['q'], 'B', 1)")
    assert claimed == [("one", 1)]  # the rolled-back claim did not count as an attempt


async def test_a_claim_skips_a_locked_task_and_takes_the_next(sessions: list[Session]) -> None:
    """A task row locked by anything (here: a suspend or completion in progress) is skipped,
    not waited for; the next due task is claimed instead."""
    a, b, obs = sessions
    await obs.one("select start_workflow('w', '[]', 'q', 'first')")
    await obs.one("select set_config('hotmesh.fake_now', %s, false)", "2031-01-01 00:00:01+00")
    await obs.one("select start_workflow('w', '[]', 'q', 'second')")
    await a.conn.execute("begin")
    await a.one("select from tasks where job_id = 'first' for update")
    await b.one("select set_config('hotmesh.fake_now', %s, false)", "2031-01-01 00:00:02+00")
    claimed = await b.rows("select job_id from claim_tasks(array['q'], 'B', 5)")
    assert claimed == [("second",)]
    await a.conn.execute("commit")
    assert await b.rows("select job_id from claim_tasks(array['q'], 'B', 5)") == [("first",)]


# ------------------------------------------------------------------------ a signal racing a cancel


async def test_a_cancel_in_progress_makes_a_targeted_signal_wait_then_refuse(
    sessions: list[Session],
) -> None:
    canceller, sender, obs = sessions
    await waiting_workflow(obs, "wf", "go")
    cancelled, signal = await open_race(
        obs, canceller, "select cancel_workflow('wf')", sender, "select signal('go', '1', 'wf')"
    )
    assert cancelled == ["wf"]
    # After the cancel: the workflow waits for nothing, a kept signal would be lost.
    assert signal == "HM003"
    assert await obs.one("select status from jobs where id = 'wf'") == "cancelled"
    assert await obs.one("select status from steps where job_id = 'wf'") == "scheduled"
    assert await obs.one("select count(*) from signals") == 0
    assert await obs.one("select count(*) from tasks") == 0


async def test_a_cancel_in_progress_makes_an_untargeted_signal_wait_then_keep_it(
    sessions: list[Session],
) -> None:
    canceller, sender, obs = sessions
    await waiting_workflow(obs, "wf", "go")
    _, kept = await open_race(
        obs, canceller, "select cancel_workflow('wf')", sender, "select signal('go', '1')"
    )
    assert kept["status"] == "kept"  # for the next workflow that waits for "go"
    assert await obs.one("select count(*) from signals where signal_id = 'go'") == 1
    assert await obs.one("select status from steps where job_id = 'wf'") == "scheduled"
    assert await obs.one("select count(*) from tasks") == 0


async def test_a_signal_in_progress_makes_a_cancel_wait_then_remove_what_it_woke(
    sessions: list[Session],
) -> None:
    sender, canceller, obs = sessions
    await waiting_workflow(obs, "wf", "go")
    delivered, cancel = await open_race(
        obs, sender, "select signal('go', '1', 'wf')", canceller, "select cancel_workflow('wf')"
    )
    assert delivered["status"] == "delivered"
    assert cancel == ["wf"]
    # The signal was delivered first (its step stays recorded); the cancel then removed the
    # activation the signal had queued, so nothing of the cancelled workflow runs.
    assert await obs.one("select status, output from steps where job_id = 'wf'") == (
        "completed",
        1,
    )
    assert await obs.one("select status from jobs where id = 'wf'") == "cancelled"
    assert await obs.one("select count(*) from tasks") == 0


# ------------------------------------------------------------------------ a lease expiring


async def test_a_stale_completion_waits_for_the_takeover_and_is_refused(
    sessions: list[Session],
) -> None:
    """Worker A's lease expired; B's claim (open) took the activation over with a new token.
    A's complete_task with the old token waits for B's claim and then gets HM004; the
    workflow's outcome is B's, recorded once."""
    old, new, obs = sessions
    task_a = await started_claim(old, "wf", "A")
    # A's lease (30 s) has expired on B's clock
    await new.one("select set_config('hotmesh.fake_now', %s, false)", "2031-01-01 00:00:31+00")
    task_b, stale = await open_race(
        obs,
        new,
        "select task_id, lease_token from claim_tasks(array['q'], 'B', 1)",
        old,
        "select complete_task(%s, %s, '\"A\"')",
        call_params=task_a,
    )
    assert task_b[0] == task_a[0] and task_b[1] != task_a[1]
    assert stale == "HM004"
    assert await obs.one("select status, result from jobs where id = 'wf'") == ("running", None)
    await new.one("select complete_task(%s, %s, '\"B\"')", *task_b)
    assert await obs.one("select status, result from jobs where id = 'wf'") == ("completed", "B")
    assert await outcome(old.one("select complete_task(%s, %s, '\"A\"')", *task_a)) == "HM005"
    assert await obs.one("select result from jobs where id = 'wf'") == "B"


async def test_a_completion_in_progress_is_skipped_by_the_takeover_claim(
    sessions: list[Session],
) -> None:
    """The other order: A completes (open transaction) just as its lease expires. B's claim
    does not wait and does not take the task; A's outcome is the one recorded."""
    old, new, obs = sessions
    task_a = await started_claim(old, "wf", "A")
    await old.conn.execute("begin")
    await old.one("select complete_task(%s, %s, '\"A\"')", *task_a)
    await new.one("select set_config('hotmesh.fake_now', %s, false)", "2031-01-01 00:00:31+00")
    assert await new.rows("select * from claim_tasks(array['q'], 'B', 1)") == []
    await old.conn.execute("commit")
    assert await new.rows("select * from claim_tasks(array['q'], 'B', 1)") == []
    assert await obs.one("select status, result from jobs where id = 'wf'") == ("completed", "A")


@pytest.mark.parametrize("call", ["complete", "fail", "bury"])
async def test_a_stale_activity_worker_cannot_finish_the_retaken_activity(
    sessions: list[Session], call: str
) -> None:
    """An activity task retaken after its lease expired: the old worker's complete, fail or
    bury waits for the takeover, then is refused (HM004); the step's outcome is the new
    worker's, recorded once."""
    old, new, obs = sessions
    act = await started_claim(obs, "wf", "W")
    await obs.one("select schedule_activity(%s, %s, 1, 'charge', '[]', 'acts')", *act)
    await obs.one("select suspend_task(%s, %s)", *act)
    task_a = await old.one("select task_id, lease_token from claim_tasks(array['acts'], 'A', 1)")
    await new.one("select set_config('hotmesh.fake_now', %s, false)", "2031-01-01 00:00:31+00")
    statement = {
        "complete": "select complete_task(%s, %s, '\"A\"')",
        "fail": 'select fail_task(%s, %s, \'{"message": "A failed"}\')',
        "bury": 'select bury_task(%s, %s, \'{"message": "A buried"}\')',
    }[call]
    task_b, stale = await open_race(
        obs,
        new,
        "select task_id, lease_token from claim_tasks(array['acts'], 'B', 1)",
        old,
        statement,
        call_params=task_a,
    )
    assert task_b[0] == task_a[0]
    assert stale == "HM004"
    task_row = await obs.one(
        "select state, lease_owner, lease_token, error from tasks where id = %s", task_a[0]
    )
    assert task_row == ("leased", "B", task_b[1], None)
    await new.one("select complete_task(%s, %s, '\"B\"')", *task_b)
    steps = await obs.rows("select seq, status, output from steps where job_id = 'wf'")
    assert steps == [(1, "completed", "B")]


# ------------------------------------------------------------------------ entity: SQL vs a hook


async def hook_task(s: Session, wid: str) -> tuple[int, str]:
    """A running workflow with a hook thread h1 whose activation is claimed."""
    main = await started_claim(s, wid, "W")
    await s.one("select wait_signal(%s, %s, 1, 'done', null)", *main)
    await s.one("select suspend_task(%s, %s)", *main)
    assert await s.one("select hook(%s, 'bump', '[]', 'hooks')", wid) == "h1"
    task = await s.one("select task_id, lease_token from claim_tasks(array['hooks'], 'H', 1)")
    return int(task[0]), str(task[1])


async def test_an_entity_write_from_sql_holds_off_a_hook_writing_it(
    sessions: list[Session],
) -> None:
    app_session, hook_worker, obs = sessions
    task = await hook_task(obs, "wf")
    incremented, recorded = await open_race(
        obs,
        app_session,
        "select entity_increment('wf', 'n', 1)",
        hook_worker,
        "select entity_step(%s, %s, 1, 'increment', 'n', '2')",
        call_params=task,
    )
    assert incremented == 1
    # The hook applied its change to the document the SQL caller committed: no lost update.
    assert (recorded["status"], recorded["output"]) == ("completed", 3)
    assert await obs.one("select context, entity_version from jobs where id = 'wf'") == (
        {"n": 3},
        2,
    )
    history = await obs.rows("select version, thread, document from entity_history('wf')")
    assert history == [(1, "sql", {"n": 1}), (2, "h1", {"n": 3})]


async def test_a_hook_writing_the_entity_holds_off_a_write_from_sql(
    sessions: list[Session],
) -> None:
    hook_worker, app_session, obs = sessions
    task = await hook_task(obs, "wf")
    _, write = await open_race(
        obs,
        hook_worker,
        "select entity_step(%s, %s, 1, 'append', 'log', '\"hook\"')",
        app_session,
        "select entity_append('wf', 'log', '\"sql\"', 'k1')",
        hold_params=task,
    )
    assert write == ["hook", "sql"]
    assert await obs.one("select context from jobs where id = 'wf'") == {"log": ["hook", "sql"]}
    # A retry of the SQL call (same idempotency key) returns its first result, changes nothing.
    assert await app_session.one("select entity_append('wf', 'log', '\"sql\"', 'k1')") == [
        "hook",
        "sql",
    ]
    assert await obs.one("select entity_version from jobs where id = 'wf'") == 2


async def test_a_real_hook_waits_for_an_open_entity_write_and_then_applies(
    mf: MemFlow, app: str, dsn: str
) -> None:
    """End to end: a worker runs a hook that increments the entity while an application holds
    an entity write open; the worker's call waits on that transaction (not an error, not a
    retry loop) and applies on top of it once it commits."""

    async def holder() -> str:
        await workflow.wait_for("done")
        entity = await workflow.entity()
        return json.dumps(await entity.get())

    async def bump() -> int:
        await workflow.wait_for("go")
        entity = await workflow.entity()
        return int(await entity.increment("n", 2))

    await mf.worker.create(task_queue="q", workflow=[holder, bump])
    handle = await mf.workflow.start(workflow_name="holder", task_queue="q", workflow_id="wf")
    options = f"-c search_path={app}"
    async with (
        await psycopg.AsyncConnection.connect(dsn, autocommit=True, options=options) as conn,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True, options=options) as watch,
    ):
        obs = Session(watch)

        async def waiting() -> bool:
            return await obs.one("select status from jobs where id = 'wf'") == "waiting"

        await until(waiting, "the workflow to wait", every=0.005)  # for its signal
        await mf.workflow.hook(workflow_id="wf", workflow_name="bump", task_queue="q")
        await until(  # the hook waits for its signal too
            lambda: obs.one(
                "select exists (select from steps where job_id = 'wf' and thread = 'h1'"
                " and kind = 'signal' and status = 'scheduled')"
            ),
            "the hook's wait",
            every=0.005,
        )
        app_session = Session(conn)
        await conn.execute("begin")
        await app_session.one("select entity_increment('wf', 'n', 1)")
        # A signal does not need the entity's lock; the hook it wakes does.
        await mf.workflow.signal("go", workflow_id="wf")
        await until(  # some worker backend waits on our transaction
            lambda: obs.one(
                "select exists (select from pg_stat_activity"
                " where wait_event_type = 'Lock' and %s = any(pg_blocking_pids(pid)))",
                app_session.pid,
            ),
            "a worker backend blocked by us",
            every=0.005,
        )
        await conn.execute("commit")
    async with asyncio.timeout(20):
        while True:
            row = await mf.workflow.get_handle("wf").describe()
            if row["context"] == {"n": 3}:
                break
            await asyncio.sleep(0.01)
    await mf.workflow.signal("done", workflow_id="wf")
    assert json.loads(await handle.result(timeout=20)) == {"n": 3}
