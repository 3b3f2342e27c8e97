"""A private, throwaway PostgreSQL cluster for development, tests and benchmarks.

Developer tooling of a source checkout: the wheel leaves this module out (see
``hotmesh.devtools``). Used through ``hotmesh db {up,down,restart,run,url,env,status}`` and
importable by tests::

    env = up("/tmp/some-dir", fast=True)  # -> {"PGHOST": ..., "DATABASE_URL": ..., ...}
    restart("/tmp/some-dir", "immediate")  # crash + recovery
    down("/tmp/some-dir")

The server listens only on a Unix socket inside the cluster directory D (no TCP;
``listen_addresses=''``); port 5433 only names the socket ``D/.s.PGSQL.5433``. Authentication is
``trust``: the directory is mode 0700, so only its owner (and root) can connect. Layout::

    D/data/          the cluster (initdb -U postgres -A trust -E UTF8 --no-locale)
    D/server.log     the server's log
    D/.s.PGSQL.5433  the socket

initdb, pg_ctl and postgres refuse to run as root: as root they run as the ``postgres`` system
user through ``runuser -u postgres --`` and D is chowned to it; clients stay root.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Final, Literal
from urllib.parse import quote

__all__ = [
    "ClusterError",
    "client_env",
    "cluster_env",
    "default_dir",
    "down",
    "is_running",
    "main",
    "restart",
    "run",
    "up",
]

StrPath = str | os.PathLike[str]
StopMode = Literal["smart", "fast", "immediate"]

PORT: Final = 5433
USER: Final = "postgres"
DATABASE: Final = "hotmesh"
OS_USER: Final = "postgres"  # the system user that runs the server when we are root
INSTALL_HINT: Final = "apt-get install postgresql-15"
START_TIMEOUT_S: Final = 120

# track_commit_timestamp: `hotmesh bench`'s signal latency on the engine's clock, from one
# commit to another as the server recorded them (pg_xact_commit_timestamp).
_BASE_SETTINGS: Final = (
    "shared_preload_libraries=pg_stat_statements",
    "max_connections=200",
    "track_commit_timestamp=on",
)
# Only settings that are safe against a *server* crash: with fsync=off a commit still write()s
# its WAL to the OS, so `restart(mode="immediate")` (crash-recovery tests) loses nothing.
# synchronous_commit=off is deliberately absent: it loses the last commits on a server crash,
# and with fsync=off it saves next to nothing.
_FAST_SETTINGS: Final = ("fsync=off", "full_page_writes=off")
_SOCKET_PATH_MAX: Final = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


class ClusterError(Exception):
    """A failure with a one-line, user-facing explanation."""


def _say(message: str) -> None:
    print(f"hotmesh db: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ locations


def default_dir() -> Path:
    """$HOTMESH_PGDIR, else /tmp/hotmesh-pg-<8 hex of sha1(cwd)>: one cluster per checkout."""
    configured = os.environ.get("HOTMESH_PGDIR", "")
    if configured:
        return Path(os.path.abspath(configured))
    digest = hashlib.sha1(os.getcwd().encode(), usedforsecurity=False).hexdigest()[:8]
    return Path(f"/tmp/hotmesh-pg-{digest}")  # noqa: S108 - deliberate: postgres must reach it


def _resolve(directory: StrPath | None) -> Path:
    if directory is None or str(directory) == "":
        return default_dir()
    return Path(os.path.abspath(os.fspath(directory)))


def _data(d: Path) -> Path:
    return d / "data"


def _log(d: Path) -> Path:
    return d / "server.log"


def _initialised(d: Path) -> bool:
    return (_data(d) / "PG_VERSION").is_file()


def cluster_env(directory: StrPath | None = None) -> dict[str, str]:
    """The environment that points clients at the cluster in `directory` (nothing is started)."""
    d = _resolve(directory)
    host = str(d)
    url = f"postgresql://{USER}@/{DATABASE}?host={quote(host, safe='/')}&port={PORT}"
    return {
        "PGHOST": host,
        "PGPORT": str(PORT),
        "PGUSER": USER,
        "PGDATABASE": DATABASE,
        "DATABASE_URL": url,
        "HOTMESH_PGDIR": host,
    }


# libpq connection parameters and the environment variables that set them.
_LIBPQ_ENV: Final = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "channel_binding": "PGCHANNELBINDING",
    "sslmode": "PGSSLMODE",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "requirepeer": "PGREQUIREPEER",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}


def client_env(directory: StrPath | None = None) -> dict[str, str]:
    """The client environment for tools that do not take a URL (pg_prove): with DATABASE_URL
    set, its parameters as PG* variables; otherwise the private cluster's (nothing started)."""
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        return cluster_env(directory)
    import psycopg  # deferred, as in _ensure_database

    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ClusterError(f"cannot parse DATABASE_URL: {exc}") from None
    env = {"DATABASE_URL": url}
    for key, value in params.items():
        if key not in _LIBPQ_ENV:
            raise ClusterError(f"DATABASE_URL parameter {key!r} has no PG* environment variable")
        env[_LIBPQ_ENV[key]] = str(value)
    return env


