"""Human tasks end to end (docs/people.md): a workflow asks a person and gets the answer that
SQL or Python resolves; bad input is refused with nothing changed and the workflow still
waiting; a task past its due time expires and the workflow's call raises TimeoutFailure (596)
under a moved engine clock; two reviewers racing claim_next_human_task from two connections
never get the same task; many workflows resolved concurrently from SQL while worker processes
are killed each complete once with their own answer; the reviewer role may work tasks and
nothing else; a reviewer's open transaction never stalls the workers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from helpers import SQL, Workers, installed_app, kill9, until, until_row
from hotmesh import (
    IllegalTransition,
    InvalidArgument,
    MemFlow,
    TaskNotFound,
    TimeoutFailure,
    workflow,
)
from test_cli import hotmesh

pytestmark = pytest.mark.timeout(90)

FORM = {
    "type": "object",
    "required": ["approved"],
    "properties": {"approved": {"type": "boolean"}, "note": {"type": "string"}},
}


async def approval(claim: str, due: float | None = None, role: str = "approver") -> Any:
    try:
        return await workflow.ask_human(
            f"Approve {claim}", role=role, metadata={"claim": claim}, form=FORM, due=due
        )
    except TimeoutFailure as error:
        return {"timed_out": error.details.get("timeout"), "code": error.code}


async def until_asked(mf: MemFlow, count: int, role: str = "approver") -> None:
    async def asked() -> bool:
        return len(await mf.human_tasks.list(role=role, limit=1000)) >= count

    await until(asked, f"{count} tasks of role {role}", 30)


async def test_a_workflow_gets_the_answer_resolved_from_sql(mf: MemFlow, db: Any) -> None:
    await mf.worker.create(task_queue="q", workflow=approval)
    handle = await mf.workflow.start(
        workflow_name="approval", args=["A42"], task_queue="q", workflow_id="claim-A42"
    )
    await until_asked(mf, 1)
    [task] = await mf.human_tasks.list(role="approver", metadata={"claim": "A42"})
    assert (task.job_id, task.status, task.form, task.due_at) == ("claim-A42", "open", FORM, None)

    # Refused, nothing changed, the workflow still waits.
    with pytest.raises(InvalidArgument, match=r"\$\.approved must be boolean, not string"):
        await mf.human_tasks.resolve(task.id, "ann", {"approved": "yes"})
    with pytest.raises(TaskNotFound, match="human task 999999 not found"):
        await mf.human_tasks.claim(999999, "ann")
    with pytest.raises(TaskNotFound, match="human task 999999 not found"):
        await mf.human_tasks.resolve(999999, "ann", {"approved": True})
    with pytest.raises(InvalidArgument, match="the metadata filter must be a JSON object"):
        await mf.human_tasks.list(metadata=["x"])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r'unknown human task role "aprover".*approver'):
        await mf.human_tasks.claim_next("aprover", "ann")
    assert await mf.human_tasks.get(task.id) == task
    assert (await mf.human_tasks.claim(task.id, "ann")).claimed_by == "ann"
    claimed = await mf.human_tasks.get(task.id)
    with pytest.raises(IllegalTransition, match="claimed by ann; bob cannot resolve it"):
        await mf.human_tasks.resolve(task.id, "bob", {"approved": True})
    with pytest.raises(IllegalTransition, match="claimed by ann; bob cannot claim it"):
        await mf.human_tasks.claim(task.id, "bob")
    assert await mf.human_tasks.get(task.id) == claimed
    assert db.rows("select status from steps where job_id = 'claim-A42'") == [("scheduled",)]
    assert await handle.status() != "completed"

    done = db.one(
        "select row_to_json(r) from resolve_human_task(%s, 'ann', '{\"approved\": true}') as r",
        task.id,
    )
    assert (done["status"], done["resolved_by"]) == ("resolved", "ann")
    assert await handle.result(timeout=20) == {"approved": True}
    with pytest.raises(IllegalTransition, match="is resolved; it cannot become resolved"):
        await mf.human_tasks.resolve(task.id, "ann", {"approved": False})
    assert [e["event"] for e in (await mf.human_tasks.get(task.id)).events] == [
        "created",
        "claimed",
        "resolved",
    ]


async def test_bad_requests_fail_the_call_in_the_workflow(mf: MemFlow) -> None:
    """A due in the past (or now) and metadata that is not an object fail the call, in the
    workflow, before anything is written; the workflow goes on."""

    async def bad(kind: str) -> str:
        try:
            if kind == "past":
                await workflow.ask_human("t", role="r", due=-1)
            elif kind == "now":
                await workflow.ask_human("t", role="r", due=0)
            else:
                await workflow.ask_human("t", role="r", metadata=[1, 2])  # type: ignore[arg-type]
        except InvalidArgument as error:
            return str(error)
        return "asked"

    await mf.worker.create(task_queue="q", workflow=bad)
    expected = {
        "past": "ask_human due must be a finite number of seconds >= 0",
        "now": "human task due must be a number of seconds more than 0",
        "metadata": "human task metadata must be a JSON object, not [1, 2]",
    }
    for kind, message in expected.items():
        handle = await mf.workflow.start(workflow_name="bad", args=[kind], task_queue="q")
        assert message in await handle.result(timeout=20)
    assert await mf.human_tasks.list(status="open") == []


async def test_a_plain_signal_answers_the_task(mf: MemFlow) -> None:
    """signal() to the signal id a task waits on (a legacy system answering) is delivered and
    resolves the task in the same transaction: nobody known resolved it, the payload is the
    answer; a person cannot answer it again."""

    async def legacy(claim: str) -> Any:
        return await workflow.ask_human(
            f"Approve {claim}", role="approver", form=FORM, signal_id=f"legacy-{claim}"
        )

    await mf.worker.create(task_queue="q", workflow=legacy)
    handle = await mf.workflow.start(workflow_name="legacy", args=["B1"], task_queue="q")
    await until_asked(mf, 1)
    [task] = await mf.human_tasks.list(role="approver")
    await mf.human_tasks.claim(task.id, "ann")
    sent = await mf.workflow.signal("legacy-B1", {"approved": True, "note": "by the ERP"})
    assert sent["status"] == "delivered"
    done = await mf.human_tasks.get(task.id)
    assert (done.status, done.resolved_by, done.answer) == (
        "resolved",
        None,
        {"approved": True, "note": "by the ERP"},
    )
    assert await handle.result(timeout=20) == {"approved": True, "note": "by the ERP"}
    with pytest.raises(IllegalTransition, match="is resolved; it cannot become resolved"):
        await mf.human_tasks.resolve(task.id, "ann", {"approved": False})


async def test_a_wait_deferred_by_a_signal_being_kept_asks_nobody_until_registered(
    mf: MemFlow, dsn: str, app: str, db: Any
) -> None:
    """An application's open transaction keeps signal `early-<n>` when the workflow asks: the
    wait is deferred and no task is written. Committed, the wait takes the signal and nobody
    is ever asked (no task left open); rolled back, the wait registers and the task appears."""

    async def early(n: int) -> Any:
        return await workflow.ask_human("Early", role="approver", signal_id=f"early-{n}")

    await mf.worker.create(task_queue="q", workflow=early)
    keep = sql.SQL("select {}.signal(%s, '\"yes\"')").format(sql.Identifier(app))
    for n, commit in ((1, True), (2, False)):
        with psycopg.connect(dsn) as holder:  # not autocommit: the keep stays open
            holder.execute(keep, (f"early-{n}",))
            handle = await mf.workflow.start(workflow_name="early", args=[n], task_queue="q")
            await until_row(
                db,
                "select status = 'retrying' from steps where job_id = %s and kind = 'signal'",
                handle.workflow_id,
            )
            assert (
                db.one("select count(*) from human_tasks where job_id = %s", handle.workflow_id)
                == 0
            )
            if commit:
                holder.commit()
            else:
                holder.rollback()
        if commit:
            assert await handle.result(timeout=20) == "yes"
            assert (
                db.one("select count(*) from human_tasks where job_id = %s", handle.workflow_id)
                == 0
            )
        else:
            await until_asked(mf, 1)
            [task] = await mf.human_tasks.list(role="approver")
            assert task.job_id == handle.workflow_id
            await mf.human_tasks.resolve(task.id, "ann", "asked")
            assert await handle.result(timeout=20) == "asked"


async def test_the_command_line_works_the_inbox(mf: MemFlow, dsn: str, app: str) -> None:
    await mf.worker.create(task_queue="q", workflow=approval)
    handle = await mf.workflow.start(workflow_name="approval", args=["C1"], task_queue="q")
    await until_asked(mf, 1)
    listed = await hotmesh(dsn, app, "tasks", "list", "--role", "approver", "--json")
    [task] = listed.json()
    assert (task["title"], task["status"]) == ("Approve C1", "open")
    table = await hotmesh(dsn, app, "tasks", "list", "--metadata", '{"claim": "C1"}')
    assert table.code == 0 and "Approve C1" in table.out, table.err
    claimed = await hotmesh(dsn, app, "tasks", "claim-next", "approver", "ann", "--json")
    assert claimed.json()["claimed_by"] == "ann"
    noted = await hotmesh(dsn, app, "tasks", "comment", str(task["id"]), "ann", "a note")
    assert noted.code == 0, noted.err
    bad = await hotmesh(dsn, app, "tasks", "resolve", str(task["id"]), "ann", '{"approved": 1}')
    assert bad.code == 1
    assert "$.approved must be boolean, not number" in bad.err
    done = await hotmesh(
        dsn, app, "tasks", "resolve", str(task["id"]), "ann", '{"approved": true}', "--json"
    )
    assert done.json()["status"] == "resolved"
    assert await handle.result(timeout=20) == {"approved": True}
    shown = await hotmesh(dsn, app, "tasks", "show", str(task["id"]))
    assert "ann: comment a note" in shown.out and "ann: resolved" in shown.out, shown.out


def clocked(dsn: str, at: datetime) -> str:
    """`dsn` with the engine's clock set to `at` for every connection made with it."""
    return make_conninfo(dsn, options=f"-c hotmesh.fake_now={at.isoformat()}")


