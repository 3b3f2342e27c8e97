"""A Flask app on the sync client (docs/sync-client.md): POST /claims/<id> starts a workflow,
GET /claims/<id> reads its entity. One client per process, made at start-up."""

from __future__ import annotations

from typing import Any

from flask import Flask

from hotmesh import workflow
from hotmesh.sync import MemFlow


async def intake(case_id: str) -> dict[str, Any]:
    entity = await workflow.entity()
    await entity.set({"case": case_id, "stage": "received"})
    return await entity.get()


def create_app(mf: MemFlow) -> Flask:
    app = Flask(__name__)

    @app.post("/claims/<case_id>")
    def start(case_id: str) -> dict[str, Any]:
        handle = mf.workflow.start(workflow_name="intake", args=[case_id], task_queue="claims",
                                   workflow_id=case_id)  # fmt: skip
        return {"workflow_id": handle.workflow_id}

    @app.get("/claims/<case_id>")
    def show(case_id: str) -> dict[str, Any]:
        handle = mf.workflow.get_handle(case_id)
        handle.result(timeout=30)
        return {"status": handle.status(), "entity": mf.entity(case_id).get()}

    return app
