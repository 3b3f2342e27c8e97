"""`make demo` runs the seed's claims-review example; here it runs against the test database
and its output is checked: hooks wrote the shared entity, the approval came from SQL, the
seed's query shows the in-flight claim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "python" / "examples" / "demo.py"


@pytest.mark.timeout(120)
def test_claims_review_demo(dsn: str) -> None:
    env = {**os.environ, "DATABASE_URL": dsn}
    done = subprocess.run(
        [sys.executable, str(DEMO)], env=env, capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "select my_app.signal('human-approval', 'true', 'claim-A42-" in out
    assert "'status': 'delivered'" in out
    assert '"stage": "complete"' in out and '"approved": true' in out
    assert '"result": "Verified coverage"' in out  # written by the generate_summary hook
    assert '"policy": "P-A42"' in out  # written by the verify_coverage hook
    history = out.split("entity history", 1)[1]
    assert "| h1 |" in history and "| h2 |" in history  # both hooks changed the entity
    in_flight = out.split("claims still in flight", 1)[1].split("-- B17", 1)[0]
    assert "claim-B17-" in in_flight and "claim-A42-" not in in_flight