async def test_a_due_task_expires_and_the_call_raises_a_timeout(
    app: str, dsn: str, db: Any
) -> None:
    """On the engine's clock: the task asked at T0 with a due of 60 s is open until T0 + 60 s;
    a worker whose clock is past it expires the task in its claim and the workflow's call
    raises TimeoutFailure (596, "due")."""
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    before = await MemFlow.init(app_id=app, dsn=clocked(dsn, t0), migrate=False)
    try:
        await before.worker.create(task_queue="q", workflow=approval)
        handle = await before.workflow.start(
            workflow_name="approval", args=["late", 60], task_queue="q", workflow_id="late"
        )
        await until_asked(before, 1)
        [task] = await before.human_tasks.list()
        assert task.due_at == t0 + timedelta(seconds=60)
    finally:
        await before.close()
    assert db.one("select status from human_tasks where id = %s", task.id) == "open"

    after = await MemFlow.init(
        app_id=app, dsn=clocked(dsn, t0 + timedelta(seconds=61)), migrate=False
    )
    try:
        await after.worker.create(task_queue="q", workflow=approval)
        handle = after.workflow.get_handle("late")
        assert await handle.result(timeout=30) == {"timed_out": "due", "code": 596}
        expired = await after.human_tasks.get(task.id)
        assert (expired.status, expired.resolved_by) == ("expired", "engine")
        with pytest.raises(IllegalTransition, match="is expired; it cannot become resolved"):
            await after.human_tasks.resolve(task.id, "ann", {"approved": True})
    finally:
        await after.close()


