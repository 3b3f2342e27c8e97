"""One source of schema truth (docs/schema.md).

- An app upgraded from an older release equals a fresh install: tables, columns, indexes,
  constraints, types, views, functions with their signatures, attributes and bodies, and every
  privilege (tests/schema_snapshot.py describes both; procrastinate's migration test).
  "Upgraded" means what a user's upgrade is: each older release is installed by *its own*
  installer from *its own* files (`git archive` of that commit: python/hotmesh, sql/,
  migrations/, run in a subprocess), then the next one, and finally this checkout's installer
  migrates it. So functions that an older sql/ defined and this one does not are really there
  before the last step, and the comparison proves the installer removes them.
- The committed snapshot tests/schema.sql is what a fresh install has (`make schema` rewrites
  it).
- The installer drops what sql/ no longer defines, keeps what it does, and stops, changing
  nothing, when an object of the user's depends on what it would drop.
- engine_version() names the release and the newest migration.
- The public functions are listed once, in sql/99_grants.sql and the catalog: every name there
  exists, every public function is documented, and every function Python calls exists.

The tests install their own apps (they do not use the `app` fixture) and need the git history
of the checkout for the older releases.
"""

from __future__ import annotations

import asyncio
import difflib
import io
import os
import re
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from hotmesh._install import PRIVILEGES_FILE, engine_version, migrate, migrations
from hotmesh.errors import HotMeshError
from schema_snapshot import REGENERATE, SNAPSHOT, describe, drop_app

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parent.parent

# Older states of the engine a user may run today, oldest first. There are no release tags
# yet, so these are the last commit of each schema version and the first of the next one
# (what an upgrade to that migration started from and ended at). The history before the first
# one edited migrations/0001 in place (the seed's import, never released); from it on,
# migrations are append-only (test_migrations_are_never_edited). Add each tagged release here.
RELEASES = (
    "b48d79f2c3fe47a01ea5cee2dff59972c135f77b",  # migrations 0001-0004
    "1ab58def61e945f6f7d5aa41cc0e4efd57812aef",  # the last with 0004
    "fd2cdfa7bba36fd2e37ed5b9c07439997c74da4b",  # 0005
    "35f60de77f55c7645dd20326b73940b16dc2f1dc",  # the last with 0005
    "2390cf4ce14bc6387ad99777b9410a45b068f98d",  # 0006
    "4ca196596638d7eac6dd31b932cfee7fb7eb0729",  # the engine before issue 12
    "2543b6f37916a15ec04d9fbef7d0ab7e89182125",  # 0.1.0: 0007, worker protocol 1
    "1ac7bd8b913304dfbea1c5adb97daf10eb4b510e",  # 0.2.0: 0013, worker protocol 2
    "2a4ff67bba6cef77a261b627bc4cf4cc492eba6f",  # 0.3.0: 0017, worker protocol 3
    "19fa91879b0503f84830927ba220db6224b5132d",  # 0.4.0: 0021, worker protocol 4
    "3f67c521d02dee189858a5cb39f86f2ab055f588",  # 0.5.0: 0023, worker protocol 4
)

# Run by each release's own package in turn, in one interpreter: its installer, on its own
# sql/ and migrations/ (the hotmesh modules of the one before are forgotten first).
_OLD_MIGRATE = """
import asyncio, importlib, sys
dsn, app = sys.argv[1:3]
for root in sys.argv[3:]:
    for name in [m for m in sys.modules if m == "hotmesh" or m.startswith("hotmesh.")]:
        del sys.modules[name]
    sys.path.insert(0, root + "/python")
    importlib.invalidate_caches()
    _install = importlib.import_module("hotmesh._install")
    if not _install.__file__.startswith(root + "/"):
        sys.exit(f"imported {_install.__file__}, not the release's installer in {root}")
    try:
        asyncio.run(_install.migrate(dsn, app))
    except Exception as error:
        sys.exit(f"release {root} failed to install: {error!r}")
    sys.path.remove(root + "/python")
"""


def git(*args: str) -> bytes:
    try:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"").decode().strip() or exc
        pytest.fail(
            f"git {' '.join(args)} failed ({detail}): the upgrade tests need this checkout's "
            "git history (in a shallow clone: git fetch --unshallow)"
        )
    return done.stdout


