"""Rough edges a new user hit following the README (issue 12, item 8): a string for `args`,
`hotmesh ... | head`, and `MemFlow.init` with no reachable database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from hotmesh import MemFlow, workflow
from hotmesh.errors import DatabaseUnreachable, FatalError, InvalidArgument

NOWHERE = "postgresql://someone:s3cret@/hotmesh?host=/nonexistent-hotmesh-socket-dir&port=5433"


async def echo(*args: Any) -> list[Any]:
    return list(args)


async def parked() -> str:
    return str(await workflow.wait_for("go"))


async def child_with_string_args() -> list[Any]:
    return await workflow.exec_child(workflow_name="echo", args="A42")


async def until(check: Any) -> None:
    for _ in range(400):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


# -- args must be a list ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["A42", b"A42", {"case": "A42"}, 42, None, iter(["A42"])])
async def test_start_refuses_args_that_are_not_a_list(mf: MemFlow, db: Any, bad: Any) -> None:
    with pytest.raises(InvalidArgument, match="must be a list of positional arguments, not"):
        await mf.workflow.start(workflow_name="echo", args=bad, task_queue="q", workflow_id="w")
    assert db.one("select count(*) from jobs") == 0
    assert db.one("select count(*) from tasks") == 0


async def test_start_takes_a_list_or_a_tuple(mf: MemFlow, db: Any) -> None:
    await mf.worker.create(task_queue="q", workflow=echo)
    listed = await mf.workflow.start(workflow_name="echo", args=["A42"], task_queue="q")
    tupled = await mf.workflow.start(workflow_name="echo", args=("A42", 1), task_queue="q")
    assert await listed.result(timeout=20) == ["A42"]
    assert await tupled.result(timeout=20) == ["A42", 1]
    assert db.one("select args from jobs where id = %s", tupled.workflow_id) == ["A42", 1]


async def test_client_hook_refuses_string_args(mf: MemFlow, db: Any) -> None:
    await mf.worker.create(task_queue="q", workflow=[parked, echo])
    handle = await mf.workflow.start(workflow_name="parked", task_queue="q", workflow_id="p")
    await until(lambda: _status_is(handle, "waiting"))
    with pytest.raises(InvalidArgument, match="the args of hook echo must be a list"):
        await mf.workflow.hook(workflow_id="p", workflow_name="echo", args="A42")
    assert db.one("select count(*) from threads where job_id = 'p' and thread <> 'main'") == 0
    await handle.signal("go", "done")
    assert await handle.result(timeout=20) == "done"


async def test_sql_refuses_args_that_are_not_a_json_array(mf: MemFlow, db: Any) -> None:
    await mf.worker.create(task_queue="q", workflow=[parked, echo])
    handle = await mf.workflow.start(workflow_name="parked", task_queue="q", workflow_id="p")
    await until(lambda: _status_is(handle, "waiting"))
    before = db.rows("select id, status, args from jobs order by id")
    with pytest.raises(psycopg.Error, match='args of workflow "echo" must be a JSON array') as e1:
        db.one("select start_workflow('echo', '\"A42\"', 'q', 'w2')")
    with pytest.raises(psycopg.Error, match='args of hook "echo" must be a JSON array') as e2:
        db.one("select hook('p', 'echo', '\"A42\"')")
    assert e1.value.sqlstate == e2.value.sqlstate == "22023"
    assert db.rows("select id, status, args from jobs order by id") == before
    assert db.one("select count(*) from threads where job_id = 'p' and thread <> 'main'") == 0


async def test_workflow_child_with_string_args_fails_clearly(mf: MemFlow) -> None:
    await mf.worker.create(task_queue="q", workflow=[child_with_string_args, echo])
    handle = await mf.workflow.start(workflow_name="child_with_string_args", task_queue="q")
    with pytest.raises(FatalError, match="the args of child workflow echo must be a list"):
        await handle.result(timeout=20)


async def _status_is(handle: Any, status: str) -> bool:
    return bool(await handle.status() == status)


# -- hotmesh ... | head ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [("history", "done"), ("show", "done"), ("list", "--json"), ("list",)]
)
async def test_a_closed_pipe_is_a_quiet_exit_0(
    mf: MemFlow, dsn: str, app: str, command: tuple[str, ...]
) -> None:
    await mf.worker.create(task_queue="q", workflow=echo)
    handle = await mf.workflow.start(
        workflow_name="echo", args=["A42"] * 50, task_queue="q", workflow_id="done"
    )
    await handle.result(timeout=20)
    env = {**os.environ, "DATABASE_URL": dsn, "HOTMESH_APP": app}
    code, err = await asyncio.to_thread(_run_reader_gone, [*command], env)
    assert (code, err) == (0, "")


def _run_reader_gone(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `hotmesh COMMAND` with the read end of its stdout closed before it writes (what
    `| head` does once it has its lines): every write is EPIPE."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotmesh.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(60), err


# -- MemFlow.init with no reachable database ----------------------------------------------------


async def test_init_names_the_dsn_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatabaseUnreachable, match=r"connecting with dsn= \(") as caught:
        await MemFlow.init(app_id="x", dsn=NOWHERE)
    assert "nonexistent-hotmesh-socket-dir" in caught.value.message
    assert "s3cret" not in caught.value.message  # the password is never shown
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)


async def test_init_names_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", NOWHERE)
    with pytest.raises(DatabaseUnreachable, match=r"connecting with DATABASE_URL \(user=someone"):
        await MemFlow.init(app_id="x", migrate=False)


async def test_init_names_the_libpq_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setenv("PGHOST", "/nonexistent-hotmesh-socket-dir")
    monkeypatch.setenv("PGPORT", "5433")
    with pytest.raises(
        DatabaseUnreachable,
        match="connecting with the libpq variables: PGHOST=/nonexistent-hotmesh-socket-dir",
    ):
        await MemFlow.init(app_id="x")


async def test_init_names_a_refused_login(dsn: str) -> None:
    """The server answered but refused the connection (no such database): same error, with
    the server's reason."""
    bad_db = psycopg.conninfo.make_conninfo(dsn, dbname="no_such_database_here")
    with pytest.raises(
        DatabaseUnreachable, match=r'database "no_such_database_here" does not exist.*dsn='
    ):
        await MemFlow.init(app_id="x", dsn=bad_db)