def make_tasks(db: Any, count: int, role: str = "reviewer", prefix: str = "made") -> list[int]:
    """`count` waiting workflows (`<prefix>-<n>` on queue `prefix`) with one open human task
    each, made from SQL the way a worker makes them (claim, ask_human, suspend): the tasks are
    what the test is about. Returns the ids of every task there is."""
    db.rows(
        "select start_workflow('w', '[]', %s, %s || '-' || i) from generate_series(1, %s) i",
        prefix,
        prefix,
        count,
    )
    for i in range(1, count + 1):
        [(task_id, token)] = db.rows(
            "select task_id, lease_token from claim_tasks(array[%s], 'maker', 1)", prefix
        )
        db.one(
            "select ask_human(%s, %s, 1, 'ask', %s)",
            task_id,
            token,
            Jsonb({"role": role, "title": f"item {i}"}),
        )
        db.one("select suspend_task(%s, %s)", task_id, token)
    return [int(r[0]) for r in db.rows("select id from human_tasks order by id")]


def claim_all(dsn: str, app: str, who: str, got: list[int], start: threading.Barrier) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = sql.SQL("select id from {}.claim_next_human_task('reviewer', %s)").format(
            sql.Identifier(app)
        )
        start.wait()
        while True:
            row = conn.execute(query, (who,)).fetchone()
            if row is None:
                return
            got.append(int(row[0]))


