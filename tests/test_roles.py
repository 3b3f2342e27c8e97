"""Login roles (sql/80_roles.sql, `hotmesh roles`): the CLI's lifecycle with the server's
stored SCRAM hash checked against each password it printed, and a revoked worker: its sessions
end, it can no longer connect or claim, and the task it held is taken over by another worker
once its lease expires."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from hotmesh import MemFlow, workflow
from test_cli import hotmesh

pytestmark = pytest.mark.timeout(90)


def unpack(result: Any) -> tuple[int, str, str]:
    return result.code, result.out, result.err


def scram_matches(verifier: str, password: str) -> bool:
    """Whether a stored SCRAM-SHA-256 verifier (RFC 5803) was made from `password`."""
    method, rest = verifier.split("$", 1)
    assert method == "SCRAM-SHA-256"
    salt_part, keys = rest.split("$")
    iterations, salt = salt_part.split(":")
    stored_key = keys.split(":")[0]
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return hashlib.sha256(client_key).digest() == base64.b64decode(stored_key)


@pytest.fixture
def owner(dsn: str, app: str) -> Iterator[psycopg.Connection[Any]]:
    """The owner's connection; drops any login this test's app still has afterwards."""
    conn = psycopg.connect(dsn, autocommit=True)
    yield conn
    schema = sql.Identifier(app)
    query = sql.SQL("select role_name from {}.list_logins() where managed").format(schema)
    for (role,) in conn.execute(query).fetchall():
        conn.execute(sql.SQL("select {}.revoke_login(%s)").format(schema), (role,))
    conn.close()


def verifier(conn: psycopg.Connection[Any], role: str) -> str:
    row = conn.execute("select rolpassword from pg_authid where rolname = %s", (role,)).fetchone()
    assert row is not None
    return str(row[0])


async def test_roles_create_rotate_list_revoke(
    dsn: str, app: str, owner: psycopg.Connection[Any]
) -> None:
    code, out, err = unpack(await hotmesh(dsn, app, "roles", "create", "worker", "w1", "--json"))
    assert code == 0, err
    made = json.loads(out)
    role = f"{app}_worker_w1"
    assert made["role"] == role and made["group"] == f"{app}_worker"
    assert scram_matches(verifier(owner, role), made["password"])

    code, out, err = unpack(await hotmesh(dsn, app, "roles", "list"))
    assert code == 0, err
    assert out.split("\n")[1].split() == [role, f"{app}_worker", "yes", "0"]

    code, out, err = unpack(await hotmesh(dsn, app, "roles", "rotate", role))
    assert code == 0, err
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert lines["role"] == role and lines["password"] != made["password"]
    assert scram_matches(verifier(owner, role), lines["password"])
    assert not scram_matches(verifier(owner, role), made["password"])

    code, out, err = unpack(await hotmesh(dsn, app, "roles", "revoke", role))
    assert (code, out) == (0, f"revoked {role}: 0 session(s) ended\n"), err
    assert owner.execute(
        "select count(*) from pg_roles where rolname = %s", (role,)
    ).fetchone() == (0,)
    code, out, err = unpack(await hotmesh(dsn, app, "roles", "revoke", role))
    assert (code, err) == (1, f'hotmesh: login role "{role}" not found\n')
    code, out, err = unpack(await hotmesh(dsn, app, "roles", "create", "worker", "No-Good"))
    assert code == 1 and "login name must be lowercase letters" in err


calls: list[str] = []
first_call = asyncio.Event()


async def held_activity(label: str) -> str:
    calls.append(label)
    if len(calls) == 1:  # the revoked worker's run: it never finishes
        first_call.set()
        await asyncio.sleep(3600)
    return f"{label} taken over"


async def held_flow(label: str) -> str:
    acts = workflow.proxy_activities(activities=[held_activity])
    return str(await acts.held_activity(label))


async def test_a_revoked_worker_stops_and_its_task_is_taken_over(
    dsn: str, app: str, owner: psycopg.Connection[Any]
) -> None:
    schema = sql.Identifier(app)
    create = sql.SQL("select {}.create_login('worker', 'w1')").format(schema)
    made = owner.execute(create).fetchone()
    assert made is not None
    role, password = made[0]["role"], made[0]["password"]
    login_dsn = make_conninfo(dsn, user=role, password=password)
    calls.clear()
    first_call.clear()

    revoked = await MemFlow.init(app_id=app, dsn=login_dsn, migrate=False)
    other: MemFlow | None = None
    try:
        await revoked.worker.create(task_queue="q", workflow=held_flow, lease=2.0)
        handle = await revoked.workflow.start(
            workflow_name="held_flow", args=["job"], task_queue="q", workflow_id="held"
        )
        await asyncio.wait_for(first_call.wait(), 30)  # the login's worker holds the task
        sessions = owner.execute(
            "select count(*) from pg_stat_activity where usename = %s", (role,)
        ).fetchone()
        assert sessions is not None and sessions[0] > 0

        revoke = sql.SQL("select {}.revoke_login(%s)").format(schema)
        outcome = owner.execute(revoke, (role,)).fetchone()
        # the pool may have opened another session meanwhile: at least those seen were ended
        assert outcome is not None and outcome[0]["terminated"] >= sessions[0]
        assert owner.execute(
            "select count(*) from pg_stat_activity where usename = %s", (role,)
        ).fetchone() == (0,)
        with pytest.raises(psycopg.OperationalError):  # it can no longer connect, so claim
            psycopg.connect(login_dsn).close()

        other = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
        await other.worker.create(task_queue="q", workflow=held_flow, lease=2.0)
        result = await other.workflow.get_handle(handle.workflow_id).result(timeout=60)
        assert result == "job taken over"
        assert calls == ["job", "job"]  # the second run is the other worker's
    finally:
        if other is not None:
            await other.close(grace=1.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(revoked.close(grace=0.5), 5)