def _exports(env: dict[str, str]) -> str:
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


# ------------------------------------------------------------------------------ binaries


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin/initdb
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.parent.name))


def _bindir(d: Path) -> Path:
    """The server binaries: the cluster's own major version if installed, else `pg_config
    --bindir`, else the newest /usr/lib/postgresql/*/bin."""

    def usable(bindir: Path) -> bool:
        return (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file()

    version_file = _data(d) / "PG_VERSION"
    with contextlib.suppress(OSError):
        own = Path("/usr/lib/postgresql") / version_file.read_text().strip() / "bin"
        if usable(own):
            return own

    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=30
            ).stdout.strip()
            if out and usable(Path(out)):
                return Path(out)

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=_version_key)
    for initdb in reversed(candidates):
        if usable(initdb.parent):
            return initdb.parent
    raise ClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found via `pg_config --bindir` "
        f"or in /usr/lib/postgresql/*/bin; install them: {INSTALL_HINT}"
    )


def _as_root() -> bool:
    return os.geteuid() == 0


def _server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        raise ClusterError(
            f"running as root, but there is no `{OS_USER}` system user to run the server "
            f"({INSTALL_HINT} creates it)"
        ) from None


def _runuser() -> str:
    found = shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise ClusterError("running as root, but `runuser` (util-linux) is not installed")
    return found


def _command(d: Path, program: str, *args: str) -> list[str]:
    """`program` from the server's bindir, prefixed with runuser when we are root."""
    exe = str(_bindir(d) / program)
    if _as_root():
        _server_user()
        return [_runuser(), "-u", OS_USER, "--", exe, *args]
    return [exe, *args]


def _pg(
    d: Path, program: str, *args: str, timeout: float = START_TIMEOUT_S + 30
) -> subprocess.CompletedProcess[str]:
    cmd = _command(d, program, *args)
    try:
        # cwd=d: the server user may not be allowed into the caller's working directory.
        return subprocess.run(
            cmd,
            cwd=d,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise ClusterError(
            f"`{program} {' '.join(args)}` timed out after {timeout:.0f} s"
        ) from None
    except OSError as exc:
        raise ClusterError(f"cannot run {cmd[0]}: {exc.strerror}") from None


def _last_lines(text: str, n: int = 1) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


def _log_tail(d: Path, n: int = 3) -> str:
    try:
        return _last_lines(_log(d).read_text(errors="replace"), n)
    except OSError:
        return "(no server log)"


# ------------------------------------------------------------------------------ state


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    """Serialise up/down/restart on one directory (parallel `make` jobs, pytest workers)."""
    with open(d / ".hotmesh-db.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_running(directory: StrPath | None = None) -> bool:
    """True when the cluster in `directory` has a live server."""
    d = _resolve(directory)
    if not _initialised(d):
        return False
    result = _pg(d, "pg_ctl", "status", "-D", str(_data(d)), timeout=30)
    if result.returncode == 0:
        return True
    if result.returncode in (3, 4):  # not running / no accessible data directory
        return False
    raise ClusterError(f"pg_ctl status failed: {_last_lines(result.stderr + result.stdout)}")


def _prepare_dir(d: Path) -> None:
    if len(os.fsencode(d / f".s.PGSQL.{PORT}")) > _SOCKET_PATH_MAX:
        raise ClusterError(
            f"{d} is too long for a Unix socket path ({_SOCKET_PATH_MAX} bytes); "
            "use a shorter --dir"
        )
    if d.exists() and not d.is_dir():
        raise ClusterError(f"{d} exists and is not a directory")
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _as_root():
            user = _server_user()
            os.chown(d, user.pw_uid, user.pw_gid)
        d.chmod(0o700)
    except OSError as exc:
        raise ClusterError(f"cannot prepare {d}: {exc.strerror}") from None


def _check_server_user_access(d: Path) -> None:
    if not _as_root():
        return
    probe = subprocess.run(
        [_runuser(), "-u", OS_USER, "--", "test", "-w", str(d), "-a", "-x", str(d)],
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        raise ClusterError(
            f"the `{OS_USER}` system user cannot enter {d} (is it under /root or another "
            "private directory?); choose another --dir or HOTMESH_PGDIR, e.g. under /tmp"
        )


def _initdb(d: Path) -> None:
    data = _data(d)
    if data.exists() and any(data.iterdir()):
        raise ClusterError(f"{data} exists but holds no complete cluster; remove {d} and retry")
    _check_server_user_access(d)
    _say(f"initdb {data}")
    result = _pg(
        d,
        "initdb",
        "-D",
        str(data),
        "-U",
        USER,
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--no-locale",
        "--no-sync",
    )
    if result.returncode != 0:
        raise ClusterError(f"initdb failed: {_last_lines(result.stderr + result.stdout, 3)}")


def _server_options(d: Path, fast: bool) -> str:
    options = ["-p", str(PORT), "-k", str(d), "-c", "listen_addresses="]
    for setting in _BASE_SETTINGS + (_FAST_SETTINGS if fast else ()):
        options += ["-c", setting]
    # pg_ctl hands this string to /bin/sh, hence the quoting.
    return " ".join(shlex.quote(option) for option in options)


def _start(d: Path, fast: bool) -> None:
    _check_server_user_access(d)
    result = _pg(
        d,
        "pg_ctl",
        "start",
        "-D",
        str(_data(d)),
        "-l",
        str(_log(d)),
        "-w",
        "-t",
        str(START_TIMEOUT_S),
        "-o",
        _server_options(d, fast),
    )
    if result.returncode != 0:
        raise ClusterError(
            f"the server did not start: {_last_lines(result.stderr + result.stdout)}; "
            f"{_log(d)} says: {_log_tail(d)}"
        )
    _say(f"server started in {d}{' (fast: fsync=off)' if fast else ''}")


def _ensure_database(d: Path) -> None:
    import psycopg  # deferred: `hotmesh db down` works without the dependencies installed
    from psycopg import errors, sql

    try:
        with psycopg.connect(
            host=str(d),
            port=PORT,
            user=USER,
            dbname="postgres",
            connect_timeout=10,
            autocommit=True,
        ) as conn:
            found = conn.execute(
                "select 1 from pg_database where datname = %s", (DATABASE,)
            ).fetchone()
            if found is None:
                with contextlib.suppress(errors.DuplicateDatabase):
                    conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE)))
                    _say(f"created database {DATABASE}")
    except psycopg.Error as exc:
        raise ClusterError(f"cannot create database {DATABASE}: {exc}".strip()) from None