@pytest.mark.parametrize(
    "count", [pytest.param(40, id="40"), pytest.param(200, id="200", marks=pytest.mark.slow)]
)
def test_two_reviewers_racing_claim_next_never_get_the_same_task(
    dsn: str, app: str, db: Any, count: int
) -> None:
    made = make_tasks(db, count)
    got: dict[str, list[int]] = {"ann": [], "bob": []}
    start = threading.Barrier(2)
    threads = [
        threading.Thread(target=claim_all, args=(dsn, app, who, got[who], start)) for who in got
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got["ann"] + got["bob"]) == made  # every task claimed, none twice
    assert not set(got["ann"]) & set(got["bob"])
    assert db.rows(
        "select claimed_by, count(*) from human_tasks where status = 'claimed'"
        " group by claimed_by order by 1"
    ) == [(who, len(ids)) for who, ids in sorted(got.items()) if ids]


@pytest.fixture
def people(dsn: str, app: str, tmp_path: Path) -> Iterator[Workers]:
    workers = Workers("people", dsn, app, logs=tmp_path, PEOPLE_LEASE="1.0")
    yield workers
    workers.close()


@pytest.mark.parametrize(
    "count", [pytest.param(40, id="40"), pytest.param(200, id="200", marks=pytest.mark.slow)]
)
def test_workflows_resolved_concurrently_while_workers_are_killed(
    dsn: str, app: str, db: Any, people: Workers, count: int
) -> None:
    """`count` workflows each wait on a human task; the answers arrive from SQL on four
    connections at once while worker processes are killed and replaced: every workflow
    completes once, with its own answer."""
    first = [people.spawn(), people.spawn()]
    db.rows(
        "select start_workflow('people_main', jsonb_build_array(n), 'pq', 'p-' || n)"
        " from generate_series(1, %s) as n",
        count,
    )
    asyncio.run(until_row(db, "select count(*) = %s from human_tasks", count, limit=60))
    tasks = db.rows("select id, (metadata ->> 'n')::integer from human_tasks order by id")
    query = sql.SQL("select status from {}.resolve_human_task(%s, %s, %s::jsonb)").format(
        sql.Identifier(app)
    )

    def resolve(share: list[tuple[int, int]], start: threading.Barrier) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            start.wait()
            for task_id, n in share:
                row = conn.execute(query, (task_id, f"r{n % 4}", f'{{"n": {n}, "ok": true}}'))
                assert row.fetchone() == ("resolved",)

    start = threading.Barrier(5)
    threads = [threading.Thread(target=resolve, args=(tasks[i::4], start)) for i in range(4)]
    for t in threads:
        t.start()
    start.wait()
    kill9(first[0])  # while the answers arrive
    replacement = people.spawn()
    for t in threads:
        t.join(60)
    kill9(first[1])
    people.spawn()
    assert replacement.poll() is None

    asyncio.run(
        until_row(db, "select count(*) = %s from jobs where status = 'completed'", count, limit=60)
    )
    results = db.rows("select id, result from jobs order by (args ->> 0)::integer")
    assert results == [
        (f"p-{n}", {"n": n, "answer": {"n": n, "ok": True}}) for n in range(1, count + 1)
    ]
    assert db.rows(
        "select count(*), count(distinct job_id) from steps"
        " where kind = 'signal' and status = 'completed'"
    ) == [(count, count)]
    assert db.one("select count(*) from human_tasks where status = 'resolved'") == count


