"""The wheel is the product: the engine (SQL), the client, the worker and the CLI, and nothing
that creates a database cluster. Installed from it, `hotmesh db` says what to do instead."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, unpacked; built once per run: pytest-xdist workers share the run's directory
    above their own temporary ones, and the first to take the lock builds (some 10 s of CPU)."""
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "wheel"
    shared.mkdir(exist_ok=True)
    unpacked = shared / "unpacked"
    with (shared / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not unpacked.is_dir():
            out = shared / "built"
            command = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q"]
            command += ["-w", str(out)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=110, check=False)
            assert done.returncode == 0, done.stderr[-2000:]
            (found,) = out.glob("hotmesh-*.whl")
            with zipfile.ZipFile(found) as archive:
                archive.extractall(shared / "partial")
            (shared / "partial").rename(unpacked)
    return unpacked


@pytest.mark.timeout(120)
def test_wheel_holds_the_product_and_no_cluster_manager(wheel: Path) -> None:
    files = {p.relative_to(wheel).as_posix() for p in (wheel / "hotmesh").rglob("*") if p.is_file()}
    modules = {f for f in files if f.endswith(".py")}
    for product in ("client", "worker", "workflow", "cli", "_db", "_install", "_runner"):
        assert f"hotmesh/{product}.py" in modules
    assert "hotmesh/py.typed" in files
    engine = {Path(f).name for f in files if f.startswith("hotmesh/sql/")}
    assert engine == {p.name for p in (ROOT / "sql").glob("*.sql")}
    migrations = {Path(f).name for f in files if f.startswith("hotmesh/migrations/")}
    assert migrations == {p.name for p in (ROOT / "migrations").glob("*.sql")}
    # The checkout has the cluster manager; the wheel has no module that runs initdb.
    assert (ROOT / "python/hotmesh/devtools/pgcluster.py").is_file()
    assert not [f for f in modules if "initdb" in (wheel / f).read_text()]
    assert "hotmesh/devtools/bench.py" in modules
    # The dashboard (`hotmesh ui`) ships its templates and assets: no CDN, no build step.
    for asset in ("ui/templates/workflow.html", "ui/static/ui.js", "ui/static/ui.css"):
        assert f"hotmesh/{asset}" in files


def test_the_engine_imports_nothing_of_the_dashboard() -> None:
    program = (
        "import sys, hotmesh, hotmesh.cli, hotmesh.worker, hotmesh.client;"
        " extra = ('hotmesh.ui', 'starlette', 'uvicorn', 'jinja2', 'multipart', 'pydantic',"
        " 'cryptography');"
        " loaded = sorted(m for m in sys.modules if m.startswith(extra)); assert not loaded, loaded"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.timeout(120)
def test_installed_hotmesh_db_says_what_to_do(wheel: Path, tmp_path: Path) -> None:
    # The wheel's package, ahead of the checkout this test runs from.
    program = (
        "import sys; sys.path.insert(0, sys.argv[1]); import hotmesh;"
        " assert hotmesh.__file__.startswith(sys.argv[1]), hotmesh.__file__;"
        " from hotmesh.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    cluster = tmp_path / "cluster"
    up = [sys.executable, "-c", program, str(wheel), "db", "up", "--dir", str(cluster)]
    done = subprocess.run(up, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "not include it" in done.stderr and "DATABASE_URL" in done.stderr
    assert "make db-up" in done.stderr
    assert not cluster.exists()
    bench = [sys.executable, "-c", program, str(wheel), "bench", "--help"]
    done = subprocess.run(bench, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "--history-jobs" in done.stdout, done.stderr