# ------------------------------------------------------------------------------ public API


def up(directory: StrPath | None = None, fast: bool = False) -> dict[str, str]:
    """initdb if needed, start the server if it is not running, create the database; return the
    client environment (PGHOST, PGPORT, PGUSER, PGDATABASE, DATABASE_URL, HOTMESH_PGDIR).

    `fast` (fsync=off, full_page_writes=off) only applies when this call
    starts the server: an already running server keeps its settings."""
    d = _resolve(directory)
    _bindir(d)  # fail before touching anything when the server binaries are missing
    _prepare_dir(d)
    with _locked(d):
        if not _initialised(d):
            _initdb(d)
        if is_running(d):
            _say(f"server already running in {d}")
        else:
            _start(d, fast)
        _ensure_database(d)
    return cluster_env(d)


def down(directory: StrPath | None = None) -> bool:
    """Fast shutdown; True if a server was stopped, False if none was running."""
    d = _resolve(directory)
    if not _initialised(d):
        return False
    with _locked(d):
        if not is_running(d):
            return False
        result = _pg(d, "pg_ctl", "stop", "-D", str(_data(d)), "-m", "fast", "-w")
        if result.returncode != 0 and is_running(d):
            raise ClusterError(f"pg_ctl stop failed: {_last_lines(result.stderr + result.stdout)}")
    _say(f"server stopped in {d}")
    return True


def restart(directory: StrPath | None = None, mode: StopMode = "fast") -> None:
    """`pg_ctl restart -m mode`: `immediate` simulates a crash (the server recovers from WAL).
    The server comes back with the options it was started with; returns once it accepts
    connections."""
    if mode not in ("smart", "fast", "immediate"):
        raise ClusterError(f"unknown shutdown mode {mode!r} (use fast or immediate)")
    d = _resolve(directory)
    with _locked(d) if d.is_dir() else contextlib.nullcontext():
        if not is_running(d):
            raise ClusterError(f"no server is running in {d}; start one with `hotmesh db up`")
        result = _pg(
            d,
            "pg_ctl",
            "restart",
            "-D",
            str(_data(d)),
            "-m",
            mode,
            "-l",  # without -l the new postmaster would write to (and hold open) our pipe
            str(_log(d)),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
        )
        if result.returncode != 0:
            raise ClusterError(
                f"pg_ctl restart failed: {_last_lines(result.stderr + result.stdout)}; "
                f"{_log(d)} says: {_log_tail(d)}"
            )
    _say(f"server restarted ({mode}) in {d}")