# ------------------------------------------------------------------------ the reviewer role


@pytest.fixture
async def own_app(dsn: str) -> AsyncIterator[str]:
    """An app of its own, installed for real: the test acts as its roles (the session's app
    shares its roles with every test's database)."""
    async with installed_app(dsn) as app_id:
        yield app_id


@pytest.fixture
def own_db(dsn: str, own_app: str) -> Iterator[SQL]:
    handle = SQL(dsn, own_app)
    yield handle
    handle.close()


@pytest.fixture
def reviewer(dsn: str, own_app: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection that acts as <own_app>_reviewer (`set role`)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select rolsuper or rolcreaterole from pg_roles where rolname = current_user"
        ).fetchone()
        if not (row and row[0]):
            pytest.skip("the test database user may not create roles")
        conn.execute(sql.SQL("set search_path = {}").format(sql.Identifier(own_app)))
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(f"{own_app}_reviewer")))
        yield conn


def refused(conn: psycopg.Connection[Any], query: str, *params: Any) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(query, params)


def test_the_reviewer_works_tasks_and_nothing_else(
    reviewer: psycopg.Connection[Any], own_db: SQL
) -> None:
    [task_id] = make_tasks(own_db, 1, role="approver")
    r = reviewer
    assert r.execute("select count(*) from list_human_tasks('approver')").fetchone() == (1,)
    assert r.execute("select title from get_human_task(%s)", (task_id,)).fetchone() == ("item 1",)
    assert r.execute("select status from claim_next_human_task('approver', 'ann')").fetchone() == (
        "claimed",
    )
    r.execute("select comment_human_task(%s, 'ann', 'looks fine')", (task_id,))
    r.execute("select release_human_task(%s, 'ann')", (task_id,))
    r.execute("select claim_human_task(%s, 'ann')", (task_id,))
    r.execute("select reassign_human_task(%s, 'ann', 'ann')", (task_id,))
    assert r.execute(
        "select status from resolve_human_task(%s, 'ann', '\"yes\"')", (task_id,)
    ).fetchone() == ("resolved",)
    # ... and nothing else: no workflow calls, no tables, no views.
    refused(r, "select start_workflow('w', '[]', 'q', 'x')")
    refused(r, "select cancel_workflow('made-1')")
    refused(r, "select signal('go', '1')")
    refused(r, "select entity_get('made-1')")
    refused(r, "select * from human_tasks")
    refused(r, "select * from jobs")
    refused(r, "select * from workflows")
    refused(r, "select * from claim_tasks(array['made'], 'me', 1)")


async def test_the_reviewer_cannot_reach_another_app(
    reviewer: psycopg.Connection[Any], dsn: str
) -> None:
    async with installed_app(dsn) as other:
        for call in ("list_human_tasks()", "claim_next_human_task('r', 'ann')"):
            query = sql.SQL("select * from {}.").format(sql.Identifier(other)) + sql.SQL(call)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reviewer.execute(query)


