"""Least privilege (sql/99_grants.sql): every app gets two NOLOGIN roles, `<app>_app` and
`<app>_worker`. Tests log in as roles that are members of them (or, where the server does not
let new roles log in without a password we can give, `set role` on the admin connection) and
prove what each may do and what is refused with SQLSTATE 42501 (insufficient_privilege)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from helpers import drop_roles, installed_app, new_app_id
from hotmesh import MemFlow, workflow
from hotmesh._install import migrate

pytestmark = pytest.mark.timeout(60)

# Public functions that only the schema's owner may call: operations, and DDL.
OWNER_ONLY = {
    "prune",
    "prune_batch",
    "prune_signals",
    "prune_runs",
    "set_setting",
    "set_queue_limits",
    "retry_workflow",
    "entity_create_index",
    "create_login",
    "rotate_login",
    "list_logins",
    "revoke_login",
    "set_reviewer_roles",
}


def admin(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def can_manage_roles(dsn: str) -> bool:
    with admin(dsn) as conn:
        row = conn.execute(
            "select rolsuper or rolcreaterole from pg_roles where rolname = current_user"
        ).fetchone()
    return bool(row and row[0])


class As:
    """A session as one role: a real login when the server lets it in, else `set role`."""

    def __init__(self, conn: psycopg.Connection[Any], schema: str, real_login: bool) -> None:
        self.conn = conn
        self.real_login = real_login
        conn.execute(sql.SQL("set search_path = {}").format(sql.Identifier(schema)))

    def one(self, query: Any, *params: Any) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return None if row is None else (row[0] if len(row) == 1 else row)

    def refused(self, query: Any, *params: Any) -> str:
        """The statement fails with insufficient_privilege; returns the message."""
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
            self.conn.execute(query, params)
        assert caught.value.sqlstate == "42501"
        return str(caught.value.diag.message_primary)


class Logins:
    """LOGIN roles that are members of the app's roles, for one test."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.created: list[str] = []
        self.sessions: list[psycopg.Connection[Any]] = []

    def login(self, member_of: str | None) -> tuple[str, str]:
        name = "l_" + uuid.uuid4().hex[:12]
        password = secrets.token_hex(12)
        with admin(self.dsn) as conn:
            conn.execute(
                sql.SQL("create role {} login password {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
            if member_of:
                conn.execute(
                    sql.SQL("grant {} to {}").format(
                        sql.Identifier(member_of), sql.Identifier(name)
                    )
                )
        self.created.append(name)
        return name, password

    def connect(self, name: str, password: str) -> psycopg.Connection[Any] | None:
        try:
            conn = psycopg.connect(
                make_conninfo(self.dsn, user=name, password=password), autocommit=True
            )
        except psycopg.OperationalError:
            return None
        self.sessions.append(conn)
        return conn

    def session(self, schema: str, member_of: str | None) -> As:
        name, password = self.login(member_of)
        conn = self.connect(name, password)
        if conn is not None:
            return As(conn, schema, real_login=True)
        conn = admin(self.dsn)  # the server wants another kind of authentication
        self.sessions.append(conn)
        conn.execute(sql.SQL("set role {}").format(sql.Identifier(name)))
        return As(conn, schema, real_login=False)

    def close(self) -> None:
        for conn in self.sessions:
            conn.close()
        with admin(self.dsn) as conn:
            drop_roles(conn, *self.created)


@pytest.fixture
def logins(dsn: str) -> Iterator[Logins]:
    if not can_manage_roles(dsn):
        pytest.skip("the test database user may not create roles")
    made = Logins(dsn)
    yield made
    made.close()


@pytest.fixture
async def app(dsn: str) -> AsyncIterator[str]:
    """These tests change and drop the app's roles: an app of their own, installed for real
    (the session's app shares its roles with every test's database)."""
    async with installed_app(dsn) as app_id:
        yield app_id


@pytest.fixture
async def other_app(dsn: str) -> AsyncIterator[str]:
    """A second app in the same database, with its own roles."""
    async with installed_app(dsn) as other:
        yield other


@pytest.fixture
def app_roles(app: str, dsn: str) -> Iterator[tuple[str, str]]:
    """The app's roles (made by migrate); dropped after the test, before its schema."""
    if not can_manage_roles(dsn):
        pytest.skip("the test database user may not create roles")
    yield f"{app}_app", f"{app}_worker"
    with admin(dsn) as conn:
        drop_roles(conn, f"{app}_app", f"{app}_worker", f"{app}_reader")


# ------------------------------------------------------------------------ the install


def test_the_roles_are_nologin_and_hold_no_attributes(dsn: str, app_roles: tuple[str, str]) -> None:
    with admin(dsn) as conn:
        rows = conn.execute(
            "select rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls"
            " from pg_roles where rolname = any(%s) order by rolname",
            (list(app_roles),),
        ).fetchall()
    assert rows == [(role, False, False, False, False, False) for role in sorted(app_roles)]


def test_every_function_runs_as_the_owner_with_a_pinned_path_and_none_is_public(
    dsn: str, app: str, app_roles: tuple[str, str]
) -> None:
    with admin(dsn) as conn:
        unsafe = conn.execute(
            # Private helpers without a pinned path are allowed only when nobody but the
            # owner may execute them: they run inside the engine's own (pinned) functions.
            "select p.oid::regprocedure::text from pg_proc as p"
            " where p.pronamespace = %s::regnamespace and p.prokind <> 'p'"
            " and not (p.prosecdef and %s = any(p.proconfig))"
            " and (p.proname !~ '^_' or exists (select from aclexplode(p.proacl) as a"
            " where a.grantee <> p.proowner))",
            (app, f"search_path={app}, pg_temp"),
        ).fetchall()
        public_routines = conn.execute(
            "select p.oid::regprocedure::text from pg_proc as p, aclexplode(p.proacl) as a"
            " where p.pronamespace = %s::regnamespace and a.grantee = 0",
            (app,),
        ).fetchall()
        public_tables = conn.execute(
            "select c.relname from pg_class as c, aclexplode(c.relacl) as a"
            " where c.relnamespace = %s::regnamespace and a.grantee = 0",
            (app,),
        ).fetchall()
        defaulted = conn.execute(  # proacl null means the default: EXECUTE for PUBLIC
            "select count(*) from pg_proc where pronamespace = %s::regnamespace and proacl is null",
            (app,),
        ).fetchone()
    assert unsafe == []
    assert public_routines == [] and public_tables == []
    assert defaulted == (0,)


def test_every_public_function_has_an_owner_on_purpose(
    dsn: str, app: str, app_roles: tuple[str, str]
) -> None:
    """A new public function must be granted to a role or listed as owner-only here."""
    with admin(dsn) as conn:
        rows = conn.execute(
            "select p.proname, has_function_privilege(%s, p.oid, 'execute'),"
            " has_function_privilege(%s, p.oid, 'execute')"
            " from pg_proc as p where p.pronamespace = %s::regnamespace"
            " and p.proname not like '\\_%%'",
            (*app_roles, app),
        ).fetchall()
    unclassified = sorted(n for n, a, w in rows if not (a or w) and n not in OWNER_ONLY)
    assert unclassified == []
    granted_owner_only = sorted(n for n, a, w in rows if (a or w) and n in OWNER_ONLY)
    assert granted_owner_only == []
    # The worker may do everything the application may.
    assert [n for n, a, w in rows if a and not w] == []


# ------------------------------------------------------------------------ the reader role


def test_the_reader_role_reads_and_changes_nothing(
    app: str, app_roles: tuple[str, str], logins: Logins, dsn: str
) -> None:
    """`<app>_reader` (the dashboard's reads): the views, the tables <app>_app reads and the
    functions that change nothing; every function it may call the application may call too,
    and a login of <app>_app may `set role` to it."""
    reader = f"{app}_reader"
    with admin(dsn) as conn:
        rows = conn.execute(
            "select p.proname::text, has_function_privilege(%s, p.oid, 'execute'),"
            " has_function_privilege(%s, p.oid, 'execute')"
            " from pg_proc as p where p.pronamespace = %s::regnamespace"
            " and p.proname !~ '^_'",
            (reader, app_roles[0], app),
        ).fetchall()
        attributes = conn.execute(
            "select rolcanlogin, rolsuper from pg_roles where rolname = %s", (reader,)
        ).fetchone()
    assert attributes == (False, False)
    readable = {name for name, r, _ in rows if r}
    assert {name for name, r, a in rows if r and not a} == set()
    writers = {
        "start_workflow", "signal", "hook", "cancel_workflow", "entity_set", "entity_merge",
        "entity_delete", "entity_append", "create_schedule", "update_schedule",
        "pause_schedule", "resume_schedule", "trigger_schedule", "delete_schedule",
        "set_queue_limits", "claim_tasks", "retry_workflow", "prune_runs",
    }  # fmt: skip
    assert readable & writers == set()
    assert {"workflow_history", "entity_history", "get_queue_limits", "queue_keys"} <= readable

    owner = admin(dsn)
    owner.execute(sql.SQL("set search_path = {}").format(sql.Identifier(app)))
    owner.execute("select start_workflow('w', '[]', 'q', 'r1')")
    owner.execute("select create_schedule('r-s', '@daily', 'w', '[]', 'q')")
    owner.close()
    s = logins.session(app, reader)
    assert s.one("select status from workflows where id = 'r1'") == "pending"
    assert s.one("select workflow_status('r1')") == "pending"
    assert s.one("select status from schedule_fires where id = 'r-s'") == "active"
    assert s.one("select count(*) from queue_backlog") == 1
    assert s.one("select count(*) from jobs") == 1
    s.refused("select start_workflow('w', '[]', 'q', 'r2')")
    s.refused("select signal('go', '1', 'r1')")
    s.refused("select cancel_workflow('r1', 'no')")
    s.refused("select entity_set('r1', '{}')")
    s.refused("select pause_schedule('r-s')")
    s.refused("update jobs set status = 'failed'")
    s.refused("select * from tasks")
    # A login of <app>_app reads as <app>_reader, as the dashboard does.
    a = logins.session(app, app_roles[0])
    a.conn.execute(sql.SQL("set role {}").format(sql.Identifier(reader)))
    assert a.one("select workflow_status('r1')") == "pending"
    a.refused("select start_workflow('w', '[]', 'q', 'r3')")


# ------------------------------------------------------------------------ the application role


def test_the_application_role_starts_signals_reads_and_uses_entities(
    app: str, app_roles: tuple[str, str], logins: Logins
) -> None:
    s = logins.session(app, app_roles[0])
    assert s.one("select start_workflow('w', '[1]', 'q', 'a1')") == "a1"
    assert s.one(
        'select start_workflows(\'[{"workflow_name": "w", "task_queue": "q",'
        ' "workflow_id": "a2"}]\')'
    ) == ["a2"]
    assert s.one("select workflow_status('a1')") == "pending"
    assert s.one("select status from workflow_outcome('a1')") == "pending"
    assert s.one("select get_workflow('a1') ->> 'status'") == "pending"
    assert s.one("select signal('go', '1')")["status"] == "kept"
    assert s.one("select signal('go', '2', 'a1', 'key-1')")["status"] == "kept"
    assert s.one("select hook('a1', 'h', '[]')") == "h1"
    assert s.one("select entity_set('a1', '{\"n\": 1}')") == {"n": 1}
    assert s.one("select entity_increment('a1', 'n', 2)") == 3
    assert s.one("select entity_append('a1', 'log', '\"x\"')") == ["x"]
    assert s.one("select entity_get('a1', 'n')") == 3
    assert s.one("select count(*) from entity_history('a1')") == 3
    assert s.one("select count(*) from entity_find('w', '{\"n\": 3}')") == 1
    assert s.one("select id from entity_find_by_id('w', 'a1')") == "a1"
    assert s.one("select count(*) from entity_find_by_condition('w', 'n', '>', '2')") == 1
    # read: the tables and the views (whose functions run as the owner)
    assert s.one("select args from jobs where id = 'a1'") == [1]
    assert s.one("select count(*) from steps where job_id = 'a1'") == 3
    assert s.one("select name from threads where job_id = 'a1'") == "h"
    assert s.one("select status from workflows where id = 'a1'") == "pending"
    assert s.one("select sum(ready) from queue_backlog") == 3
    assert s.one("select count(*) from failed_workflows") == 0
    assert s.one("select count(*) from workflow_history('a1')") >= 4
    assert s.one("select retry_delay('{}', 2)") is not None
    assert s.one("select get_setting('default_retention')") == 604800
    assert s.one("select cancel_workflow('a1')") == ["a1"]
    # The entity changes are attributed to the login that made them.
    by = s.one("select input ->> 'by' from steps where job_id = 'a1' and thread = 'sql' limit 1")
    assert by.startswith("l_") or not s.real_login


# What the application role may not do: write tables, call worker and owner functions, DDL.
APP_REFUSED = [
    "insert into jobs (id, entity, workflow_name, task_queue, retry_policy)"
    " values ('x', 'w', 'w', 'q', '{}')",
    "update jobs set status = 'completed'",
    "update jobs set context = '{\"hacked\": true}'",
    "delete from jobs",
    "delete from steps",
    "truncate jobs",
    "select * from tasks",
    "update tasks set run_at = now()",
    "select * from signals",
    "select * from signal_keys",
    "select * from start_keys",
    "select * from settings",
    "select * from schema_migrations",
    "select * from claim_tasks(array['q'], 'me', 1)",
    "select complete_task(1, gen_random_uuid(), 'null')",
    "select record_step(1, gen_random_uuid(), 1, 'activity', 'a', 'null', 'null')",
    "select heartbeat(array[1]::bigint[], array[gen_random_uuid()], '1 minute')",
    "select set_setting('default_retention', '1')",
    "select prune_batch()",
    "call prune()",
    "select retry_workflow('a1')",
    "select entity_create_index('w', 'n')",
    "select _transition('a1', 'completed')",
    "select _wake('a1', 'main')",
    "select _delete_jobs(array['a1'])",
    "select _entity_query('w', '[]', 1, 0)",
    "create table mine (x int)",
    "create function mine() returns int language sql as 'select 1'",
]


def test_the_application_role_cannot_write_tables_or_call_worker_and_owner_functions(
    app: str, app_roles: tuple[str, str], logins: Logins, dsn: str
) -> None:
    """Each statement in a session of its own, on one app (installing an app per statement
    cost a second each); every statement is tried and every one that got through is named."""
    jobs = sql.SQL("select to_jsonb(j) from {}.jobs as j").format(sql.Identifier(app))
    with admin(dsn) as conn:
        conn.execute(
            sql.SQL("select {}.start_workflow('w', '[]', 'q', 'a1')").format(sql.Identifier(app))
        )
    problems = []
    for statement in APP_REFUSED:
        with admin(dsn) as conn:
            before = conn.execute(jobs).fetchall()
        s = logins.session(app, app_roles[0])
        try:
            s.refused(statement)
        except (AssertionError, pytest.fail.Exception, psycopg.Error) as error:
            problems.append(f"{statement}: {error!r}")
        s.conn.close()
        with admin(dsn) as conn:
            if conn.execute(jobs).fetchall() != before:
                problems.append(f"{statement}: changed the jobs")
    assert problems == [], "\n".join(problems)


def test_only_the_owner_moves_the_clock(
    app: str, app_roles: tuple[str, str], logins: Logins
) -> None:
    """hotmesh.fake_now is a setting anyone may set; for any role but the owner it would
    expire leases and retention early. The engine refuses it (42501)."""
    s = logins.session(app, app_roles[0])
    if not s.real_login:
        pytest.skip("needs a real login (session_user); the server refused the test's password")
    s.conn.execute("set hotmesh.fake_now = '2100-01-01 00:00:00+00'")
    message = s.refused("select start_workflow('w', '[]', 'q', 'future')")
    assert "only the owner" in message
    s.conn.execute("reset hotmesh.fake_now")
    assert s.one("select start_workflow('w', '[]', 'q', 'now')") == "now"


# ------------------------------------------------------------------------ the worker role


def test_the_worker_role_runs_tasks_through_functions_only(
    app: str, app_roles: tuple[str, str], logins: Logins
) -> None:
    s = logins.session(app, app_roles[1])
    s.one("select start_workflow('w', '[]', 'q', 'w1')")
    task = s.one("select task_id, lease_token from claim_tasks(array['q'], 'me', 1)")
    assert s.one(
        "select record_step(%s, %s, 1, 'activity', 'a', '[]', '1') ->> 'status'", *task
    ) == ("completed")
    assert s.one("select schedule_activity(%s, %s, 2, 'b', '[]', 'acts') ->> 'status'", *task) == (
        "scheduled"
    )
    assert s.one("select entity_step(%s, %s, 3, 'set', 'k', '1') ->> 'status'", *task) == (
        "completed"
    )
    assert s.one("select heartbeat(array[%s]::bigint[], array[%s]::uuid[], '1 minute')", *task) == [
        task[0]
    ]
    s.one("select suspend_task(%s, %s)", *task)
    act = s.one("select task_id, lease_token from claim_tasks(array['acts'], 'me', 1)")
    s.one("select complete_task(%s, %s, '2')", *act)
    main = s.one("select task_id, lease_token from claim_tasks(array['q'], 'me', 1)")
    s.one("select complete_task(%s, %s, '\"done\"')", *main)
    assert s.one("select status, result from jobs where id = 'w1'") == ("completed", "done")
    for statement in (
        "update jobs set status = 'running' where id = 'w1'",
        "insert into tasks (job_id, kind, name, task_queue) values ('w1', 'workflow', 'w', 'q')",
        "update steps set output = '666'",
        "delete from steps",
        "select * from tasks",
        "select prune_batch()",
        "select set_setting('default_retention', '1')",
        "select _retry_policy('{}')",
    ):
        s.refused(statement)
    assert s.one("select count(*) from steps where job_id = 'w1'") == 3


# ------------------------------------------------------------------------ one app, not the other


def test_one_apps_roles_cannot_reach_another_app(
    app: str, app_roles: tuple[str, str], other_app: str, logins: Logins, dsn: str
) -> None:
    with admin(dsn) as conn:
        conn.execute(
            sql.SQL("select {}.start_workflow('w', '[]', 'q', 'theirs')").format(
                sql.Identifier(other_app)
            )
        )
    for role in app_roles:
        s = logins.session(app, role)
        for statement in (
            "select * from {}.jobs",
            "select * from {}.workflows",
            "select {}.start_workflow('w', '[]', 'q', 'mine')",
            "select {}.signal('go', '1')",
            "select {}.entity_get('theirs')",
            "select {}.workflow_status('theirs')",
            "select * from {}.claim_tasks(array['q'], 'me', 1)",
        ):
            s.refused(sql.SQL(statement).format(sql.Identifier(other_app)))
    # ... and the other way round
    for role in (f"{other_app}_app", f"{other_app}_worker"):
        s = logins.session(other_app, role)
        s.refused(sql.SQL("select * from {}.jobs").format(sql.Identifier(app)))
        s.refused(sql.SQL("select {}.entity_get('x')").format(sql.Identifier(app)))
        assert s.one("select workflow_status('theirs')") == "pending"


def test_a_login_without_a_role_reaches_nothing(app: str, logins: Logins) -> None:
    s = logins.session(app, None)
    s.refused(sql.SQL("select * from {}.jobs").format(sql.Identifier(app)))
    s.refused(sql.SQL("select {}.start_workflow('w', '[]', 'q', 'x')").format(sql.Identifier(app)))


# ------------------------------------------------------------------------ installing


def test_an_installer_without_createrole_installs_and_warns(
    dsn: str, logins: Logins, caplog: pytest.LogCaptureFixture
) -> None:
    """No CREATEROLE: the app is installed for its owner alone, with a WARNING that names the
    roles to create; once a DBA created them, the next migrate grants to them."""
    name, password = logins.login(None)
    with admin(dsn) as conn:
        database = conn.info.dbname
        conn.execute(
            sql.SQL("grant create on database {} to {}").format(
                sql.Identifier(database), sql.Identifier(name)
            )
        )
    installer = logins.connect(name, password)
    if installer is None:
        pytest.skip("needs a real login; the server refused the test's password")
    installer.close()
    app = new_app_id()
    installer_dsn = make_conninfo(dsn, user=name, password=password)
    try:
        with caplog.at_level(logging.WARNING, logger="hotmesh.install"):
            asyncio.run(migrate(installer_dsn, app))
        warnings = [r.getMessage() for r in caplog.records if r.name == "hotmesh.install"]
        assert any(f"role {app}_app does not exist" in w for w in warnings), warnings
        assert any(f"create role {app}_worker nologin" in w for w in warnings), warnings
        with admin(dsn) as conn:
            assert not conn.execute(
                "select from pg_roles where rolname like %s", (app + "%",)
            ).fetchone()
            owner = As(psycopg.connect(installer_dsn, autocommit=True), app, True)
            try:
                assert owner.one("select start_workflow('w', '[]', 'q', 'x')") == "x"
            finally:
                owner.conn.close()
            conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(app + "_app")))
            conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(app + "_worker")))
        asyncio.run(migrate(installer_dsn, app))
        s = logins.session(app, app + "_app")
        assert s.one("select workflow_status('x')") == "pending"
        s.refused("select * from claim_tasks(array['q'], 'me', 1)")
    finally:
        with admin(dsn) as conn:
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(app)))
            drop_roles(conn, app + "_app", app + "_worker", app + "_reader")
            conn.execute(
                sql.SQL("revoke create on database {} from {}").format(
                    sql.Identifier(database), sql.Identifier(name)
                )
            )


