"""A FastAPI app on the async client, opened and closed by the app's lifespan: POST
/claims/{id} starts a workflow, GET /claims/{id} reads its entity."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from examples.flask_app import intake
from hotmesh import MemFlow


def create_app(app_id: str, dsn: str | None = None) -> FastAPI:
    clients: dict[str, MemFlow] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        mf = await MemFlow.init(app_id=app_id, dsn=dsn, migrate=False)
        await mf.worker.create(task_queue="claims", workflow=intake)
        clients["mf"] = mf
        yield
        await mf.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/claims/{case_id}")
    async def start(case_id: str) -> dict[str, Any]:
        handle = await clients["mf"].workflow.start(
            workflow_name="intake", args=[case_id], task_queue="claims", workflow_id=case_id
        )
        return {"workflow_id": handle.workflow_id}

    @app.get("/claims/{case_id}")
    async def show(case_id: str) -> dict[str, Any]:
        mf = clients["mf"]
        handle = mf.workflow.get_handle(case_id)
        await handle.result(timeout=30)
        return {"status": await handle.status(), "entity": await mf.entity(case_id).get()}

    return app