def admin(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def new_app(purpose: str) -> str:
    return f"hm_{purpose}_{uuid.uuid4().hex[:8]}"


def schema_of(dsn: str, app: str) -> str:
    with admin(dsn) as conn:
        return describe(conn, app, bodies=True)


def install_releases(dsn: str, app: str, revs: Sequence[str], into: Path) -> None:
    """Install or upgrade `app` as each release of `revs` did, one after another: each by its
    own package, in one subprocess."""
    roots = []
    for rev in revs:
        root = into / rev
        if not root.exists():
            archive = git("archive", "--format=tar", rev, "python/hotmesh", "sql", "migrations")
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(root, filter="data")
        roots.append(str(root))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", _OLD_MIGRATE, dsn, app, *roots],
        env=env,
        capture_output=True,
        text=True,
        timeout=60 * len(revs),
    )
    assert done.returncode == 0, f"installing {[r[:7] for r in revs]}: {done.stderr}"


@pytest.fixture(scope="module")
def dsn(cluster_dsn: str) -> str:
    """These tests install their own apps, in the cluster's database (not a template copy)."""
    return cluster_dsn


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("releases")


@pytest.fixture(scope="module")
def fresh(dsn: str) -> Iterator[str]:
    """An app installed from scratch by this checkout's installer."""
    app = new_app("fresh")
    asyncio.run(migrate(dsn, app))
    yield app
    drop_app(dsn, app)


@pytest.fixture
def apps(dsn: str) -> Iterator[list[str]]:
    """Apps a test makes; dropped afterwards."""
    made: list[str] = []
    yield made
    for app in made:
        drop_app(dsn, app)


def fail_on_diff(expected: str, actual: str, names: tuple[str, str], problem: str) -> None:
    """Fails with `problem` and a unified diff when the two texts differ."""
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True), actual.splitlines(keepends=True), *names
        )
    )
    if diff:
        pytest.fail(f"{problem}\n{diff}", pytrace=False)


def assert_same_schema(upgraded: str, fresh: str) -> None:
    fail_on_diff(
        fresh,
        upgraded,
        ("fresh install", "upgraded"),
        "the upgraded schema differs from a fresh install:",
    )


# ------------------------------------------------------------------------ upgrade == fresh


@pytest.mark.parametrize(
    "path",
    [RELEASES, RELEASES[:1]],
    ids=["release by release", "first release to now"],
)
def test_an_upgraded_app_equals_a_fresh_install(
    dsn: str, fresh: str, releases: Path, apps: list[str], path: tuple[str, ...]
) -> None:
    app = new_app("upgraded")
    apps.append(app)
    install_releases(dsn, app, path, releases)
    applied = asyncio.run(migrate(dsn, app))
    assert applied == [v for v, _ in migrations() if v > max(_release_migrations(path[-1]))]
    assert_same_schema(schema_of(dsn, app), schema_of(dsn, fresh))


def test_the_upgrade_keeps_the_idempotency_keys(dsn: str, releases: Path, apps: list[str]) -> None:
    """Migration 0023 moves a start's idempotency key from jobs to start_keys: a key a run
    took before the upgrade still returns that run (installed by 0.4.0, the last release
    before 0023)."""
    app = new_app("keys")
    apps.append(app)
    install_releases(dsn, app, [r for r in RELEASES if r.startswith("19fa918")], releases)
    start = sql.SQL("select {}.start_workflow('w', '[]', 'q', %s, null, %s)").format(
        sql.Identifier(app)
    )
    key = '{"idempotency_key": "order-7"}'
    with admin(dsn) as conn:
        assert conn.execute(start, ("old", key)).fetchone() == ("old",)
    asyncio.run(migrate(dsn, app))
    with admin(dsn) as conn:
        keys = sql.SQL("select idempotency_key, job_id from {}.start_keys").format(
            sql.Identifier(app)
        )
        assert conn.execute(keys).fetchall() == [("order-7", "old")]
        assert conn.execute(start, ("new", key)).fetchone() == ("old",)


def _release_migrations(rev: str) -> list[int]:
    names = git("ls-tree", "--name-only", f"{rev}:migrations").decode().split()
    return [int(name[:4]) for name in names if re.match(r"\d{4}_.*\.sql$", name)]


def test_migrations_are_never_edited() -> None:
    """A released migration is never changed (an upgraded app has the old one applied): a
    change to the schema is a new migration."""
    current = {path.name: path.read_bytes() for _, path in migrations()}
    edited = []
    for rev in RELEASES:
        for name in git("ls-tree", "--name-only", f"{rev}:migrations").decode().split():
            if git("show", f"{rev}:migrations/{name}") != current.get(name):
                edited.append(f"{name} (as released in {rev[:7]})")
    assert edited == [], "released migrations were changed or removed; add a new one instead"


# ------------------------------------------------------------------------ the snapshot


