"""README.md and docs/*.md: every code block that claims to run is run here, file by file, top
to bottom, as a reader would type it.

The convention (the fence's info string: a language, then a tag; renderers ignore the tag):

    ```sh run            run; ```sql run and ```python run likewise
    ```sh run background started and left running (a worker in its own terminal); stopped when
                         the file is done
    ```sql run fails     run, and must fail with the message its `-- ERROR: ...` comment shows
    ```sql illustration  never run; its first line is a comment that says so and why
    ```text transcript   `$ command` lines run like `sh run`; each one's output must match the
                         lines under it, once times and ages are masked and runs of spaces
                         (column widths) count as one
    ```text              output, diagrams, listings: never run
    ```sh run citus      (any language) run only on a Citus cluster, by tests/test_citus.py

Every `python`, `sql` and `sh` block carries `run` or `illustration` (test_every_block_is_tagged),
so no block can claim to run without being run. A block inside an HTML comment (`<!-- ... -->`)
runs like any other but is not shown: the checks that the visible blocks did what the prose says.

One session per file, its blocks in order:
- README.md runs against a new private cluster: the environment has no DATABASE_URL or PG*
  variables and HOTMESH_PGDIR names a fresh directory, so the README's own
  `eval "$(make -s db-up)"` creates and starts it. docs/*.md run against a fresh database of the
  test cluster (DATABASE_URL and PG* point at it), so each starts with no app installed.
- sh: `bash -euo pipefail` from the repository's root; exported variables and the directory carry
  over from block to block (as in one terminal).
- sql: `psql -X -v ON_ERROR_STOP=1` with that environment: any error fails the test.
- python: one interpreter per file; names carry over from block to block; top-level `await` runs
  on an event loop that keeps running between blocks, so a worker a block starts serves the
  blocks after it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from helpers import uses_my_app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE = {"python", "sql", "sh"}
SHOWN = {"text", ""}  # output and listings: never run
# Written in parallel by other work (issue 12); linked from here before they land.
PENDING = {"state-machines.md", "schema.md", "signals.md", "credentials.md"}

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)(?P<tags>[^\n]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    tags: tuple[str, ...]
    body: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line} ({self.lang} {' '.join(self.tags)})"


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    found = []
    for match in _FENCE.finditer(text):
        indent = match["indent"]
        body = "".join(
            line[len(indent) :] if line.startswith(indent) else line
            for line in match["body"].splitlines(keepends=True)
        )
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(path, line, match["lang"], tuple(match["tags"].split()), body))
    return found


def test_every_block_is_tagged() -> None:
    problems = []
    for path in DOCS:
        for block in blocks(path):
            if block.lang in SHOWN:
                continue
            if block.lang not in CODE:
                problems.append(f"{block}: unknown language (use python, sql, sh or text)")
            elif "run" not in block.tags and "illustration" not in block.tags:
                problems.append(f"{block}: tag it `run` or `illustration`")
            elif "illustration" in block.tags:
                first = block.body.lstrip().splitlines()[0] if block.body.strip() else ""
                if not re.match(r"(#|--)\s*illustration\b", first):
                    problems.append(f"{block}: an illustration's first line must say so")
    assert not problems, "\n".join(problems)


def test_readme_is_the_front_door() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the manual goes in docs/"


def test_links_resolve() -> None:
    """Every relative link of README and docs names a file (and a heading) that exists."""
    problems = []
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if not resolved.exists():
                if resolved.name not in PENDING:
                    problems.append(f"{path.relative_to(ROOT)}: {target}: no such file")
                continue
            if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                problems.append(f"{path.relative_to(ROOT)}: {target}: no such heading")
    assert not problems, "\n".join(problems)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


# -- running a file's blocks ---------------------------------------------------------------------

_KERNEL = r"""
import ast, asyncio, inspect, json, sys, threading, traceback
loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
namespace = {"__name__": "__docs__"}
for request in sys.stdin:
    source, name = json.loads(request)
    error = None
    try:
        code = compile(source, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if code.co_flags & inspect.CO_COROUTINE:
            asyncio.run_coroutine_threadsafe(eval(code, namespace), loop).result(180)
        else:
            exec(code, namespace)
    except BaseException:
        error = traceback.format_exc()
    sys.stdout.flush()
    print("\x00DONE " + json.dumps(error), flush=True)
"""


class Session:
    """One reader's terminal(s) for one file: shell state, a Python interpreter, workers."""

    def __init__(self, env: dict[str, str], work: Path) -> None:
        self.work = work
        self.state = work / "state.sh"
        self.env_file = work / "state.env"
        self.cwd_file = work / "cwd"
        self.state.write_text("")
        self.cwd_file.write_text(str(ROOT))
        self.base = env
        self.env = dict(env)
        self.background: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.kernel: subprocess.Popen[str] | None = None

    def cwd(self) -> str:
        return self.cwd_file.read_text().strip()

    def run(self, block: Block) -> None:
        if "transcript" in block.tags:
            self.transcript(block)
            return
        {"sh": self.sh, "sql": self.sql, "python": self.python}[block.lang](block)

    def transcript(self, block: Block) -> None:
        commands: list[tuple[str, list[str]]] = []
        for line in block.body.splitlines():
            if line.startswith("$ "):
                commands.append((line[2:], []))
            else:
                assert commands, f"{block}: a transcript starts with a `$ ` line"
                commands[-1][1].append(line)
        for command, expected in commands:
            prelude = f"source {self.state}\ncd {self.cwd()}\nset -euo pipefail\n"
            done = subprocess.run(
                ["bash", "-c", prelude + command],
                env=self.base,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, f"{block}: $ {command}\n{done.stderr}"
            assert _masked(done.stdout.splitlines()) == _masked(expected), (
                f"{block}: $ {command} printed:\n{done.stdout}"
            )

    def sh(self, block: Block) -> None:
        prelude = f"source {self.state}\ncd {self.cwd()}\nset -euo pipefail\n"
        if "background" in block.tags:
            log = self.work / f"background-{block.line}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    ["bash", "-c", prelude + block.body],
                    env=self.base,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.background.append((proc, log))
            return
        keep = f"\nexport -p > {self.state}\nenv -0 > {self.env_file}\npwd > {self.cwd_file}\n"
        done = subprocess.run(
            ["bash", "-c", prelude + block.body + keep],
            env=self.base,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{block} failed:\n{done.stdout}\n{done.stderr}"
        pairs = self.env_file.read_bytes().split(b"\0")
        self.env = dict(p.decode().split("=", 1) for p in pairs if b"=" in p)

    def sql(self, block: Block) -> None:
        script = self.work / "block.sql"
        script.write_text(block.body)
        done = subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(script)],
            env=self.env,
            cwd=self.cwd(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if "fails" in block.tags:
            expected = re.findall(r"--\s*ERROR:\s*(.+)", block.body)
            assert expected, f"{block}: a block that fails shows its error in an -- ERROR: line"
            assert done.returncode != 0, f"{block} was meant to fail:\n{done.stdout}"
            for message in expected:
                assert message.strip() in done.stderr, f"{block}: {done.stderr}"
            return
        assert done.returncode == 0 and "ERROR" not in done.stderr, (
            f"{block} failed:\n{done.stdout}\n{done.stderr}"
        )

    def python(self, block: Block) -> None:
        if self.kernel is None:
            self.kernel = subprocess.Popen(
                [sys.executable, "-c", _KERNEL],
                env=self.env,
                cwd=self.cwd(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        assert self.kernel.stdin is not None and self.kernel.stdout is not None
        self.kernel.stdin.write(json.dumps([block.body, str(block)]) + "\n")
        self.kernel.stdin.flush()
        output = []
        for line in self.kernel.stdout:
            if line.startswith("\x00DONE "):
                error = json.loads(line[len("\x00DONE ") :])
                assert error is None, f"{block} failed:\n{''.join(output)}\n{error}"
                return
            output.append(line)
        raise AssertionError(f"{block}: the interpreter exited:\n{''.join(output)}")

    def close(self) -> None:
        if self.kernel is not None:
            self.kernel.kill()
            self.kernel.wait()
        for proc, log in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            else:
                # A worker that died early is a failure of the block that started it.
                raise AssertionError(f"a background block exited early:\n{log.read_text()}")


_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d(:?\d\d)?)?")
_AGE = re.compile(r"\b\d+(\.\d+)?[smhd]\b")


def _masked(lines: list[str]) -> list[str]:
    """Output lines with times and ages masked and column padding collapsed."""
    masked = [" ".join(_AGE.sub("<age>", _TIME.sub("<time>", line)).split()) for line in lines]
    while masked and not masked[-1]:
        masked.pop()
    return masked


def _runs(block: Block, citus: bool = False) -> bool:
    """Whether `block` runs here; `citus`: on the Citus cluster instead (its own blocks)."""
    return ("run" in block.tags or "transcript" in block.tags) and citus == ("citus" in block.tags)


def _runnable(path: Path) -> bool:
    return any(_runs(block) for block in blocks(path))


@pytest.fixture
def work() -> Iterator[Path]:
    # Under /tmp and open to the postgres user: the README's private cluster lives here.
    directory = Path(tempfile.mkdtemp(prefix="hotmesh-docs-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.timeout(600)
def test_readme_runs_top_to_bottom(work: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATABASE_URL"))}
    env["HOTMESH_PGDIR"] = str(work / "pg")
    session = Session(env, work)
    try:
        for block in blocks(ROOT / "README.md"):
            if _runs(block):
                session.run(block)
    finally:
        session.close()
        hotmesh = ROOT / ".venv" / "bin" / "hotmesh"
        subprocess.run([str(hotmesh), "db", "down", "--dir", str(work / "pg")], check=False)


@uses_my_app
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "path",
    [p for p in DOCS[1:] if _runnable(p)],
    ids=lambda p: p.name,
)
def test_doc_runs_top_to_bottom(path: Path, dsn: str, work: Path) -> None:
    database = "docs_" + uuid.uuid4().hex[:10]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
    env = dict(os.environ)
    env["DATABASE_URL"] = psycopg.conninfo.make_conninfo(dsn, dbname=database)
    for key, value in psycopg.conninfo.conninfo_to_dict(env["DATABASE_URL"]).items():
        if key in ("host", "port", "user", "dbname"):
            env["PGDATABASE" if key == "dbname" else "PG" + key.upper()] = str(value)
    session = Session(env, work)
    try:
        for block in blocks(path):
            if _runs(block):
                session.run(block)
    finally:
        session.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database {} with (force)").format(sql.Identifier(database)))


def test_sql_api_lists_every_public_function(db: Any) -> None:
    """docs/sql-api.md names every function and procedure an app schema offers (the private
    `_helpers` aside), so a new one cannot ship undocumented."""
    text = (ROOT / "docs" / "sql-api.md").read_text()
    names = db.rows(
        "select distinct p.proname from pg_proc as p"
        " where p.pronamespace = %s::regnamespace and p.proname !~ '^_' order by 1",
        db.app,
    )
    missing = [name for (name,) in names if not re.search(rf"\b{name}\b", text)]
    assert not missing, f"docs/sql-api.md does not mention: {', '.join(missing)}"
