"""Many starts in one call: `mf.workflow.start_many` (start_workflows) and `hotmesh start
--from-file`. Each start takes start()'s keyword arguments; the batch is all or nothing."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hotmesh import DuplicateJobError, InvalidArgument, MemFlow, workflow
from hotmesh.interceptors import Interceptor, StartInput
from test_cli import hotmesh

pytestmark = pytest.mark.timeout(60)


def double(n: int) -> int:
    return 2 * n


async def doubled(n: int) -> int:
    acts = workflow.proxy_activities(activities=[double])
    return int(await acts.double(n))


async def test_start_many_returns_handles_in_order_and_the_workflows_run(
    mf: MemFlow, db: Any
) -> None:
    await mf.worker.create(task_queue="many", workflow=doubled)
    handles = await mf.workflow.start_many(
        [
            {"workflow_name": "doubled", "args": [1], "task_queue": "many", "workflow_id": "m1"},
            {"workflow_name": "doubled", "args": [2], "task_queue": "many", "priority": 7},
            {"workflow_name": "doubled", "args": [3], "task_queue": "many", "start_in": "1h",
             "search": {"tier": "gold"}, "workflow_id": "m3"},
        ]
    )  # fmt: skip
    assert handles[0].workflow_id == "m1" and handles[2].workflow_id == "m3"
    assert await handles[0].result(timeout=20) == 2
    assert await handles[1].result(timeout=20) == 4
    # Options per start: m3 waits an hour, with its own search attributes.
    assert await handles[2].status() == "pending"
    assert db.rows("select priority, search from jobs where id = %s", handles[1].workflow_id) == [
        (7, {})
    ]
    assert db.one("select search from jobs where id = 'm3'") == {"tier": "gold"}
    assert await mf.workflow.start_many([]) == []


async def test_a_batch_is_all_or_nothing(mf: MemFlow, db: Any) -> None:
    await mf.workflow.start(workflow_name="w", task_queue="q", workflow_id="taken")
    fresh = {"workflow_name": "w", "task_queue": "q", "workflow_id": "fresh"}
    with pytest.raises(InvalidArgument, match='workflow id "twice" is given more than once'):
        await mf.workflow.start_many(
            [fresh, *({"workflow_name": "w", "task_queue": "q", "workflow_id": "twice"},) * 2]
        )
    with pytest.raises(DuplicateJobError, match='"taken" is already taken'):
        await mf.workflow.start_many([fresh, {**fresh, "workflow_id": "taken"}])
    with pytest.raises(InvalidArgument, match=r"^start 2 of 2: priority must be a whole number"):
        await mf.workflow.start_many([fresh, {**fresh, "workflow_id": "p", "priority": 1.5}])
    # Caught before anything is sent: a field start() does not take, a missing name, a bad
    # duration.
    with pytest.raises(InvalidArgument, match=r"^start 2: unknown field.s. queue"):
        await mf.workflow.start_many([fresh, {"workflow_name": "w", "queue": "q"}])
    with pytest.raises(InvalidArgument, match=r"^start 1: workflow_name is required"):
        await mf.workflow.start_many([{"task_queue": "q"}])
    with pytest.raises(InvalidArgument, match=r'^start 1: start_in "soon" is not a duration'):
        await mf.workflow.start_many([{**fresh, "start_in": "soon"}])
    assert db.rows("select id from jobs") == [("taken",)]


async def test_hotmesh_start_from_file(dsn: str, app: str, db: Any, tmp_path: Path) -> None:
    lines = tmp_path / "starts.jsonl"
    lines.write_text(
        '{"workflow_name": "w", "task_queue": "q", "workflow_id": "f1", "args": [1]}\n\n'
        '{"workflow_name": "w", "task_queue": "q", "workflow_id": "f2", "priority": 2,'
        ' "start_in": "10m"}\n'
    )
    started = await hotmesh(dsn, app, "start", "--from-file", str(lines))
    assert (started.code, started.out, started.err) == (0, "f1\nf2\n", "")
    array = tmp_path / "starts.json"
    array.write_text(json.dumps([{"workflow_name": "w", "task_queue": "q", "workflow_id": "f3"}]))
    started = await hotmesh(dsn, app, "start", "--from-file", str(array))
    assert (started.code, started.out) == (0, "f3\n")
    assert db.rows(
        "select j.id, j.priority, t.run_at > now() + interval '9 minutes'"
        " from jobs as j join tasks as t on t.job_id = j.id order by j.id"
    ) == [("f1", 0, False), ("f2", 2, True), ("f3", 0, False)]
    # All or nothing: f4 is not started beside a taken id; per-start flags are refused.
    array.write_text(json.dumps([{"workflow_name": "w", "task_queue": "q", "workflow_id": i}
                                 for i in ("f4", "f1")]))  # fmt: skip
    refused = await hotmesh(dsn, app, "start", "--from-file", str(array))
    assert refused.code != 0 and 'workflow id "f1" is already taken' in refused.err
    refused = await hotmesh(dsn, app, "start", "--from-file", str(array), "--queue", "x")
    assert refused.code != 0 and "not --queue" in refused.err
    lines.write_text("{not json}\n")
    refused = await hotmesh(dsn, app, "start", "--from-file", str(lines))
    assert refused.code != 0 and "line 1 is not valid JSON" in refused.err
    assert db.one("select count(*) from jobs") == 3


class Tagging(Interceptor):
    """Tags every start, refuses workflow "forbidden", answers "cached" itself."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    async def start_workflow(
        self, input: StartInput, next: Callable[[StartInput], Awaitable[str]]
    ) -> str:
        if input.workflow_name == "forbidden":
            raise InvalidArgument("forbidden by the interceptor")
        if input.workflow_name == "cached":
            return "from-cache"
        tagged = {**input.options, "search": {"via": "interceptor"}}
        workflow_id = await next(dataclasses.replace(input, options=tagged))
        self.ids.append(workflow_id)
        return workflow_id


async def test_start_many_goes_through_the_start_interceptors(app: str, dsn: str, db: Any) -> None:
    tagging = Tagging()
    mf = await MemFlow.init(app_id=app, dsn=dsn, interceptors=[tagging])
    try:
        handles = await mf.workflow.start_many(
            [{"workflow_name": "w", "task_queue": "q", "workflow_id": f"i{n}"} for n in range(3)]
            + [{"workflow_name": "cached", "task_queue": "q"}]
        )
        assert [h.workflow_id for h in handles] == ["i0", "i1", "i2", "from-cache"]
        assert sorted(tagging.ids) == ["i0", "i1", "i2"]
        assert db.rows("select id, search from jobs order by id") == [
            (f"i{n}", {"via": "interceptor"}) for n in range(3)
        ]
        # One start refused by an interceptor: none of the batch is started.
        with pytest.raises(InvalidArgument, match="forbidden by the interceptor"):
            await mf.workflow.start_many(
                [{"workflow_name": "w", "task_queue": "q", "workflow_id": "i9"},
                 {"workflow_name": "forbidden", "task_queue": "q"}]
            )  # fmt: skip
        assert db.one("select count(*) from jobs") == 3
    finally:
        await mf.close()
