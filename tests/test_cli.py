"""The `hotmesh` command, run as a subprocess against the real Postgres: migrate, worker (a
real worker process, stopped with SIGTERM), start --wait, list / show / history / queues
(text, and --json parsed back), signal, cancel, retry, prune, setting; and bad input (unknown
id, bad JSON, unreachable database, app never migrated, ...): one line on stderr, a non-zero
exit, no traceback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import pytest

from helpers import drop_app, python, until
from hotmesh import FatalError, MemFlow, workflow
from hotmesh._install import migrations
from hotmesh.errors import WorkflowNotFound

pytestmark = pytest.mark.timeout(90)


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


async def hotmesh(dsn: str, app: str, *args: str, cwd: Path | None = None) -> Result:
    """Run `hotmesh ARGS` (`python -m hotmesh.cli`, forked by the tests' forkserver) with
    DATABASE_URL and HOTMESH_APP set; the event loop keeps running meanwhile, so in-process
    workers work."""
    env = {**os.environ, "DATABASE_URL": dsn, "HOTMESH_APP": app}
    return await asyncio.to_thread(_hotmesh, env, args, cwd)


def _hotmesh(env: dict[str, str], args: tuple[str, ...], cwd: Path | None) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp, "out"), Path(tmp, "err")
        code = python("-m", "hotmesh.cli", *args, env=env, stdout=out, stderr=err, cwd=cwd).wait(60)
        return Result(code, out.read_text(), err.read_text())


# -- a real worker process --------------------------------------------------------------------

FLOWS = """
from hotmesh import workflow

def shout(text):
    return text.upper()

async def greet(name):
    acts = workflow.proxy_activities(activities=[shout])
    return {"greeting": await acts.shout("hello " + name)}
"""


async def test_migrate_worker_and_start(dsn: str, app: str, tmp_path: Path) -> None:
    fresh = f"{app}_fresh"
    try:
        installed = await hotmesh(dsn, fresh, "migrate")
        versions = ", ".join(f"{v:04d}" for v, _ in migrations())
        assert installed.out.strip() == (
            f"app {fresh}: migrations applied: {versions}; functions installed "
            f"(engine {version('hotmesh')}, migration {migrations()[-1][0]:04d})"
        )
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            drop_app(conn, fresh)
    migrated = await hotmesh(dsn, app, "migrate")
    assert migrated.code == 0
    assert migrated.out.strip() == (
        f"app {app}: migrations applied: none (up to date); functions installed "
        f"(engine {version('hotmesh')}, migration {migrations()[-1][0]:04d})"
    )
    (tmp_path / "cli_flows.py").write_text(FLOWS)
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hotmesh.cli",
        "--log-level",
        "INFO",
        "worker",
        "cli_flows:greet",
        "--queue",
        "cliq",
        "--activities",
        "cli_flows:shout",
        "--app",
        app,
        "--dsn",
        dsn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        assert worker.stdout is not None and worker.stderr is not None
        banner = await asyncio.wait_for(worker.stdout.readline(), 30)
        assert banner.decode().startswith(f"worker serving {app}/cliq: greet, shout")
        started = await hotmesh(
            dsn,
            app,
            "start",
            "greet",
            "--args",
            '["ann"]',
            "--queue",
            "cliq",
            "--id",
            "c1",
            "--wait",
        )
        assert started.code == 0, started.err
        assert started.out.splitlines() == ["c1", '{"greeting": "HELLO ANN"}']
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), 30)
    assert worker.returncode == 0
    log = (await worker.stderr.read()).decode()
    assert "event=claim" in log and "workflow=c1" in log
    assert "event=complete" in log
    assert "event=worker_stop" in log
    assert "Traceback" not in log


# -- in-process workers, the CLI reads and steers ---------------------------------------------


def double(x: int) -> int:
    return 2 * x


async def happy(x: int) -> int:
    acts = workflow.proxy_activities(activities=[double])
    entity = await workflow.entity()
    await entity.set({"stage": "doubling"})
    return int(await acts.double(x))


async def waits() -> Any:
    return await workflow.wait_for("approve")


async def boom() -> None:
    raise FatalError("kaboom")


async def dad(kid: str) -> Any:
    return await workflow.exec_child(workflow_name="waits", task_queue="cli", workflow_id=kid)


async def until_waiting(mf: MemFlow, *ids: str) -> None:
    async def waits(workflow_id: str) -> bool:
        try:
            return bool((await mf.workflow.get_handle(workflow_id).describe())["waits"])
        except WorkflowNotFound:
            return False  # a child its parent has not started yet

    async def all_wait() -> bool:
        return all([await waits(i) for i in ids])

    await until(all_wait, f"{ids} to wait", every=0.05)


async def test_read_commands(mf: MemFlow, dsn: str, app: str) -> None:
    await mf.worker.create(task_queue="cli", workflow=[happy, waits, boom])
    await (
        await mf.workflow.start(
            workflow_name="happy", args=[21], task_queue="cli", workflow_id="c-happy"
        )
    ).result(timeout=20)
    await mf.workflow.start(workflow_name="waits", task_queue="cli", workflow_id="c-waits")
    with pytest.raises(FatalError):
        await (
            await mf.workflow.start(workflow_name="boom", task_queue="cli", workflow_id="c-boom")
        ).result(timeout=20)
    await mf.workflow.start(
        workflow_name="happy", args=[1], task_queue="cold", workflow_id="c-cold"
    )
    await until_waiting(mf, "c-waits")

    run = [
        ("list", "--json"),
        ("list", "--status", "failed", "--json"),
        ("list", "--entity", "happy", "--json"),
        ("list", "--queue", "no-such-queue", "--json"),
        ("list", "--limit", "1", "--json"),
        ("list",),
        ("show", "c-waits", "--json"),
        ("show", "c-waits"),
        ("show", "c-boom", "--json"),
        ("history", "c-happy", "--json"),
        ("history", "c-happy"),
        ("queues", "--json"),
        ("queues",),
    ]
    results = await asyncio.gather(*(hotmesh(dsn, app, *args) for args in run))
    out = dict(zip(run, results, strict=True))

    listed = out[("list", "--json")].json()
    assert {r["id"]: r["status"] for r in listed} == {
        "c-happy": "completed",
        "c-waits": "waiting",
        "c-boom": "failed",
        "c-cold": "pending",
    }
    assert [r["id"] for r in out[("list", "--status", "failed", "--json")].json()] == ["c-boom"]
    assert {r["id"] for r in out[("list", "--entity", "happy", "--json")].json()} == {
        "c-happy",
        "c-cold",
    }
    assert out[("list", "--queue", "no-such-queue", "--json")].json() == []
    assert len(out[("list", "--limit", "1", "--json")].json()) == 1
    text = out[("list",)]
    assert text.code == 0
    assert text.out.splitlines()[0].split() == [
        "ID",
        "WORKFLOW",
        "ENTITY",
        "STATUS",
        "QUEUE",
        "AGE",
        "WAITING",
        "ON",
        "/",
        "ERROR",
    ]
    assert "signal approve" in text.out and "kaboom" in text.out

    shown = out[("show", "c-waits", "--json")].json()
    assert shown["status"] == "waiting"
    assert shown["waiting_on"] == "signal approve"
    assert [(w["kind"], w["name"]) for w in shown["waits"]] == [("signal", "approve")]
    assert "waiting on" in out[("show", "c-waits")].out
    assert out[("show", "c-boom", "--json")].json()["error"]["message"] == "kaboom"

    history = out[("history", "c-happy", "--json")].json()
    assert [(h["kind"], h["name"], h["status"], h["entity_version"]) for h in history] == [
        ("workflow", "happy", "started", None),
        ("entity", "set", "completed", 1),
        ("activity", "double", "completed", None),
        ("workflow", "happy", "completed", None),
    ]
    assert history[-1]["output"] == 42
    assert out[("history", "c-happy")].out.splitlines()[0].split() == [
        "AT",
        "THREAD",
        "SEQ",
        "KIND",
        "NAME",
        "STATUS",
        "DETAIL",
    ]
    queues = out[("queues", "--json")].json()
    assert [(q["task_queue"], q["kind"], q["ready"]) for q in queues] == [("cold", "workflow", 1)]
    assert out[("queues",)].out.splitlines()[1].split()[:3] == ["cold", "workflow", "1"]


async def test_signal_cancel_retry(mf: MemFlow, dsn: str, app: str) -> None:
    broken = {"on": True}

    def fragile(x: int) -> int:
        if broken["on"]:
            raise FatalError("not yet")
        return x

    async def uses_fragile(x: int) -> int:
        acts = workflow.proxy_activities(activities=[fragile])
        return int(await acts.fragile(x))

    await mf.worker.create(task_queue="cli", workflow=[waits, dad, uses_fragile])
    waiting = await mf.workflow.start(workflow_name="waits", task_queue="cli", workflow_id="w1")
    await mf.workflow.start(workflow_name="dad", args=["kid1"], task_queue="cli", workflow_id="d1")
    await mf.workflow.start(workflow_name="dad", args=["kid2"], task_queue="cli", workflow_id="d2")
    fragile_run = await mf.workflow.start(
        workflow_name="uses_fragile", args=[7], task_queue="cli", workflow_id="f1"
    )
    with pytest.raises(FatalError):
        await fragile_run.result(timeout=20)
    await until_waiting(mf, "w1", "kid1", "kid2")

    sent = await hotmesh(
        dsn, app, "signal", "approve", "--workflow", "w1", "--data", '{"ok": true}', "--json"
    )
    assert sent.json()["status"] == "delivered" and sent.json()["workflow_id"] == "w1"
    assert await waiting.result(timeout=20) == {"ok": True}

    kept = await hotmesh(dsn, app, "signal", "later", "--data", "1", "--key", "k1")
    assert kept.code == 0 and "kept" in kept.out
    again = await hotmesh(dsn, app, "signal", "later", "--data", "1", "--key", "k1", "--json")
    assert again.json() == {"status": "duplicate"}

    alone = await hotmesh(dsn, app, "cancel", "d1", "--no-descend", "--reason", "stop", "--json")
    assert alone.json() == {"cancelled": ["d1"]}
    assert await mf.workflow.get_handle("kid1").status() == "waiting"
    both = await hotmesh(dsn, app, "cancel", "d2")
    assert both.code == 0 and both.out.strip() == "cancelled: d2, kid2"
    assert await mf.workflow.get_handle("kid2").status() == "cancelled"
    outcome = await mf.workflow.get_handle("d1").describe()
    assert outcome["status"] == "cancelled" and outcome["error"]["message"] == "stop"

    broken["on"] = False
    retried = await hotmesh(dsn, app, "retry", "f1", "--json")
    assert retried.json() == {
        "workflow_id": "f1",
        "status": "pending",
        "reset_steps": 1,
        "retried": [],
        "revived_tasks": 0,
    }
    assert await fragile_run.result(timeout=20) == 7


async def quick(x: int) -> int:
    return x


async def test_prune_and_setting(mf: MemFlow, dsn: str, app: str) -> None:
    assert (await hotmesh(dsn, app, "setting", "default_retention", "--json")).json() == {
        "key": "default_retention",
        "value": 604800,
    }
    changed = await hotmesh(dsn, app, "setting", "default_retention", "0")
    assert changed.code == 0 and changed.out.strip() == "default_retention = 0 seconds (0s)"
    await mf.worker.create(task_queue="cli", workflow=[quick, waits])
    for i in range(3):
        run = await mf.workflow.start(workflow_name="quick", args=[i], task_queue="cli")
        await run.result(timeout=20)
    await mf.workflow.start(workflow_name="waits", task_queue="cli", workflow_id="live")

    assert (await hotmesh(dsn, app, "prune", "--older-than", "1d", "--json")).json() == {
        "count": 0,
        "dry_run": False,
    }
    dry = await hotmesh(dsn, app, "prune", "--dry-run")
    assert dry.code == 0 and dry.out.strip() == "would prune 3 finished workflow(s)"
    assert (await hotmesh(dsn, app, "prune", "--batch", "2", "--json")).json() == {
        "count": 3,
        "dry_run": False,
    }
    assert [r["id"] for r in (await hotmesh(dsn, app, "list", "--json")).json()] == ["live"]

    unset = await hotmesh(dsn, app, "setting", "default_retention", "--unset", "--json")
    assert unset.json()["value"] == 604800


# -- bad input ---------------------------------------------------------------------------------

NOWHERE = "postgresql://postgres@/hotmesh?host=/nonexistent-hotmesh-socket-dir&port=5433"


@pytest.fixture
async def finished(mf: MemFlow) -> None:
    await mf.worker.create(task_queue="cli", workflow=quick)
    run = await mf.workflow.start(
        workflow_name="quick", args=[1], task_queue="cli", workflow_id="done"
    )
    await run.result(timeout=20)


BAD = [
    (("show", "nope"), 'workflow "nope" not found'),
    (("show", "nope", "--json"), 'workflow "nope" not found'),
    (("history", "nope"), 'workflow "nope" not found'),
    (("retry", "nope"), 'workflow "nope" not found'),
    (("cancel", "nope"), 'workflow "nope" not found'),
    (("retry", "done"), "is completed; only a failed workflow"),
    (("cancel", "done"), "is completed; it cannot be cancelled"),
    (("signal", "s", "--workflow", "nope"), 'workflow "nope" not found'),
    (("signal", "s", "--data", "{not json"), "--data is not valid JSON"),
    (("start", "quick", "--args", "[1", "--queue", "cli"), "--args is not valid JSON"),
    (("start", "quick", "--args", '{"a": 1}', "--queue", "cli"), "--args must be a JSON array"),
    (("start", "quick", "--queue", "cli", "--search", "[1]"), "--search must be a JSON object"),
    (("start", "quick", "--queue", "cli", "--start-in", "soon"), "is not a duration"),
    (
        ("start", "quick", "--queue", "cli", "--start-in", "1m", "--start-at", "2030-01-01"),
        "give start_at or start_in, not both",
    ),
    (("prune", "--older-than", "soon"), "is not a duration"),
    (("setting", "nope"), 'unknown setting "nope"'),
    (("list", "--limit", "0"), "--limit: must be >= 1"),
    (("list", "--dsn", NOWHERE), "database error: connection is bad"),
    (("queues", "--app", "never_migrated_app"), "is not installed in this database"),
    (("list", "--app", "Bad-Name"), "invalid app id"),
    (("worker", "m:f", "--queue", "q", "--app", "never_migrated_app"), "cannot import"),
    (("worker", "m:f", "--queue", "q", "--grace", "-1"), "seconds >= 0, not '-1'"),
    (
        ("worker", "--queue", "q", "--activities", "os:getcwd", "--dsn", NOWHERE),
        "database error: connection is bad",
    ),
    (
        ("worker", "--queue", "q", "--activities", "os:getcwd", "--app", "never_migrated_app"),
        "is not installed in this database: run `hotmesh migrate",
    ),
]


async def test_bad_input_one_line_no_traceback(finished: None, dsn: str, app: str, db: Any) -> None:
    before = db.rows("select id, status from jobs order by id")
    results = await asyncio.gather(*(hotmesh(dsn, app, *args) for args, _ in BAD))
    for (args, expected), result in zip(BAD, results, strict=True):
        assert result.code != 0, args
        assert "Traceback" not in result.err, args
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, (args, result.err)
        assert lines[0].startswith("hotmesh"), (args, lines)
        assert expected in lines[0], (args, lines)
        assert result.out == "", args
    assert db.rows("select id, status from jobs order by id") == before  # nothing changed


async def test_start_options(dsn: str, app: str, db: Any) -> None:
    """`hotmesh start` takes the start options of mf.workflow.start: they reach the row."""
    flags = (
        "--queue", "cli", "--id", "opt-1", "--priority", "3", "--execution-timeout", "2h",
        "--idempotency-key", "k-1", "--start-in", "1h", "--search", '{"region": "eu"}',
        "--concurrency-key", "tenant-7",
    )  # fmt: skip
    started = await hotmesh(dsn, app, "start", "quick", *flags)
    assert (started.code, started.out, started.err) == (0, "opt-1\n", "")
    assert db.rows(
        "select j.priority, j.execution_timeout, j.idempotency_key, j.search,"
        " j.concurrency_key, t.run_at > now() + interval '59 minutes'"
        " from jobs as j join tasks as t on t.job_id = j.id where j.id = 'opt-1'"
    ) == [(3, timedelta(hours=2), "k-1", {"region": "eu"}, "tenant-7", True)]
    # The same idempotency key under another id: the run that holds it, nothing new.
    again = await hotmesh(dsn, app, "start", "quick", "--queue", "cli", "--id", "opt-2",
                          "--idempotency-key", "k-1")  # fmt: skip
    assert (again.code, again.out) == (0, "opt-1\n")
    assert db.one("select count(*) from jobs") == 1
    # A taken id, with --id-reuse terminate: the running one is cancelled and replaced.
    reused = await hotmesh(dsn, app, "start", "quick", "--queue", "cli", "--id", "opt-1",
                           "--id-reuse", "terminate")  # fmt: skip
    assert (reused.code, reused.out) == (0, "opt-1\n"), reused.err
    assert db.one("select idempotency_key from jobs where id = 'opt-1'") is None
