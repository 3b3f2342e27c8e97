"""`hotmesh bench` runs end to end on a tiny load: the report has every scenario's figures and
every workflow completed. No timing is asserted: speed is measured, not tested.

One test a group of scenarios (those whose ratios are taken in the same run go together), so
that pytest-xdist spreads them; one group goes through the command line, the others through
the command's own `main` in this process (the same parser and report, without starting
another interpreter)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotmesh.devtools import bench

TINY = ["-n", "5", "-k", "2", "--long-steps", "3", "-c", "2"]
TINY += ["--queue-tasks", "20", "--history-jobs", "100", "--history-backlog", "300"]
TINY += ["--key-tasks", "300", "--queue-keys", "3", "--key-max-running", "1"]
TINY += ["--repeat", "1", "--seconds", "1", "--samples", "3", "--hooks", "5"]
TINY += ["--start-count", "30", "--start-batch", "10", "--rate", "20", "--rate-seconds", "1"]
TINY += ["--parked", "20", "--parked-idle", "0"]
TINY += ["--held-rows", "2", "--held-seconds", "0.5", "--held-concurrency", "4"]


def _workflows(name: str) -> Callable[[dict[str, Any]], None]:
    def check(scenarios: dict[str, Any]) -> None:
        figures = scenarios[name]
        assert figures["not_completed"] == 0
        for key in ("workflows_per_s", "steps_per_s", "p50_s", "p95_s", "p99_s",
                    "commits_per_step", "worker_cpu_ms_per_step"):  # fmt: skip
            assert key in figures, (name, key)

    return check


def _ceiling_steps_limited(scenarios: dict[str, Any]) -> None:
    assert scenarios["ceiling"]["steps_per_s"] > 0
    for name in ("steps", "limited"):
        _workflows(name)(scenarios)
        assert scenarios[name]["steps_vs_ceiling"] > 0
    assert scenarios["limited"]["vs_unlimited"] > 0


def _starts(scenarios: dict[str, Any]) -> None:
    starts = scenarios["starts"]
    assert starts["not_started"] == 0
    assert starts["starts_per_s"] > 0 and starts["single_starts_per_s"] > 0


def _queue_keyed(scenarios: dict[str, Any]) -> None:
    assert scenarios["queue"]["not_completed"] == 0
    assert scenarios["queue"]["worker_cpu_ms_per_task"] >= 0
    assert scenarios["queue"]["db_cpu_ms_per_task"] >= 0  # None: the server was not found
    keyed = scenarios["keyed"]
    assert (keyed["not_completed"], keyed["keys"], keyed["key_max_running"]) == (0, 3, 1)
    assert keyed["tasks_per_s"] > 0 and keyed["vs_unkeyed"] > 0


def _rate(scenarios: dict[str, Any]) -> None:
    assert scenarios["rate"]["not_completed"] == 0 and scenarios["rate"]["held_per_s"] > 0


def _keys(scenarios: dict[str, Any]) -> None:
    assert all(scenarios["keys"][k] > 0 for k in ("claim_ms_plain", "claim_ms_10000_keys"))


def _signal(scenarios: dict[str, Any]) -> None:
    signal = scenarios["signal"]
    assert signal["samples"] == 3
    # Commit to commit on the engine's clock, with the server's commit timestamps (the test
    # below checks it is reported exactly when the server records them).
    assert signal.get("engine_p50_ms", 1) > 0 and signal["p50_ms"] > 0


def _parked(scenarios: dict[str, Any]) -> None:
    parked = scenarios["parked"]
    assert parked["parked"] == 20 and parked["rss_mb_n_idle"] > 0 and parked["claim_ms_n"] > 0


def _fanout(scenarios: dict[str, Any]) -> None:
    assert scenarios["fanout"]["lost_updates"] == 0


def _history(scenarios: dict[str, Any]) -> None:
    history = scenarios["history"]
    assert history["finished_jobs"] == 100
    assert history["claim_ms"] > 0 and history["claim_ms_with_history"] > 0


def _held(scenarios: dict[str, Any]) -> None:
    held = scenarios["held"]
    assert held["rows"] == 2 and held["unheld_per_s"] > 0 and held["held_per_s"] > 0
    assert held["held_done_s"] >= 0


GROUPS: dict[str, Callable[[dict[str, Any]], None]] = {
    "ceiling,steps,limited": _ceiling_steps_limited,
    "starts": _starts,
    "rate": _rate,
    "long": _workflows("long"),
    "remote": _workflows("remote"),
    "queue,keyed": _queue_keyed,
    "keys": _keys,
    "signal": _signal,
    "parked": _parked,
    "fanout": _fanout,
    "history": _history,
    "held": _held,
}


def test_the_groups_cover_every_scenario() -> None:
    groups = [name for group in GROUPS for name in group.split(",")]
    assert sorted(groups) == sorted(set(groups)) == sorted(bench.SCENARIOS)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("group", GROUPS)
def test_bench_reports_every_scenario(
    group: str, dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    argv = ["--dsn", dsn, "--app", "bench_" + uuid.uuid4().hex[:8], *TINY]
    argv += ["--scenarios", group, "--json", str(out)]
    if group == "ceiling,steps,limited":  # the command itself, once
        command = [sys.executable, "-m", "hotmesh.cli", "bench", *argv]
        done = subprocess.run(command, capture_output=True, text=True, timeout=110, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        printed = done.stdout
    else:
        parser = argparse.ArgumentParser()
        bench.add_arguments(parser)
        assert bench.main(parser.parse_args(argv)) == 0
        printed = capsys.readouterr().out

    report = json.loads(out.read_text())
    scenarios = report["scenarios"]
    assert set(scenarios) == set(group.split(","))
    GROUPS[group](scenarios)
    assert report["database"]["fsync"] in ("on", "off")
    if "signal" in scenarios:
        stamped = report["database"]["track_commit_timestamp"] == "on"
        assert ("engine_p50_ms" in scenarios["signal"]) == stamped
    # The printed table carries the same figures.
    for name, figures in scenarios.items():
        assert all(f"{name:10} {key:24}" in printed for key in figures), name


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind (callgrind)")
def test_bench_counts_the_workers_instructions(dsn: str, tmp_path: Path) -> None:
    """--count-instructions: the worker runs under callgrind; the instructions it executed
    from the start of the workflows to their end are reported per step (docs/tracing.md)."""
    out = tmp_path / "bench.json"
    argv = ["--dsn", dsn, "--app", "bench_" + uuid.uuid4().hex[:8], *TINY]
    argv += ["--scenarios", "steps", "--count-instructions", "--json", str(out)]
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.main(parser.parse_args(argv)) == 0
    steps = json.loads(out.read_text())["scenarios"]["steps"]
    assert steps["not_completed"] == 0
    # A step is some hundred thousand instructions of the worker's: never none, never a
    # whole second's worth.
    assert 10_000 < steps["worker_instructions_per_step"] < 1_000_000_000