# ------------------------------------------------------------------------ reviewers by role


def test_a_reviewer_restricted_to_its_roles_works_only_their_tasks(
    dsn: str, own_app: str, own_db: SQL
) -> None:
    """set_reviewer_roles: a review screen's login restricted to approver-eu lists, reads and
    acts on the tasks of that role only (42501 for the others, nothing changed), also after
    `set role <app>_reviewer`; lifted, it sees every task again. Only the owner sets it."""
    row = own_db.one("select rolsuper or rolcreaterole from pg_roles where rolname = current_user")
    if not row:
        pytest.skip("the test database user may not create roles")
    eu = make_tasks(own_db, 1, role="approver-eu", prefix="eu")
    us = [i for i in make_tasks(own_db, 1, role="approver-us", prefix="us") if i not in eu]
    login = f"{own_app}_eu"
    own_db.conn.execute(
        sql.SQL("create role {} login in role {}").format(
            sql.Identifier(login), sql.Identifier(f"{own_app}_reviewer")
        )
    )
    try:
        assert own_db.one(
            "select array_agg(r) from set_reviewer_roles(%s, %s) as r", login, ["approver-eu"]
        ) == ["approver-eu"]
        with psycopg.connect(make_conninfo(dsn, user=login), autocommit=True) as r:
            r.execute(sql.SQL("set search_path = {}").format(sql.Identifier(own_app)))
            before = own_db.rows("select * from human_tasks order by id")

            def refused(query: str, *params: Any) -> None:
                with pytest.raises(
                    psycopg.errors.InsufficientPrivilege,
                    match="may work the human tasks of approver-eu only",
                ):
                    r.execute(query, params)

            assert r.execute("select id from list_human_tasks()").fetchall() == [(eu[0],)]
            for query in (
                "select get_human_task(%s)",
                "select claim_human_task(%s, 'ann')",
                "select release_human_task(%s, 'ann')",
                "select reassign_human_task(%s, 'ann', 'ann')",
                "select comment_human_task(%s, 'ann', 'a note')",
                "select resolve_human_task(%s, 'ann', 'true')",
            ):
                refused(query, us[0])
            refused("select claim_next_human_task('approver-us', 'ann')")
            refused("select reassign_human_task(%s, 'ann', null, 'approver-us')", eu[0])
            assert own_db.rows("select * from human_tasks order by id") == before
            r.execute(sql.SQL("set role {}").format(sql.Identifier(f"{own_app}_reviewer")))
            assert r.execute("select id from list_human_tasks()").fetchall() == [(eu[0],)]
            refused("select get_human_task(%s)", us[0])
            r.execute("reset role")
            # Its own role's task: the whole round.
            assert r.execute(
                "select id from claim_next_human_task('approver-eu', 'ann')"
            ).fetchall() == [(eu[0],)]
            r.execute("select comment_human_task(%s, 'ann', 'fine')", (eu[0],))
            assert r.execute(
                "select status from resolve_human_task(%s, 'ann', 'true')", (eu[0],)
            ).fetchone() == ("resolved",)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                r.execute("select set_reviewer_roles(%s, null)", (login,))
            assert own_db.rows("select * from set_reviewer_roles(%s, null)", login) == []
            assert r.execute("select id from list_human_tasks()").fetchall() == [(us[0],)]
    finally:
        own_db.conn.execute(sql.SQL("drop role {}").format(sql.Identifier(login)))


# ------------------------------------------------------------------------ held calls