def _exec(cmd: Sequence[str], env: dict[str, str] | None) -> int:
    """Run cmd in the foreground; return its exit status (128+N when killed by signal N).

    SIGINT from the terminal reaches the child directly (same process group), so we only wait
    for it; SIGTERM and SIGHUP sent to us are passed on to the child."""
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    def ignore(_signum: int, _frame: FrameType | None) -> None:
        pass

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, ignore),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
        signal.SIGHUP: signal.signal(signal.SIGHUP, forward),
    }
    try:
        try:
            # close_fds=False: keep e.g. make's jobserver pipe usable by a `$(MAKE)` child.
            children.append(subprocess.Popen(list(cmd), env=env, close_fds=False))
        except FileNotFoundError:
            _say(f"command not found: {cmd[0]}")
            return 127
        except PermissionError:
            _say(f"permission denied: {cmd[0]}")
            return 126
        returncode = children[0].wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 128 - returncode if returncode < 0 else returncode


def run(directory: StrPath | None, fast: bool, cmd: Sequence[str]) -> int:
    """Run cmd against a database and return its exit status.

    With DATABASE_URL already set, cmd runs with the environment unchanged. Otherwise the
    private cluster is started (if not already running), cmd runs with its environment, and the
    cluster is stopped again if this call started it: also when cmd fails or is interrupted."""
    if not cmd:
        raise ClusterError("nothing to run: hotmesh db run [--dir D] [--fast] -- CMD ...")
    if os.environ.get("DATABASE_URL"):
        return _exec(cmd, None)
    d = _resolve(directory)
    was_running = is_running(d)
    returncode = 1
    try:
        env = up(d, fast)
        returncode = _exec(cmd, {**os.environ, **env})
    finally:
        if not was_running:
            try:
                down(d)
            except ClusterError as exc:
                _say(f"stopping the server failed: {exc}")
                returncode = returncode or 1
    return returncode


# ------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotmesh db",
        description="A private PostgreSQL cluster on a Unix socket, for development and tests.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--dir",
            metavar="D",
            help="cluster directory (default: $HOTMESH_PGDIR, else /tmp/hotmesh-pg-<sha1(cwd)>)",
        )
        return sub

    fast_help = "fsync=off, full_page_writes=off (for tests, not benchmarks)"
    sub = command("up", "initdb if needed, start the server, print shell export lines")
    sub.add_argument("--fast", action="store_true", help=fast_help)
    command("down", "stop the server (fast shutdown); no error if it is not running")
    sub = command("restart", "restart the server (immediate: simulate a crash)")
    sub.add_argument("--mode", choices=["fast", "immediate"], default="fast")
    sub = command(
        "run",
        "run CMD with the cluster's environment, starting and afterwards stopping the cluster "
        "if needed; with DATABASE_URL set, just run CMD",
    )
    sub.add_argument("--fast", action="store_true", help=fast_help)
    sub.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    command("url", "print the cluster's DATABASE_URL")
    command(
        "env",
        "print export lines for the database in use: DATABASE_URL's parameters as PG* "
        "variables if it is set (for pg_prove, which takes no URL), else the cluster's",
    )
    command("status", "exit 0 if the server is running, 1 if not")
    return parser


def main(argv: Sequence[str]) -> int:
    """`hotmesh db ARGS`; returns the exit status."""
    args = list(argv)
    cmd: list[str] | None = None
    if args[:1] == ["run"] and "--" in args:
        split = args.index("--")
        args, cmd = args[:split], args[split + 1 :]
    try:
        options = _parser().parse_args(args)
    except SystemExit as exc:  # --help, usage errors
        return exc.code if isinstance(exc.code, int) else 2

    try:
        if options.command == "up":
            sys.stdout.write(_exports(up(options.dir, options.fast)))
        elif options.command == "down":
            if not down(options.dir):
                _say(f"no server running in {_resolve(options.dir)}")
        elif options.command == "restart":
            restart(options.dir, options.mode)
        elif options.command == "run":
            return run(options.dir, options.fast, cmd if cmd is not None else options.cmd)
        elif options.command == "url":
            print(cluster_env(options.dir)["DATABASE_URL"])
        elif options.command == "env":
            sys.stdout.write(_exports(client_env(options.dir)))
        elif options.command == "status":
            running = is_running(options.dir)
            print(f"{'running' if running else 'stopped'}: {_resolve(options.dir)}")
            return 0 if running else 1
    except ClusterError as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    return 0


if __name__ == "__main__":  # `python python/hotmesh/devtools/pgcluster.py down`: stdlib only
    sys.exit(main(sys.argv[1:]))
