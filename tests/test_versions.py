"""Changing running code (issue 14): 50 runs parked on v1 are taken over by v2, whose new
step is guarded by `patched`; they finish on the old branch while new runs take the new one.
The replayer refuses v3 (the patch removed too early) while v1 runs are live, and accepts v4
(deprecate_patch) once they finished. An export replays with no database at all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import order_versions as versions
from helpers import until, until_row
from hotmesh import MemFlow, errors, workflow
from hotmesh.testing import Replayer, load_export
from hotmesh.worker import default_build_id
from test_cli import hotmesh

pytestmark = pytest.mark.timeout(120)

TESTS = Path(__file__).parent
OLD = [f"o-{i}" for i in range(50)]


async def parked(db: Any, ids: list[str]) -> bool:
    return bool(
        db.one(
            "select count(*) = %s from steps"
            " where job_id = any(%s) and kind = 'signal' and status = 'scheduled'",
            len(ids),
            ids,
        )
    )


async def test_patched_runs_finish_on_their_branch_and_the_replayer_guards_removal(
    app: str, dsn: str, db: Any, mf: MemFlow, tmp_path: Path
) -> None:
    v1 = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    await v1.worker.create(task_queue="orders", workflow=versions.v1)
    for i, wid in enumerate(OLD):
        await v1.workflow.start(
            workflow_name="order", args=[i], task_queue="orders", workflow_id=wid
        )
    await until(lambda: parked(db, OLD), "50 v1 runs parked on their approval", limit=60)
    await v1.close()

    await mf.worker.create(task_queue="orders", workflow=versions.v2)
    new = [f"n-{i}" for i in range(5)]
    for i, wid in enumerate(new):
        await mf.workflow.start(
            workflow_name="order", args=[100 + i], task_queue="orders", workflow_id=wid
        )
    await until(lambda: parked(db, new), "5 v2 runs parked on their approval")
    # The operator's view: which live runs are on which side of the patch.
    assert db.rows(
        "select workflow_name, patch_id, with_marker, without_marker, deprecated"
        " from workflow_patches"
    ) == [("order", "fraud-check", 5, 50, False)]

    # The patch removed too early: every live v1 run diverges where the fraud check was
    # inserted; the v2 runs replay (their marker is passed over).
    report = await Replayer([versions.v3]).replay_app(mf)
    assert len(report.results) == 55
    assert sorted(r.workflow_id for r in report.diverged) == sorted(OLD)
    assert report.diverged[0].divergence == (
        f'non-determinism in workflow "{report.diverged[0].workflow_id}" thread main: step 2 '
        'was recorded as signal "approve-'
        + report.diverged[0].workflow_id.removeprefix("o-")
        + '" but the code now calls activity "fraud_check"'
    )
    cli = await hotmesh(dsn, app, "replay", "order_versions:v3", cwd=TESTS)
    assert cli.code == 1, cli.err
    assert cli.out.strip().endswith("55 replayed, 50 diverged")
    assert (await Replayer([versions.v2]).replay_app(mf)).ok

    for n in [*range(50), *range(100, 105)]:
        await mf.workflow.signal(f"approve-{n}", "ok")
    results = {wid: await mf.workflow.get_handle(wid).result(timeout=60) for wid in OLD + new}
    assert {results[w]["branch"] for w in OLD} == {"old"}
    assert {results[w]["branch"] for w in new} == {"new"}
    assert (
        db.one("select count(*) from steps where kind = 'activity' and name = 'fraud_check'") == 5
    )
    history = [r.kind for r in await mf.workflow.get_handle("n-0").history()]
    assert history.count("patch") == 1
    assert db.rows(
        "select with_marker, without_marker, finished_with_marker from workflow_patches"
    ) == [(0, 0, 5)]

    # No v1 run is left: v4 deprecates the patch. It replays the live runs (a new one) and
    # the finished v2 runs; it runs new ones, which still record the marker.
    await mf.workflow.start(
        workflow_name="order", args=[200], task_queue="orders", workflow_id="n-200"
    )
    await until(lambda: parked(db, ["n-200"]), "a new run parked")
    cli = await hotmesh(dsn, app, "replay", "order_versions:v4", cwd=TESTS)
    assert cli.code == 0, cli.out + cli.err
    assert cli.out.strip().endswith("1 replayed, 0 diverged")
    finished = await Replayer([versions.v4]).replay_app(mf, statuses=["completed"])
    assert [r.workflow_id for r in finished.diverged] == OLD  # as expected: v1's old branch

    # An export replays with no database: the file alone.
    out = tmp_path / "n-0.json"
    exported = await hotmesh(dsn, app, "export", "n-0", "--output", str(out))
    assert exported.code == 0, exported.err
    doc = load_export(out)
    assert doc["workflow"]["id"] == "n-0" and doc["workflow"]["status"] == "completed"
    assert [s["kind"] for s in doc["steps"]] == ["activity", "patch", "activity", "signal"]
    offline = await hotmesh("postgresql:///nowhere?host=/nonexistent", "none", "replay",
                            "order_versions:v3", "--from-file", str(out), cwd=TESTS)  # fmt: skip
    assert offline.code == 0, offline.out + offline.err
    assert "n-0 main (order, completed): ok" in offline.out
    moved = await hotmesh("postgresql:///nowhere?host=/nonexistent", "none", "replay",
                          "order_versions:v1", "--from-file", str(out), cwd=TESTS)  # fmt: skip
    assert moved.code == 1
    # v1 passes over the marker it does not ask about, then meets the fraud check.
    assert (
        'step 3 was recorded as activity "fraud_check" but the code now calls signal' in moved.out
    )


async def argument_change(n: int) -> dict[str, Any]:
    acts = workflow.proxy_activities(activities=[versions.prepare])
    await acts.prepare(n + 1)  # v1 called prepare(n)
    approval = await workflow.wait_for(f"approve-{n}")
    return {"n": n, "approval": approval}


async def test_changed_arguments_diverge_unless_ignored(mf: MemFlow, db: Any) -> None:
    await mf.worker.create(task_queue="orders", workflow=versions.v1)
    await mf.workflow.start(workflow_name="order", args=[7], task_queue="orders", workflow_id="a7")
    await until(lambda: parked(db, ["a7"]), "a parked run")
    export = await mf.workflow.get_handle("a7").export()

    changed = await Replayer({"order": argument_change}).replay_exports([export])
    assert [r.divergence for r in changed.results] == [
        'non-determinism in workflow "a7" thread main: step 1 was recorded as activity '
        '"prepare" with input [7] but the code now calls activity "prepare" with input [8]'
    ]
    ignored = Replayer({"order": argument_change}, ignore_arguments=True)
    assert (await ignored.replay_exports([export])).ok


async def test_bad_input_is_refused_clearly(
    app: str, dsn: str, mf: MemFlow, db: Any, tmp_path: Path
) -> None:
    async def bad_patch(kind: str) -> bool:
        return workflow.patched({"empty": "", "number": 3}[kind])  # type: ignore[arg-type]

    await mf.worker.create(task_queue="bad", workflow=bad_patch)
    for kind in ("empty", "number"):
        handle = await mf.workflow.start(
            workflow_name="bad_patch", args=[kind], task_queue="bad",
            retry_policy={"maximum_attempts": 1},
        )  # fmt: skip
        with pytest.raises(errors.WorkflowError, match="takes a non-empty patch id"):
            await handle.result(timeout=30)
        assert db.one("select count(*) from steps where job_id = %s", handle.workflow_id) == 0

    not_export = tmp_path / "not-export.json"
    not_export.write_text(json.dumps({"id": "x", "steps": []}))
    cli = await hotmesh(dsn, app, "replay", "order_versions:v2", "--from-file", str(not_export),
                        cwd=TESTS)  # fmt: skip
    assert cli.code == 1
    assert "is not a hotmesh export" in cli.err
    missing = await hotmesh(dsn, app, "replay", "order_versions:v9", cwd=TESTS)
    assert (missing.code, missing.err.strip()) == (
        1,
        "hotmesh: module 'order_versions' has no 'v9'",
    )
    not_a_workflow = await hotmesh(dsn, app, "replay", "order_versions:prepare", cwd=TESTS)
    assert not_a_workflow.code == 1
    assert "must be declared `async def`" in not_a_workflow.err
    bad_threads = {
        "format": "hotmesh-export",
        "version": 1,
        "workflow": {"id": "x", "workflow_name": "order", "status": "completed"},
        "steps": [],
        "threads": [{"thread": 1}],
    }
    with pytest.raises(errors.InvalidArgument, match="not a list of threads with thread and"):
        await Replayer([versions.v2]).replay_exports([bad_threads])
    with pytest.raises(errors.InvalidArgument, match="no function of that name was given"):
        await Replayer({"other": versions.v2}).replay_exports([{**bad_threads, "threads": []}])
    with pytest.raises(errors.InvalidArgument, match="unknown workflow status"):
        await Replayer([versions.v2]).replay_app(mf, statuses=["parked"])


async def test_each_activation_records_its_build_and_hm006_names_both(
    app: str, dsn: str, db: Any, mf: MemFlow
) -> None:
    v1 = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    await v1.worker.create(task_queue="orders", workflow=versions.v1, build_id="orders-v1")
    await v1.workflow.start(workflow_name="order", args=[1], task_queue="orders", workflow_id="b1")
    await until(lambda: parked(db, ["b1"]), "a parked v1 run")
    assert db.one("select build_id from workflows where id = 'b1'") == "orders-v1"
    await v1.close()

    # v3 without a build id: a digest of its source. It cannot replay the v1 run.
    await mf.worker.create(task_queue="orders", workflow=versions.v3)
    build = default_build_id([versions.v3])
    assert len(build) == 12 and build != default_build_id([versions.v2])
    await mf.workflow.signal("approve-1", "ok")
    await until_row(db, "select true from tasks where job_id = 'b1' and state = 'dead'")
    assert db.one("select build_id from workflows where id = 'b1'") == build
    assert db.one("select error from workflows where id = 'b1'") == (
        'non-determinism in workflow "b1" thread main: step 2 was recorded as signal '
        '"approve-1" but the code now calls activity "fraud_check" (history recorded by build '
        f"orders-v1, replayed by build {build})"
    )
    with pytest.raises(errors.InvalidArgument, match="build_id must be 1 to 255 characters"):
        await mf.worker.create(task_queue="other", workflow=versions.v2, build_id="")
