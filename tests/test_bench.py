"""`hotmesh bench` runs end to end on a tiny load: the report has every scenario's figures and
every workflow completed. No timing is asserted: speed is measured, not tested."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hotmesh.devtools.bench import SCENARIOS


@pytest.mark.timeout(300)
def test_bench_reports_every_scenario(dsn: str, tmp_path: Path) -> None:
    app = "bench_" + uuid.uuid4().hex[:8]
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "hotmesh.cli", "bench", "--dsn", dsn, "--app", app]
    command += ["-n", "5", "-k", "2", "--long-steps", "3", "-c", "2"]
    command += ["--queue-tasks", "20", "--history-jobs", "100", "--key-tasks", "300"]
    command += ["--queue-keys", "3", "--key-max-running", "1"]
    command += ["--repeat", "1", "--seconds", "1", "--samples", "3", "--hooks", "5"]
    command += ["--parked", "20", "--parked-idle", "0"]
    command += ["--start-count", "30", "--start-batch", "10", "--rate", "20", "--rate-seconds", "1"]
    command += ["--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stderr[-2000:]

    report = json.loads(out.read_text())
    scenarios = report["scenarios"]
    expected = "ceiling steps starts limited rate long remote queue keyed keys signal parked fanout"
    expected += " history"
    expected = expected.split()
    assert set(scenarios) == set(expected) == set(SCENARIOS)
    assert scenarios["ceiling"]["steps_per_s"] > 0
    for name in ("steps", "limited", "long", "remote"):
        figures = scenarios[name]
        assert figures["not_completed"] == 0
        for key in ("workflows_per_s", "steps_per_s", "p50_s", "p95_s", "p99_s",
                    "commits_per_step", "worker_cpu_ms_per_step", "steps_vs_ceiling"):  # fmt: skip
            assert key in figures, (name, key)
    assert scenarios["starts"]["not_started"] == 0
    assert (
        scenarios["starts"]["starts_per_s"] > 0 and scenarios["starts"]["single_starts_per_s"] > 0
    )
    assert scenarios["queue"]["not_completed"] == 0
    assert scenarios["queue"]["worker_cpu_ms_per_task"] >= 0
    assert scenarios["queue"]["db_cpu_ms_per_task"] >= 0  # None: the server was not found
    keyed = scenarios["keyed"]
    assert (keyed["not_completed"], keyed["keys"], keyed["key_max_running"]) == (0, 3, 1)
    assert keyed["tasks_per_s"] > 0 and keyed["vs_unkeyed"] > 0
    assert scenarios["signal"]["samples"] == 3
    parked = scenarios["parked"]
    assert parked["parked"] == 20 and parked["rss_mb_n_idle"] > 0 and parked["claim_ms_n"] > 0
    assert scenarios["fanout"]["lost_updates"] == 0
    assert scenarios["history"]["finished_jobs"] == 100
    history = scenarios["history"]
    assert history["claim_ms"] > 0 and history["claim_ms_with_history"] > 0
    assert scenarios["limited"]["vs_unlimited"] > 0
    assert scenarios["rate"]["not_completed"] == 0 and scenarios["rate"]["held_per_s"] > 0
    assert all(scenarios["keys"][k] > 0 for k in ("claim_ms_plain", "claim_ms_10000_keys"))
    assert report["database"]["fsync"] in ("on", "off")
    # The printed table carries the same figures.
    assert "steps_per_s" in done.stdout and "lost_updates" in done.stdout