def test_the_snapshot_is_up_to_date(dsn: str, fresh: str) -> None:
    with admin(dsn) as conn:
        now = describe(conn, fresh)
    committed = SNAPSHOT.read_text() if SNAPSHOT.exists() else ""
    fail_on_diff(
        committed,
        now,
        ("tests/schema.sql (committed)", "a fresh install"),
        f"tests/schema.sql is out of date: {REGENERATE}.",
    )


# ------------------------------------------------------------------------ what the installer drops


STALE = """
create function old_api(p integer) returns integer language sql as 'select p';
create function signal(p_signal_id text) returns jsonb language sql as 'select null::jsonb';
create function _old_helper() returns integer language sql as 'select 1';
create procedure old_job() language sql as 'select 1';
create view old_view as select old_api(1) as x;
create view old_view2 as select x from old_view;
"""


def routines(conn: psycopg.Connection[Any], app: str, *names: str) -> list[str]:
    rows = conn.execute(
        "select p.oid::regprocedure::text from pg_proc as p"
        " where p.pronamespace = %s::regnamespace and p.proname = any(%s)",
        (app, list(names)),
    ).fetchall()
    return sorted(r[0].removeprefix(f"{app}.") for r in rows)


async def test_the_installer_drops_what_sql_no_longer_defines(
    dsn: str, fresh: str, apps: list[str]
) -> None:
    """Routines and views an older sql/ made (an old signature of `signal` among them) are
    gone after a migrate, in one transaction with the rest; what sql/ defines stays, with its
    grants."""
    app = new_app("stale")
    apps.append(app)
    await migrate(dsn, app)
    with admin(dsn) as conn:
        conn.execute(sql.SQL("set search_path = {}").format(sql.Identifier(app)))
        conn.execute(STALE)
        conn.execute(
            sql.SQL("grant execute on function signal(text) to {}").format(
                sql.Identifier(f"{app}_app")
            )
        )
        assert routines(conn, app, "old_api", "signal", "_old_helper", "old_job") == [
            "_old_helper()",
            "old_api(integer)",
            "old_job()",
            "signal(text)",
            "signal(text,jsonb,text,text)",
        ]
    assert await migrate(dsn, app) == []
    with admin(dsn) as conn:
        assert routines(conn, app, "old_api", "signal", "_old_helper", "old_job") == [
            "signal(text,jsonb,text,text)"
        ]
        for view in ("old_view", "old_view2"):
            assert conn.execute("select to_regclass(%s)", (f"{app}.{view}",)).fetchone() == (None,)
        can = conn.execute(
            "select has_function_privilege(%s, %s::regprocedure, 'execute')",
            (f"{app}_app", f"{app}.signal(text,jsonb,text,text)"),
        ).fetchone()
        assert can == (True,)
    assert_same_schema(schema_of(dsn, app), schema_of(dsn, fresh))


async def test_an_object_of_the_user_on_a_stale_one_stops_the_migrate(
    dsn: str, apps: list[str]
) -> None:
    app = new_app("dep")
    apps.append(app)
    await migrate(dsn, app)
    with admin(dsn) as conn:
        conn.execute(sql.SQL("set search_path = {}").format(sql.Identifier(app)))
        conn.execute(STALE)
        conn.execute(sql.SQL("create schema {}").format(sql.Identifier(f"{app}_mine")))
        conn.execute(
            sql.SQL("create view {}.report as select x from old_view").format(
                sql.Identifier(f"{app}_mine")
            )
        )
        before = describe(conn, app, bodies=True)
    try:
        with pytest.raises(HotMeshError) as caught:
            await migrate(dsn, app)
        message = str(caught.value)
        assert "cannot drop view old_view, old_view2, which sql/ no longer defines" in message
        assert f"{app}_mine.report depends on" in message
        assert "nothing was changed" in message
        assert schema_of(dsn, app) == before
    finally:
        with admin(dsn) as conn:
            conn.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(f"{app}_mine")))


# ------------------------------------------------------------------------ engine_version


async def test_engine_version_names_the_release_and_the_newest_migration(
    dsn: str, fresh: str
) -> None:
    newest = migrations()[-1][0]
    installed = await engine_version(dsn, fresh)
    assert (installed.version, installed.migration) == (version("hotmesh"), newest)
    # The application's role may ask (it is public API), like the worker's.
    with admin(dsn) as conn:
        for role in (f"{fresh}_app", f"{fresh}_worker", f"{fresh}_reader"):
            with conn.transaction():
                conn.execute(sql.SQL("set local role {}").format(sql.Identifier(role)))
                row = conn.execute(
                    sql.SQL("select version, migration from {}.engine_version()").format(
                        sql.Identifier(fresh)
                    )
                ).fetchone()
                assert row == (version("hotmesh"), newest)


