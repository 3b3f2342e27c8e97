"""`make demo` runs the seed's claims-review example; here it runs against the test database
and its output is checked: hooks wrote the shared entity, the approval came from SQL through
a human task (the inbox before and after), the seed's query shows the in-flight claim of this
run only, and rows print as psql prints them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import uses_my_app

DEMO = Path(__file__).resolve().parent.parent / "python" / "examples" / "demo.py"


def run_demo(dsn: str) -> tuple[str, str]:
    """The demo's output and the suffix of its ids (claim-A42-<suffix>)."""
    env = {**os.environ, "DATABASE_URL": dsn}
    done = subprocess.run(
        [sys.executable, str(DEMO)], env=env, capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.search(r"started claim-A42-(\w+)", done.stdout)
    assert found, done.stdout
    return done.stdout, found.group(1)


@uses_my_app
@pytest.mark.timeout(240)
def test_claims_review_demo(dsn: str) -> None:
    _, first_run = run_demo(dsn)
    out, run = run_demo(dsn)  # a second run in the same app shows only its own claims
    assert run != first_run
    resolved = out.split("a reviewer approves A42 from SQL", 1)[1].split("A42 finished", 1)[0]
    assert re.search(r"from my_app.resolve_human_task\('\d+', 'ann', ", resolved), resolved
    assert re.search(r"\| resolved +\| ann +\| \{\"note\": \"coverage verified\"", resolved)
    inbox = out.split("the reviewers' inbox", 1)[1].split("-- a reviewer", 1)[0]
    assert f"claim-A42-{run}" in inbox and f"claim-B17-{run}" in inbox and "(2 rows)" in inbox
    assert first_run not in inbox
    after = out.split("the inbox now", 1)[1].split("-- B17 is withdrawn", 1)[0]
    assert f"claim-B17-{run}" in after and "claim-A42-" not in after and "(1 row)" in after
    cancelled = out.split("B17's task was cancelled with it", 1)[1]
    assert f"claim-B17-{run} | cancelled" in cancelled and "(1 row)" in cancelled
    # psql's output, not Python's: JSON as stored, t/f, nothing printed for NULL
    assert "'status'" not in out
    assert re.search(r"\| h1 +\| +2 \| merge", out), out
    for python_repr in ("None", "False", "True", "datetime."):
        assert python_repr not in out.split("A42 finished", 1)[0], python_repr
    assert '"stage": "complete"' in out and '"approved": true' in out
    assert '"result": "Verified coverage"' in out  # written by the generate_summary hook
    assert '"policy": "P-A42"' in out  # written by the verify_coverage hook
    assert re.search(r"approved\": false", out)  # the first entity, as jsonb prints it
    history = out.split("entity history", 1)[1]
    assert re.search(r"\| h1 +\|", history) and re.search(r"\| h2 +\|", history)
    in_flight = out.split("claims in flight", 1)[1].split("-- a reviewer", 1)[0]
    assert f"claim-A42-{run}" in in_flight and f"claim-B17-{run}" in in_flight
    assert first_run not in in_flight and "(2 rows)" in in_flight
    still = out.split("claims still in flight", 1)[1].split("-- B17", 1)[0]
    assert f"claim-B17-{run}" in still and "claim-A42-" not in still
    assert first_run not in still and "(1 row)" in still
    assert "| completed |" in out  # A42's row in my_app.jobs
