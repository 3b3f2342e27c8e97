"""A throwaway Citus cluster for `make test-citus`: a coordinator and two workers on this
machine, for the tests marked `citus` (tests/test_citus.py). Developer tooling, like
hotmesh.devtools.pgcluster (whose helpers it uses: initdb and pg_ctl run as the `postgres`
system user when we are root).

    python tests/citus_cluster.py run [--dir D] -- CMD ...   # up, CMD, down; exit CMD's status
    python tests/citus_cluster.py up | down | install [--dir D]

Citus: used as installed when `pg_config --sharedir`/extension/citus.control exists; otherwise
built from the source archive $CITUS_SRC (default: ../shared/vendor/citus-13.2.2.tar.gz next to
the checkout). Before building, the server headers are installed *pinned to the running
server's exact version*: Debian's postgresql-server-dev-15 from the security archive is newer
than the server, and installing it would upgrade the server itself (docs/citus.md).

Layout of D (default /tmp/hotmesh-citus-<8 hex of sha1(checkout)>):

    D/n0 (coordinator), D/n1, D/n2   the three clusters, each with data/ and server.log
    D/.s.PGSQL.<port>                their sockets (unix_socket_directories = D, mode 0700)

Nodes talk to each other over TCP on 127.0.0.1 only (Citus connects to the host name a node is
registered with), on three consecutive ports picked free from a base derived from D. The
database `hotmesh` gets `create extension citus` on every node; the coordinator registers
itself and the two workers. `run` exports DATABASE_URL (the coordinator, over its socket),
HOTMESH_CITUS_URL (the same) and HOTMESH_CITUS_NODES (the three URLs, space-separated).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from hotmesh.devtools import pgcluster

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SRC = ROOT.parent / "shared" / "vendor" / "citus-13.2.2.tar.gz"
DATABASE = "hotmesh"
NODES = 3
HOST = "127.0.0.1"
# shared_preload_libraries must name citus first. max_prepared_transactions: Citus commits
# writes to several nodes with two-phase commit.
SETTINGS = (
    "shared_preload_libraries=citus,pg_stat_statements",
    "max_connections=300",
    "max_prepared_transactions=300",
    "fsync=off",
    "full_page_writes=off",
    "citus.log_remote_commands=off",
    "wal_level=logical",  # citus_schema_move moves a schema online by logical replication
)


def say(message: str) -> None:
    print(f"citus cluster: {message}", file=sys.stderr, flush=True)


def default_dir() -> Path:
    digest = hashlib.sha1(str(ROOT).encode(), usedforsecurity=False).hexdigest()[:8]
    return Path(os.environ.get("HOTMESH_CITUS_DIR") or f"/tmp/hotmesh-citus-{digest}")  # noqa: S108


# ------------------------------------------------------------------------------ Citus itself


def _pg_config(option: str) -> str:
    return subprocess.run(
        ["pg_config", option], capture_output=True, text=True, check=True
    ).stdout.strip()


def citus_installed() -> bool:
    return (Path(_pg_config("--sharedir")) / "extension" / "citus.control").is_file()


def _server_package_version() -> str:
    """The Debian version of the installed server package, e.g. 15.18-0+deb12u1."""
    major = _pg_config("--version").split()[1].split(".")[0]
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", f"postgresql-{major}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise SystemExit(f"cannot tell the installed postgresql-{major} version: {out.stderr}")
    return out.stdout.strip()


def install_citus(force: bool = False) -> None:
    """Build and install Citus from $CITUS_SRC unless pg_config's extension dir has it (or
    `force`: build it anyway, e.g. to check the build of a fresh machine)."""
    if citus_installed() and not force:
        say(f"using the installed Citus ({_pg_config('--sharedir')}/extension/citus.control)")
        return
    src = Path(os.environ.get("CITUS_SRC") or DEFAULT_SRC)
    if not src.is_file():
        raise SystemExit(
            f"Citus is not installed and there is no source archive at {src}: set CITUS_SRC "
            "to a Citus source tarball (e.g. of tag v13.2.2 from github.com/citusdata/citus)"
        )
    if os.geteuid() != 0:
        raise SystemExit("building Citus installs packages and files: run this as root")
    major = _pg_config("--version").split()[1].split(".")[0]
    version = _server_package_version()
    packages = [
        f"postgresql-server-dev-{major}={version}",
        f"libpq-dev={version}",
        "libcurl4-openssl-dev",
        "liblz4-dev",
        "libzstd-dev",
        "libkrb5-dev",  # configure does not check for it; the build needs gssapi/gssapi.h
    ]
    say(f"installing build dependencies (headers pinned to the server's {version})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(apt, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(apt, env=env, check=True)
    build = Path(f"/tmp/hotmesh-citus-build-{os.getpid()}")  # noqa: S108
    build.mkdir(parents=True)
    try:
        with tarfile.open(src) as archive:
            archive.extractall(build, filter="data")
        top = next(p for p in build.iterdir() if (p / "configure").is_file())
        say(f"building {top.name} (about 3 minutes on 2 cores)")
        started = time.monotonic()
        subprocess.run(["./configure"], cwd=top, check=True, stdout=subprocess.DEVNULL)
        jobs = str(min(os.cpu_count() or 1, 4))
        subprocess.run(["nice", "-n", "10", "make", "-s", "-j", jobs], cwd=top, check=True)
        subprocess.run(["make", "-s", "install"], cwd=top, check=True)
        say(f"built and installed Citus in {time.monotonic() - started:.0f} s")
    finally:
        shutil.rmtree(build, ignore_errors=True)


# ------------------------------------------------------------------------------ the nodes


def _ports(d: Path) -> list[int]:
    """Three consecutive free ports, starting from a base derived from D."""
    saved = d / "ports"
    if saved.is_file():
        return [int(p) for p in saved.read_text().split()]
    base = 20000 + int(hashlib.sha1(str(d).encode(), usedforsecurity=False).hexdigest(), 16) % 20000
    for start in range(base, base + 300, NODES):
        ports = list(range(start, start + NODES))
        if all(_free(port) for port in ports):
            saved.write_text(" ".join(map(str, ports)))
            return ports
    raise SystemExit(f"no {NODES} free consecutive ports from {base}")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def node_url(d: Path, port: int, database: str = DATABASE) -> str:
    return f"postgresql://postgres@/{database}?host={quote(str(d), safe='/')}&port={port}"


def _options(d: Path, port: int) -> str:
    options = ["-p", str(port), "-k", str(d), "-c", f"listen_addresses={HOST}"]
    for setting in SETTINGS:
        options += ["-c", setting]
    return " ".join(options)


def _node_running(node: Path) -> bool:
    if not (node / "data" / "PG_VERSION").is_file():
        return False
    return pgcluster._pg(node, "pg_ctl", "status", "-D", str(node / "data")).returncode == 0


def up(d: Path) -> list[str]:
    """Start (creating if needed) the three nodes; returns their URLs, coordinator first."""
    if not citus_installed():
        install_citus()
    pgcluster._prepare_dir(d)
    ports = _ports(d)
    for i, port in enumerate(ports):
        node = d / f"n{i}"
        pgcluster._prepare_dir(node)
        if not (node / "data" / "PG_VERSION").is_file():
            pgcluster._initdb(node)
        if _node_running(node):
            continue
        result = pgcluster._pg(
            node,
            "pg_ctl",
            "start",
            "-D",
            str(node / "data"),
            "-l",
            str(node / "server.log"),
            "-w",
            "-o",
            _options(d, port),
        )
        if result.returncode != 0:
            raise SystemExit(
                f"node n{i} (port {port}) did not start: {result.stderr.strip()}; "
                f"{node / 'server.log'} says: {pgcluster._log_tail(node)}"
            )
    urls = [node_url(d, port) for port in ports]
    _register(d, ports)
    say(f"coordinator {HOST}:{ports[0]}, workers {ports[1]} and {ports[2]}; sockets in {d}")
    return urls


def _register(d: Path, ports: list[int]) -> None:
    import psycopg  # deferred: `down` needs only the standard library

    for port in ports:
        with psycopg.connect(node_url(d, port, "postgres"), autocommit=True) as c:
            if c.execute("select 1 from pg_database where datname = %s", (DATABASE,)).fetchone():
                continue
            c.execute(f"create database {DATABASE}")
    for port in ports:
        with psycopg.connect(node_url(d, port), autocommit=True) as conn:
            conn.execute("create extension if not exists citus")
    with psycopg.connect(node_url(d, ports[0]), autocommit=True) as conn:
        conn.execute("select citus_set_coordinator_host(%s, %s)", (HOST, ports[0]))
        for port in ports[1:]:
            known = conn.execute(
                "select 1 from pg_dist_node where nodename = %s and nodeport = %s", (HOST, port)
            ).fetchone()
            if not known:
                conn.execute("select citus_add_node(%s, %s)", (HOST, port))


def down(d: Path) -> None:
    for i in range(NODES):
        node = d / f"n{i}"
        if _node_running(node):
            pgcluster._pg(node, "pg_ctl", "stop", "-D", str(node / "data"), "-m", "fast", "-w")
            say(f"stopped n{i}")


def run(d: Path, cmd: list[str]) -> int:
    started = time.monotonic()
    urls = up(d)
    env = {
        **os.environ,
        "DATABASE_URL": urls[0],
        "HOTMESH_CITUS_URL": urls[0],
        "HOTMESH_CITUS_NODES": " ".join(urls),
        "HOTMESH_CITUS_DIR": str(d),
    }
    try:
        status = subprocess.run(cmd, env=env, check=False).returncode
    finally:
        down(d)
    say(f"done in {time.monotonic() - started:.0f} s (exit {status})")
    return status


def main(argv: list[str]) -> int:
    cmd: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, cmd = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(prog="citus_cluster.py")
    parser.add_argument("command", choices=["up", "down", "run", "install", "urls"])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--force", action="store_true", help="install: build even if installed")
    options = parser.parse_args(argv)
    d = Path(os.path.abspath(options.dir or default_dir()))
    if options.command == "install":
        install_citus(options.force)
    elif options.command == "up":
        for url in up(d):
            print(url)
    elif options.command == "urls":
        for port in _ports(d):
            print(node_url(d, port))
    elif options.command == "down":
        with contextlib.suppress(FileNotFoundError):
            down(d)
    else:
        if not cmd:
            parser.error("run needs -- CMD ...")
        return run(d, cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