# Each function a reviewer may call, held open on a task of its own (%(id)s); the answer of
# resolve_human_task is the one its workflow must end with. (tests/test_chaos.py holds the
# application's other calls; these need a task, which its held workflows do not ask for.)
HELD: dict[str, str] = {
    "list_human_tasks": "select * from list_human_tasks(metadata => '{}')",
    "get_human_task": "select * from get_human_task(%(id)s)",
    "claim_human_task": "select * from claim_human_task(%(id)s, 'held')",
    # Its own role: the next open task of a shared one may be another held call's.
    "claim_next_human_task": "select * from claim_next_human_task('approver-held', 'held')",
    "release_human_task": "select * from release_human_task(%(id)s, 'pre')",
    "reassign_human_task": "select * from reassign_human_task(%(id)s, 'held', 'held')",
    "comment_human_task": "select * from comment_human_task(%(id)s, 'held', 'a note')",
    "resolve_human_task": "select * from resolve_human_task(%(id)s, 'held',"
    ' \'{"approved": true, "note": "held"}\')',
}


async def test_reviewers_open_transactions_never_stall_the_workers(
    mf: MemFlow, dsn: str, app: str, db: Any
) -> None:
    """Every reviewer call, each on a task of its own, held in an open transaction: other
    workflows meanwhile ask and are answered, and no backend ever waits for a holder but
    the test's own calls; after the COMMITs every held workflow finishes. The holders block
    the event loop the worker runs on while they execute, so each must take only its own
    task's locks (claim_next its own role) and never wait: lock_timeout makes a wait fail."""
    reviewer_calls = {
        name
        for (name,) in db.rows(
            "select p.proname::text from pg_proc as p where p.pronamespace = %s::regnamespace"
            " and has_function_privilege(%s, p.oid, 'execute')",
            app,
            f"{app}_reviewer",
        )
    }
    assert reviewer_calls == set(HELD), "a reviewer function with no held call in HELD"
    await mf.worker.create(task_queue="q", workflow=approval)
    names = sorted(HELD)
    held = {
        name: await mf.workflow.start(
            workflow_name="approval",
            args=[f"held-{name}", None, "approver-held" if "next" in name else "approver"],
            task_queue="q",
        )
        for name in names
    }
    await until_asked(mf, len(names) - 1)
    await until_asked(mf, 1, "approver-held")
    ids = {
        name: (await mf.human_tasks.list(metadata={"claim": f"held-{name}"}))[0].id
        for name in names
    }
    await mf.human_tasks.claim(ids["release_human_task"], "pre")
    holders = [psycopg.connect(dsn) for _ in names]  # not autocommit: each stays open
    try:
        for holder, name in zip(holders, names, strict=True):
            holder.execute(sql.SQL("set search_path = {}").format(sql.Identifier(app)))
            holder.execute("set lock_timeout = '5s'")
            holder.execute(HELD[name], {"id": ids[name]})  # type: ignore[arg-type]
        pids = [h.info.backend_pid for h in holders]
        others = [
            await mf.workflow.start(workflow_name="approval", args=[f"o{n}"], task_queue="q")
            for n in range(3)
        ]
        for n in range(3):
            await until(
                lambda n=n: mf.human_tasks.list(metadata={"claim": f"o{n}"}),  # type: ignore[misc]
                f"workflow o{n} to ask",
                30,
            )
            [t] = await mf.human_tasks.list(metadata={"claim": f"o{n}"})
            await mf.human_tasks.resolve(t.id, "bob", {"approved": False})
        assert [await h.result(timeout=20) for h in others] == [{"approved": False}] * 3
        waiting = db.one(
            "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
            " and pg_blocking_pids(pid) && %s::integer[]",
            pids,
        )
        assert waiting == 0
    finally:
        for holder in holders:
            holder.commit()
            holder.close()
    assert await held["resolve_human_task"].result(timeout=20) == {
        "approved": True,
        "note": "held",
    }
    for name in names:
        if name != "resolve_human_task":
            task = await mf.human_tasks.get(ids[name])
            if task.status == "claimed" and task.claimed_by != "ann":
                await mf.human_tasks.release(task.id, task.claimed_by or "")
            await mf.human_tasks.reassign(task.id, "ann", None)
            await mf.human_tasks.resolve(task.id, "ann", {"approved": True})
            assert await held[name].result(timeout=20) == {"approved": True}
