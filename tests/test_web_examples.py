"""python/examples/flask_app.py (sync client) and fastapi_app.py (async client in the
lifespan): each starts a workflow and reads its entity over HTTP."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
from examples import fastapi_app, flask_app
from hotmesh.sync import MemFlow

pytestmark = pytest.mark.timeout(60)


def test_flask_app_with_the_sync_client(app: str, dsn: str) -> None:
    with MemFlow.init(app_id=app, dsn=dsn, migrate=False) as mf:
        mf.worker.create(task_queue="claims", workflow=flask_app.intake)
        client = flask_app.create_app(mf).test_client()
        assert client.post("/claims/F1").get_json() == {"workflow_id": "F1"}
        shown = client.get("/claims/F1").get_json()
    assert shown == {"status": "completed", "entity": {"case": "F1", "stage": "received"}}


def test_fastapi_app_with_a_lifespan_client(app: str, dsn: str) -> None:
    with TestClient(fastapi_app.create_app(app, dsn)) as client:
        assert client.post("/claims/A1").json() == {"workflow_id": "A1"}
        shown = client.get("/claims/A1").json()
    assert shown == {"status": "completed", "entity": {"case": "A1", "stage": "received"}}