def test_a_login_role_with_the_apps_role_name_gets_nothing(
    dsn: str, logins: Logins, caplog: pytest.LogCaptureFixture
) -> None:
    app = new_app_id()
    with admin(dsn) as conn:
        conn.execute(sql.SQL("create role {} login").format(sql.Identifier(app + "_app")))
    try:
        with caplog.at_level(logging.WARNING, logger="hotmesh.install"):
            asyncio.run(migrate(dsn, app))
        assert any("is not a hotmesh role" in r.getMessage() for r in caplog.records)
        with admin(dsn) as conn:
            usage = conn.execute(
                "select has_schema_privilege(%s, %s, 'usage'),"
                " has_schema_privilege(%s, %s, 'usage')",
                (app + "_app", app, app + "_worker", app),
            ).fetchone()
        assert usage == (False, True)
    finally:
        with admin(dsn) as conn:
            conn.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(app)))
            drop_roles(conn, app + "_app", app + "_worker", app + "_reader")


# ------------------------------------------------------------------------ from Python


async def test_a_worker_login_and_an_app_login_run_a_workflow(
    app: str, app_roles: tuple[str, str], logins: Logins, dsn: str
) -> None:
    """The Python package as deployed: the application connects as a member of `<app>_app`,
    the worker as a member of `<app>_worker`, neither owns anything."""
    app_login = logins.login(app_roles[0])
    worker_login = logins.login(app_roles[1])
    probe = logins.connect(*app_login)
    if probe is None:
        pytest.skip("needs a real login; the server refused the test's password")
    app_dsn = make_conninfo(dsn, user=app_login[0], password=app_login[1])
    worker_dsn = make_conninfo(dsn, user=worker_login[0], password=worker_login[1])

    async def greet(name: str) -> str:
        entity = await workflow.entity()
        await entity.set(name, "greeted")
        return f"hello {name}"

    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await migrate(app_dsn, app)  # installing needs the owner
    worker = await MemFlow.init(app_id=app, dsn=worker_dsn, migrate=False)
    client = await MemFlow.init(app_id=app, dsn=app_dsn, migrate=False)
    try:
        await worker.worker.create(task_queue="q", workflow=greet)
        handle = await client.workflow.start(
            workflow_name="greet", args=["ada"], task_queue="q", workflow_id="g1"
        )
        assert await handle.result(timeout=20) == "hello ada"
        assert await client.entity("g1").get("greeted") == "ada"
        assert await client.entity("g1").increment("visits") == 1
    finally:
        await client.close(grace=2.0)
        await worker.close(grace=2.0)
