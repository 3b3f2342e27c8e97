"""The sync client (`from hotmesh.sync import MemFlow`): the client API with no event loop in
the caller: start, get_handle, result, signal, cancel, entity reads and writes."""

from __future__ import annotations

import pytest

from helpers import sleep_until
from hotmesh import CancelledFailure, workflow
from hotmesh.sync import MemFlow

pytestmark = pytest.mark.timeout(60)


async def approval(case_id: str) -> dict[str, object]:
    entity = await workflow.entity()
    await entity.set({"case": case_id, "stage": "waiting"})
    decision = await workflow.wait_for("decision")
    await entity.merge({"stage": "done", "decision": decision})
    return await entity.get()


def test_sync_client(app: str, dsn: str) -> None:
    with MemFlow.init(app_id=app, dsn=dsn, migrate=False) as mf:
        mf.worker.create(task_queue="sync", workflow=approval)
        handle = mf.workflow.start(workflow_name="approval", args=["S1"], task_queue="sync",
                                   workflow_id="s1")  # fmt: skip
        assert handle.workflow_id == "s1"
        sleep_until(lambda: mf.entity("s1").get("stage") == "waiting", 30)
        mf.entity("s1").merge({"note": "from a sync caller"})  # an entity write
        outcome = mf.workflow.get_handle("s1").signal("decision", "yes")
        assert outcome["status"] in ("delivered", "kept")
        result = handle.result(timeout=30)
        assert result["decision"] == "yes" and result["stage"] == "done"
        assert mf.entity("s1").get("note") == "from a sync caller"
        assert handle.status() == "completed"
        other = mf.workflow.start(workflow_name="approval", args=["S2"], task_queue="sync")
        assert other.interrupt(reason="withdrawn") == [other.workflow_id]
        with pytest.raises(CancelledFailure):
            other.result(timeout=30)
