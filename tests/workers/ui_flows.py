"""A worker process for the dashboard's browser tests (tests/test_ui.py).

    python tests/workers/ui_flows.py DSN APP

Serves queue "ui" with `ui_parent` (sets its entity and a search attribute, runs the hook
`ui_note`, then the child `ui_child`, then waits for the signal `go`), `ui_child` (waits for
`go-child` when its argument says so), `ui_broken` (fails at once: FatalError) and `ui_review`
(asks a person: a human task with an answer form, and returns the answer).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from hotmesh import MemFlow, workflow
from hotmesh.errors import FatalError


async def ui_note(text: str) -> str:
    entity = await workflow.entity()
    await entity.append("notes", text)
    return text


async def ui_child(wait: bool) -> str:
    if wait:
        await workflow.wait_for("go-child")
    return "child done"


async def ui_parent(case: str, wait_child: bool = False) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set({"case": case, "stage": "intake", "notes": []})
    await workflow.search().set({"region": "eu"})
    await workflow.exec_hook(workflow_name="ui_note", args=[f"checked {case}"])
    await workflow.exec_child(workflow_name="ui_child", args=[wait_child])
    await entity.merge({"stage": "approval"})
    approval = await workflow.wait_for("go")
    await entity.merge({"stage": "complete", "approved": approval})
    return {"approved": approval}


async def ui_review(case: str, role: str = "approver") -> Any:
    """Asks a person (a human task for `role`) and returns the answer."""
    return await workflow.ask_human(
        f"Approve {case}",
        role=role,
        description=f"Claim {case} needs a decision.",
        metadata={"case": case},
        form={
            "type": "object",
            "required": ["approved"],
            "properties": {
                "approved": {"type": "boolean"},
                "note": {"type": "string"},
                "amount": {"type": "integer"},
            },
        },
    )


async def ui_broken() -> None:
    raise FatalError("the form was empty")


async def main(dsn: str, app: str) -> None:
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    await mf.worker.create(
        task_queue="ui", workflow=[ui_parent, ui_note, ui_child, ui_broken, ui_review]
    )
    print("ready", flush=True)
    await mf.run_until_signal(grace=1.0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