def test_hotmesh_version_prints_the_package_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hotmesh.cli", "--version"], capture_output=True, text=True
    )
    assert (out.returncode, out.stdout) == (0, f"hotmesh {version('hotmesh')}\n")


# ------------------------------------------------------------------------ the public functions


def granted_names() -> dict[str, list[str]]:
    """The function lists of sql/99_grants.sql, by variable."""
    text = (REPO / "sql" / PRIVILEGES_FILE).read_text()
    lists = {
        m.group(1): re.findall(r"'([a-z_0-9]+)'", m.group(2))
        for m in re.finditer(r"(v_\w+_functions) text\[\] := array\[(.*?)\];", text, re.S)
    }
    assert set(lists) == {
        "v_app_functions",
        "v_worker_functions",
        "v_reader_functions",
        "v_reviewer_functions",
    }, f"sql/{PRIVILEGES_FILE} no longer lists functions as this test reads them: update it"
    return lists


def public_functions(dsn: str, app: str) -> dict[str, tuple[bool, bool, bool, bool]]:
    """Each public (not `_`-prefixed) routine: may <app>_app, <app>_worker, <app>_reader,
    <app>_reviewer execute it."""
    with admin(dsn) as conn:
        rows = conn.execute(
            "select p.proname::text, bool_or(has_function_privilege(%s, p.oid, 'execute')),"
            " bool_or(has_function_privilege(%s, p.oid, 'execute')),"
            " bool_or(has_function_privilege(%s, p.oid, 'execute')),"
            " bool_or(has_function_privilege(%s, p.oid, 'execute'))"
            " from pg_proc as p where p.pronamespace = %s::regnamespace"
            " and p.proname !~ '^_' group by p.proname",
            (f"{app}_app", f"{app}_worker", f"{app}_reader", f"{app}_reviewer", app),
        ).fetchall()
    return {name: (a, w, r, v) for name, a, w, r, v in rows}


def test_every_granted_name_is_a_function_of_the_schema(dsn: str, fresh: str) -> None:
    public = public_functions(dsn, fresh)
    lists = granted_names()
    app, worker = lists["v_app_functions"], lists["v_worker_functions"]
    reader, reviewer = lists["v_reader_functions"], lists["v_reviewer_functions"]
    missing = sorted(set(app + worker) - set(public))
    assert missing == [], f"sql/{PRIVILEGES_FILE} grants functions that do not exist"
    assert sorted(n for n, (a, _, _, _) in public.items() if a) == sorted(app)
    assert sorted(n for n, (_, w, _, _) in public.items() if w) == sorted(app + worker)
    # The reader's functions are some of the application's: those that change nothing; the
    # reviewer's are the human task functions, which the application may call too.
    assert sorted(n for n, (_, _, r, _) in public.items() if r) == sorted(reader)
    assert set(reader) <= set(app)
    assert sorted(n for n, (_, _, _, v) in public.items() if v) == sorted(reviewer)
    assert set(reviewer) <= set(app)


def documented_names() -> set[str]:
    """Every identifier in the code spans and code blocks of README.md and docs/."""
    names: set[str] = set()
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]:
        text = path.read_text()
        for code in re.findall(r"```.*?```|`[^`\n]+`", text, re.S):
            names.update(re.findall(r"[a-z_][a-z0-9_]*", code))
    return names


def test_every_public_function_is_documented(dsn: str, fresh: str) -> None:
    undocumented = sorted(set(public_functions(dsn, fresh)) - documented_names())
    assert undocumented == [], "public SQL functions missing from README.md and docs/*.md"


def test_every_function_python_calls_exists_and_is_public(dsn: str, fresh: str) -> None:
    """Python names the engine's functions after the schema placeholder (`{}.claim_tasks(`,
    `{schema}.claim_tasks(`): each one is a public function of a fresh schema, so a function
    renamed or dropped in sql/ cannot leave a caller behind."""
    called: set[str] = set()
    package = REPO / "python" / "hotmesh"
    for path in sorted([*package.glob("**/*.py"), *package.glob("**/*.sql")]):
        # (`insert into {}.jobs (...)` names a table and its columns, not a function.)
        text = path.read_text()
        called.update(re.findall(r"(?<!into )\{[a-z_]*\}\.([a-z_][a-z0-9_]*)\s*\(", text))
    assert len(called) >= 20, f"found only {sorted(called)}: has the SQL of python/ moved?"
    assert sorted(called - set(public_functions(dsn, fresh))) == []
