"""The `hotmesh` command: install an app, run workers, start, inspect and steer workflows.

Every command takes `--app` (default $HOTMESH_APP) and `--dsn` (default $DATABASE_URL, else
the libpq environment). Read commands print aligned text, or JSON with `--json`. Errors print
one line on stderr and exit non-zero (1; 2 for a bad command line), without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import json
import logging
import os
import sys
import typing
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, is_dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from hotmesh import _citus, _install
from hotmesh import _roles as _roles_module
from hotmesh._durations import seconds
from hotmesh.client import MemFlow
from hotmesh.codecs import Codec
from hotmesh.errors import DatabaseUnreachable, HotMeshError, SchemaMismatch
from hotmesh.interceptors import Interceptor
from hotmesh.rows import HistoryEntry, HumanTask
from hotmesh.worker import PREFETCH, STICKY_CACHE

_STATUSES = ("pending", "running", "waiting", "completed", "failed", "cancelled")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


# -- the command line --------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, json_flag: bool = False) -> None:
    parser.add_argument(
        "--app",
        default=os.environ.get("HOTMESH_APP"),
        help="app id: the Postgres schema (default $HOTMESH_APP)",
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("DATABASE_URL", ""),
        help="PostgreSQL connection string (default $DATABASE_URL, else PGHOST/PGPORT/...)",
    )
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _duration(text: str) -> float:
    """Seconds, or text like "500ms" or "1m" (hotmesh._durations)."""
    try:
        return seconds(text)
    except HotMeshError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _package_version() -> str:
    """The installed package's version (run from a bare checkout, there is none)."""
    import importlib.metadata  # here, not at the top: see _Version

    try:
        return importlib.metadata.version("hotmesh")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


class _Version(argparse.Action):
    """`--version`, looked up only when asked: importing importlib.metadata and reading the
    installed distributions cost every other command 10-20 % of its start-up."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(OSError):  # a closed pipe (`| head -c0`), as argparse's own
            sys.stdout.write(f"hotmesh {_package_version()}\n")
        parser.exit(0)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hotmesh",
        description="Durable workflows with permanent memory, native to Postgres.",
        epilog="hotmesh db {up,down,restart,run,url,env,status}: a private throwaway Postgres "
        "on a Unix socket, for development and tests, in a source checkout (hotmesh db --help).",
    )
    parser.add_argument("--version", action=_Version, dest=argparse.SUPPRESS)
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=_LEVELS,
        help="log level of the worker's event log on stderr (default WARNING: quiet)",
    )
    parser.add_argument(
        "--codec",
        default=os.environ.get("HOTMESH_CODEC") or None,
        metavar="MODULE:FACTORY",
        help="the app's payload codec: a Codec, a list of them, or a callable returning one; "
        "commands decode what they print and encode what they send, workers both "
        "(default $HOTMESH_CODEC; docs/codecs.md)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    migrate = commands.add_parser("migrate", help="install or upgrade an app's schema")
    _common(migrate)
    migrate.add_argument(
        "--distribute",
        choices=("job_id",),
        help="on a Citus coordinator: distribute the app's rows by workflow id, with an engine "
        "per shard group (docs/citus-row-distribution.md)",
    )
    migrate.add_argument(
        "--shard-count", type=_positive, help="shard groups of --distribute (citus.shard_count)"
    )

    worker = commands.add_parser("worker", help="serve a task queue until SIGTERM/SIGINT")
    _common(worker)
    worker.add_argument(
        "workflows", nargs="*", metavar="MODULE:FUNCTION", help="workflow functions to serve"
    )
    worker.add_argument("--queue", required=True, help="the task queue to serve")
    worker.add_argument(
        "--activities",
        action="append",
        default=[],
        metavar="MODULE:NAME",
        help="a function, or a dict/list of functions, to serve as activities on the queue",
    )
    worker.add_argument("--concurrency", type=_positive, default=8, help="tasks run at once (8)")
    worker.add_argument(
        "--sticky-cache",
        type=int,
        default=STICKY_CACHE,
        help=f"suspended workflows kept to resume without replay ({STICKY_CACHE}, at most a"
        " quarter parked on a signal, timer or child; 0: none)",
    )
    worker.add_argument("--lease", type=float, default=30.0, help="lease seconds (30)")
    worker.add_argument(
        "--grace",
        type=_duration,
        default=10.0,
        metavar="SECONDS",
        help="seconds in-flight tasks get to finish at a stop before their leases are released "
        "(10)",
    )
    worker.add_argument(
        "--prefetch",
        type=int,
        default=PREFETCH,
        help="tasks claimed ahead of free slots into a local buffer, each on a 5-second lease "
        f"until it starts; released at a stop ({PREFETCH}; 0: none)",
    )
    worker.add_argument(
        "--build-id",
        help="this code's version, recorded by each activation (default: a digest of the "
        "workflow functions' source)",
    )
    worker.add_argument(
        "--interceptor",
        action="append",
        default=[],
        metavar="MODULE:FACTORY",
        help="an Interceptor, or a callable that returns one, around the queue's workflows and "
        "activities (repeatable, the first outermost; docs/interceptors.md)",
    )
    worker.add_argument(
        "--metrics-port",
        type=_positive,
        metavar="PORT",
        help="serve this process's Prometheus metrics on http://0.0.0.0:PORT/metrics "
        "(needs hotmesh[metrics]; docs/metrics.md)",
    )

    start = commands.add_parser("start", help="start a workflow (or many: --from-file)")
    _common(start)
    start.add_argument("workflow_name", metavar="NAME", nargs="?")
    start.add_argument(
        "--from-file",
        metavar="FILE",
        help="start every workflow of FILE (- for stdin) in one call, all or none: JSON lines "
        "or a JSON array of objects with start_many's fields (workflow_name, args, task_queue, "
        "workflow_id, priority, start_in, ...); prints their ids",
    )
    start.add_argument("--args", default="[]", help="JSON array of arguments (default [])")
    start.add_argument("--queue", help="task queue (default: the entity)")
    start.add_argument("--id", dest="workflow_id", help="workflow id (default: generated)")
    start.add_argument("--entity", help="entity type (default: the workflow name)")
    start.add_argument("--expire", help="keep it this long after it ends (e.g. 30d)")
    start.add_argument("--priority", type=int, help="claimed before lower priorities (default 0)")
    # The start options (docs/python-api.md, docs/timeouts.md, docs/flow-control.md).
    start.add_argument("--execution-timeout", help="fail it (596) unless it ends within (e.g. 1h)")
    start.add_argument(
        "--id-reuse",
        choices=["reject", "allow_finished", "terminate"],
        help="when --id is taken (default reject)",
    )
    start.add_argument("--idempotency-key", help="a start with a key a run holds returns that run")
    start.add_argument("--debounce", help="starts of --id within this window make one run (5s)")
    start.add_argument("--start-in", help="its first activation after this long (e.g. 10m)")
    start.add_argument("--start-at", help="its first activation at this time (ISO 8601)")
    start.add_argument("--search", help="JSON object: its search attributes")
    start.add_argument("--concurrency-key", help="share the queue's per-key limit with this key")
    start.add_argument("--wait", action="store_true", help="wait for the result and print it")

    listing = commands.add_parser("list", help="list workflows, newest first")
    _common(listing, json_flag=True)
    listing.add_argument("--status", choices=_STATUSES, help="only workflows in this status")
    listing.add_argument("--entity", help="only workflows of this entity type")
    listing.add_argument("--queue", help="only workflows started on this task queue")
    listing.add_argument("--limit", type=_positive, default=50, help="at most N rows (50)")

    show = commands.add_parser("show", help="one workflow: status, entity, waits, result, error")
    _common(show, json_flag=True)
    show.add_argument("workflow_id", metavar="ID")

    history = commands.add_parser("history", help="the timeline of a workflow, step by step")
    _common(history, json_flag=True)
    history.add_argument("workflow_id", metavar="ID")

    result = commands.add_parser("result", help="a workflow's result (its error if it failed)")
    _common(result)
    result.add_argument("workflow_id", metavar="ID")
    result.add_argument(
        "--wait", type=float, metavar="SECONDS", help="wait this long for it to end (default: not)"
    )

    export = commands.add_parser(
        "export", help="a workflow's whole history as one JSON document (hotmesh replay reads it)"
    )
    _common(export)
    export.add_argument("workflow_id", metavar="ID")
    export.add_argument("--output", "-o", metavar="FILE", help="write it here (default stdout)")

    replay = commands.add_parser(
        "replay",
        help="replay recorded histories against workflow code, with no write: exit 1 on any "
        "divergence (docs/deploying.md)",
    )
    _common(replay)
    replay.add_argument(
        "workflows", nargs="+", metavar="MODULE:FUNCTION", help="the workflow code to check"
    )
    replay.add_argument(
        "--workflow-name",
        metavar="NAME",
        help="replay the histories of workflow NAME with the one FUNCTION given (default: "
        "each function's histories, by its name)",
    )
    replay.add_argument(
        "--status",
        default="running,waiting",
        help="comma-separated statuses of the workflows to replay (default running,waiting)",
    )
    replay.add_argument(
        "--since", help="only workflows started since: an ISO time, or a duration ago (7d)"
    )
    replay.add_argument("--limit", type=_positive, help="at most N workflows, oldest first")
    replay.add_argument(
        "--from-file",
        action="append",
        default=[],
        metavar="FILE",
        help="replay this export (hotmesh export) instead of reading the app; no database",
    )
    replay.add_argument(
        "--ignore-arguments",
        action="store_true",
        help="changed arguments of a call are not a divergence (kind and name still are)",
    )

    signal = commands.add_parser(
        "signal", help="send a signal (to the oldest wait for it, or kept until one waits)"
    )
    _common(signal, json_flag=True)
    signal.add_argument("signal_id", metavar="SIGNAL_ID")
    signal.add_argument("--data", default="null", help="JSON payload (default null)")
    signal.add_argument("--workflow", help="deliver only to this workflow")
    signal.add_argument("--key", help="idempotency key: a repeated send is ignored")

    cancel = commands.add_parser("cancel", help="cancel a workflow (and its children)")
    _common(cancel, json_flag=True)
    cancel.add_argument("workflow_id", metavar="ID")
    cancel.add_argument("--reason", help="the message of its CancelledFailure (code 410)")
    cancel.add_argument(
        "--descend",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also cancel its unfinished children (default: yes)",
    )

    retry = commands.add_parser(
        "retry", help="re-run a failed workflow from its last recorded step, or revive dead tasks"
    )
    _common(retry, json_flag=True)
    retry.add_argument("workflow_id", metavar="ID")

    queues = commands.add_parser("queues", help="the task backlog per queue")
    _common(queues, json_flag=True)

    metrics = commands.add_parser(
        "metrics", help="the database's metrics as Prometheus text (docs/metrics.md)"
    )
    _common(metrics)
    metrics.add_argument(
        "--port", type=_positive, help="serve them on http://HOST:PORT/metrics instead of printing"
    )
    metrics.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")

    queue = commands.add_parser("queue", help="flow control of a task queue")
    queue_commands = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    limits = queue_commands.add_parser(
        "limits",
        help="show the limited queues, or set a queue's limits (docs/flow-control.md)",
        description="With QUEUE and options: set its limits; a limit not given is lifted, "
        "--clear lifts them all. Without options: show them.",
    )
    _common(limits, json_flag=True)
    limits.add_argument("task_queue", nargs="?", metavar="QUEUE")
    limits.add_argument("--max-running", type=int, metavar="N", help="tasks running at once")
    limits.add_argument("--rate", type=int, metavar="N", help="starts per --per interval")
    limits.add_argument("--per", metavar="DURATION", help="the rate's interval (e.g. 1m)")
    limits.add_argument(
        "--key-max-running", type=int, metavar="N", help="tasks running at once per key"
    )
    limits.add_argument("--key-rate", type=int, metavar="N", help="starts per key per --key-per")
    limits.add_argument("--key-per", metavar="DURATION", help="the key rate's interval (e.g. 1s)")
    limits.add_argument("--clear", action="store_true", help="lift every limit of QUEUE")

    prune = commands.add_parser(
        "prune", help="delete finished workflows whose retention ran out, in batches"
    )
    _common(prune, json_flag=True)
    prune.add_argument(
        "--older-than",
        default="0",
        metavar="DURATION",
        help="and only those that finished at least this long ago (e.g. 7d; default 0)",
    )
    prune.add_argument("--batch", type=_positive, default=1000, help="workflows per batch (1000)")
    prune.add_argument("--dry-run", action="store_true", help="only count them")

    setting = commands.add_parser(
        "setting", help="show or change an app setting (default_retention)"
    )
    _common(setting, json_flag=True)
    setting.add_argument("key", metavar="KEY")
    setting.add_argument("value", nargs="?", metavar="VALUE", help="new value (e.g. 30d)")
    setting.add_argument("--unset", action="store_true", help="back to the built-in default")

    schedule = commands.add_parser(
        "schedule", help="workflows started on a cron or an interval (docs/schedules.md)"
    )
    schedule_commands = schedule.add_subparsers(
        dest="schedule_command", metavar="ACTION", required=True
    )
    for action in ("create", "update"):
        saving = schedule_commands.add_parser(action, help=f"{action} a schedule")
        _common(saving, json_flag=True)
        saving.add_argument("schedule_id", metavar="ID")
        saving.add_argument("spec", metavar="SPEC", help='cron ("0 9 * * mon-fri"), "@every 10m"')
        saving.add_argument("workflow_name", metavar="WORKFLOW")
        saving.add_argument("--args", default="[]", help="JSON array of arguments (default [])")
        saving.add_argument("--queue", help="task queue (default: the entity)")
        saving.add_argument("--entity", help="entity type of the runs")
        saving.add_argument("--timezone", help="time zone of the cron (default UTC)")
        saving.add_argument("--overlap", choices=("skip", "buffer_one", "allow"))
        saving.add_argument("--catchup-window", help="catch up missed fires this old (1h)")
        saving.add_argument("--jitter", help="delay each fire by up to this much")
        saving.add_argument("--paused", action="store_true", help="created paused")
        saving.add_argument("--note", help="a note shown by list")
    for action in ("pause", "resume", "trigger", "delete"):
        acting = schedule_commands.add_parser(action, help=f"{action} a schedule")
        _common(acting, json_flag=True)
        acting.add_argument("schedule_id", metavar="ID")
    schedule_list = schedule_commands.add_parser("list", help="schedules, next and last fires")
    _common(schedule_list, json_flag=True)

    tasks = commands.add_parser(
        "tasks", help="the inbox of human tasks: list, claim, resolve, ... (docs/people.md)"
    )
    task_commands = tasks.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)
    task_list = task_commands.add_parser("list", help="tasks, most urgent first")
    _common(task_list, json_flag=True)
    task_list.add_argument("--role", help="only this role")
    task_list.add_argument("--assignee", help="assigned to or claimed by this person")
    task_list.add_argument(
        "--status", choices=("open", "claimed", "resolved", "expired", "cancelled"),
        help="only this status (default: open and claimed)",
    )  # fmt: skip
    task_list.add_argument("--type", help="only this type")
    task_list.add_argument("--metadata", help='JSON object the metadata contains: {"region": "eu"}')
    task_list.add_argument("--limit", type=_positive, default=50, help="at most this many (50)")
    task_list.add_argument("--after", type=int, help="the page after this task id")
    task_show = task_commands.add_parser("show", help="one task, its form and events")
    _common(task_show, json_flag=True)
    task_show.add_argument("task_id", type=int, metavar="ID")
    task_next = task_commands.add_parser("claim-next", help="claim the most urgent open task")
    _common(task_next, json_flag=True)
    task_next.add_argument("role", metavar="ROLE")
    task_next.add_argument("who", metavar="WHO")
    for action, more in (
        ("claim", ()),
        ("release", ()),
        ("comment", ("text",)),
        ("resolve", ("answer",)),
        ("reassign", ()),
    ):
        acting = task_commands.add_parser(action, help=f"{action} a task")
        _common(acting, json_flag=True)
        acting.add_argument("task_id", type=int, metavar="ID")
        acting.add_argument("who", metavar="WHO")
        for name in more:
            helps = {"text": "the comment", "answer": "the answer, as JSON"}
            acting.add_argument(name, metavar=name.upper(), help=helps[name])
        if action == "reassign":
            acting.add_argument("--to", dest="assignee", help="the new assignee (none: anyone)")
            acting.add_argument("--role", help="a new role")

    roles = commands.add_parser(
        "roles", help="login roles for workers and applications (owner only; docs/credentials.md)"
    )
    role_commands = roles.add_subparsers(dest="roles_command", metavar="ACTION", required=True)
    role_create = role_commands.add_parser(
        "create", help="a login in the app's worker or app group, with a generated password"
    )
    _common(role_create, json_flag=True)
    role_create.add_argument("group", choices=("worker", "app"))
    role_create.add_argument("name", help="becomes <app>_<group>_<name>")
    role_rotate = role_commands.add_parser("rotate", help="a new generated password")
    _common(role_rotate, json_flag=True)
    role_rotate.add_argument("role", metavar="ROLE")
    role_revoke = role_commands.add_parser(
        "revoke", help="drop the login and end its open sessions"
    )
    _common(role_revoke, json_flag=True)
    role_revoke.add_argument("role", metavar="ROLE")
    role_list = role_commands.add_parser("list", help="the logins in the app's groups")
    _common(role_list, json_flag=True)

    ui = commands.add_parser(
        "ui", help="a web dashboard of the app (docs/ui.md; needs `pip install hotmesh[ui]`)"
    )
    _common(ui)
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    ui.add_argument("--port", type=_positive, default=8700, help="port (8700)")
    ui.add_argument(
        "--allow-actions",
        action="store_true",
        help="allow signal, cancel, retry, hook and start (default: read-only)",
    )
    ui.add_argument(
        "--token",
        default=os.environ.get("HOTMESH_UI_TOKEN"),
        help="required from every client (bearer token, or basic auth password); needed to "
        "listen on anything but loopback (default $HOTMESH_UI_TOKEN)",
    )

    bench = commands.add_parser(
        "bench", help="measure throughput and latency (docs/performance.md)"
    )
    from hotmesh.devtools import bench as bench_module

    bench_module.add_arguments(bench)
    return parser


# -- helpers -------------------------------------------------------------------------------------


def _load(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise HotMeshError(f"{spec!r}: expected MODULE:NAME, e.g. myapp.workflows:claims")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise HotMeshError(f"cannot import {module_name!r}: {error}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise HotMeshError(f"module {module_name!r} has no {attribute!r}") from None


def _interceptor(spec: str) -> Interceptor:
    """`--interceptor MODULE:FACTORY`: an Interceptor, or what calling FACTORY() returns."""
    found = _load(spec)
    made = found if isinstance(found, Interceptor) else found() if callable(found) else found
    if not isinstance(made, Interceptor):
        raise HotMeshError(
            f"--interceptor {spec}: expected an Interceptor or a factory returning one, "
            f"got {type(made).__name__}"
        )
    return made


def _codec(args: argparse.Namespace) -> Codec | list[Codec] | None:
    """`--codec MODULE:FACTORY` ($HOTMESH_CODEC): a Codec, a list of them, or a callable that
    returns either (so keys can come from a secret store at start)."""
    if not args.codec:
        return None
    found = _load(args.codec)
    made = found() if callable(found) and not isinstance(found, Codec) else found
    chain = list(made) if isinstance(made, list | tuple) else [made]
    if not chain or not all(isinstance(c, Codec) for c in chain):
        raise HotMeshError(
            f"--codec {args.codec}: expected a Codec (name, encode, decode), a list of them or "
            f"a factory returning one, got {type(made).__name__}"
        )
    return chain if len(chain) > 1 else chain[0]


def _app(args: argparse.Namespace) -> str:
    if not args.app:
        raise HotMeshError("no app id: pass --app NAME or set HOTMESH_APP")
    return _install.check_app_id(args.app)


def _json_arg(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise HotMeshError(f"{option} is not valid JSON ({error}): {text!r}") from None


@contextlib.asynccontextmanager
async def _client(args: argparse.Namespace) -> AsyncIterator[MemFlow]:
    """A client on an installed app (a clear error when it is not), closed afterwards."""
    mf = await MemFlow.init(
        app_id=_app(args), dsn=args.dsn, migrate=False, pool_size=2, codec=_codec(args)
    )
    try:
        yield mf
    finally:
        await mf.close()


def _default(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):  # a row of hotmesh.rows
        return asdict(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=_default))


def _age(value: timedelta | None) -> str:
    if value is None:
        return ""
    total = max(int(value.total_seconds()), 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S%z")


def _short(value: Any, width: int = 60) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=_default)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines
    )


# -- commands ------------------------------------------------------------------------------------


async def _migrate(args: argparse.Namespace) -> int:
    applied = await _install.migrate(
        args.dsn, _app(args), distribute=args.distribute, shard_count=args.shard_count
    )
    done = ", ".join(f"{v:04d}" for v in applied) if applied else "none (up to date)"
    engine = await _install.engine_version(args.dsn, args.app)
    print(
        f"app {args.app}: migrations applied: {done}; functions installed "
        f"(engine {engine.version}, migration {engine.migration:04d})"
    )
    async with await psycopg.AsyncConnection.connect(args.dsn) as conn:
        for shard in await _citus.shard_engines(conn, args.dsn, args.app):
            node = psycopg.conninfo.conninfo_to_dict(shard.dsn)
            print(
                f"shard engine {shard.schema} on {node.get('host')}:{node.get('port')}, "
                f"worker_hash(workflow id) in [{shard.low}, {shard.high}]"
            )
    return 0


# The youngest generation's collection threshold of a worker process (Python's default: 700
# allocations). A task makes dozens of short-lived objects (its row, activation, futures,
# coroutines), so at the default the collector ran every 15-20 tasks: a drain spent about a
# quarter of the worker's CPU less with this (docs/performance.md#bigger-batches). Garbage in
# cycles waits a little longer: at most this many new objects.
_GC_YOUNG = 10_000


async def _worker(args: argparse.Namespace) -> int:
    gc.set_threshold(_GC_YOUNG)
    workflows = [_load(spec) for spec in args.workflows]
    activities: dict[str, Callable[..., Any]] = {}
    for spec in args.activities:
        found = _load(spec)
        if callable(found):
            activities[found.__name__] = found
        elif isinstance(found, dict):
            activities.update(found)
        else:
            activities.update({fn.__name__: fn for fn in found})
    if not workflows and not activities:
        raise HotMeshError("nothing to serve: name workflow functions and/or --activities")
    interceptors = [_interceptor(spec) for spec in args.interceptor]
    mf = await MemFlow.init(
        app_id=_app(args),
        dsn=args.dsn,
        migrate=False,
        interceptors=interceptors,
        codec=_codec(args),
    )
    if args.metrics_port is not None:
        try:
            mf.serve_metrics(args.metrics_port)
        except HotMeshError:
            await mf.close()
            raise
    if activities:
        await mf.worker.register_activities(
            task_queue=args.queue,
            activities=activities,
            concurrency=args.concurrency,
            lease=args.lease,
            prefetch=args.prefetch,
        )
    await mf.worker.create(
        task_queue=args.queue,
        workflow=workflows,
        concurrency=args.concurrency,
        lease=args.lease,
        build_id=args.build_id,
        sticky_cache=args.sticky_cache,
        prefetch=args.prefetch,
    )
    names = ", ".join([fn.__name__ for fn in workflows] + sorted(activities))
    print(f"worker serving {args.app}/{args.queue}: {names} (Ctrl-C to stop)", flush=True)
    await mf.run_until_signal(args.grace)
    return 0


def _starts_file(path: str) -> list[Any]:
    """The starts of `hotmesh start --from-file`: a JSON array, or one JSON object a line."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
    except OSError as error:
        raise HotMeshError(f"--from-file: cannot read {path}: {error.strerror}") from None
    if text.lstrip().startswith("["):
        starts = _json_arg(text, f"--from-file {path}")
        if not isinstance(starts, list):  # pragma: no cover - "[" starts an array
            raise HotMeshError(f"--from-file {path}: not a JSON array")
        return starts
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    return [_json_arg(line, f"--from-file {path} line {n}") for n, line in lines]


async def _start_many(args: argparse.Namespace) -> int:
    flags = {"NAME": args.workflow_name, "--wait": args.wait, "--args": args.args != "[]"}
    flags.update(
        (f"--{name.replace('_', '-')}", getattr(args, name))
        for name in (
            "queue",
            "entity",
            "expire",
            "priority",
            "execution_timeout",
            "id_reuse",
            "idempotency_key",
            "debounce",
            "start_in",
            "start_at",
            "search",
            "concurrency_key",
        )
    )
    flags["--id"] = args.workflow_id
    given = [flag for flag, value in flags.items() if value not in (None, False)]
    if given:
        raise HotMeshError(f"--from-file takes the starts from the file, not {given[0]}")
    starts = _starts_file(args.from_file)
    async with _client(args) as mf:
        handles = await mf.workflow.start_many(starts)
    print("\n".join(handle.workflow_id for handle in handles), flush=True)
    return 0


async def _start(args: argparse.Namespace) -> int:
    if args.from_file is not None:
        return await _start_many(args)
    if args.workflow_name is None:
        raise HotMeshError("start: give a workflow NAME, or --from-file FILE")
    arguments = _json_arg(args.args, "--args")
    if not isinstance(arguments, list):
        raise HotMeshError("--args must be a JSON array, e.g. '[\"Jane\"]'")
    search = None if args.search is None else _json_arg(args.search, "--search")
    if search is not None and not isinstance(search, dict):
        raise HotMeshError('--search must be a JSON object, e.g. \'{"region": "eu"}\'')

    def duration(value: str | None, flag: str) -> float | None:
        return None if value is None else seconds(value, flag)

    async with _client(args) as mf:
        handle = await mf.workflow.start(
            workflow_name=args.workflow_name,
            args=arguments,
            task_queue=args.queue,
            workflow_id=args.workflow_id,
            entity=args.entity,
            priority=args.priority,
            expire=duration(args.expire, "--expire"),
            execution_timeout=duration(args.execution_timeout, "--execution-timeout"),
            id_reuse=args.id_reuse,
            idempotency_key=args.idempotency_key,
            debounce=duration(args.debounce, "--debounce"),
            start_in=duration(args.start_in, "--start-in"),
            start_at=args.start_at,
            search=search,
            concurrency_key=args.concurrency_key,
        )
        print(handle.workflow_id, flush=True)
        if args.wait:
            print(json.dumps(await handle.result()))
    return 0


async def _list(args: argparse.Namespace) -> int:
    async with _client(args) as mf:
        rows = await mf.workflow.list(
            status=args.status, entity=args.entity, task_queue=args.queue, limit=args.limit
        )
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no workflows")
        return 0
    table = [
        [
            r.id,
            r.workflow_name,
            r.entity,
            r.status,
            r.task_queue,
            _age(r.age),
            _short(r.waiting_on if r.status != "failed" else r.error),
        ]
        for r in rows
    ]
    headers = ("ID", "WORKFLOW", "ENTITY", "STATUS", "QUEUE", "AGE", "WAITING ON / ERROR")
    print(_table(headers, table))
    return 0


async def _show(args: argparse.Namespace) -> int:
    async with _client(args) as mf:
        doc = await mf.workflow.get_handle(args.workflow_id).describe()
        doc = mf.payloads.decode(doc)  # --codec: every marker in it, or a CodecError
    if args.json:
        _print_json(doc)
        return 0
    fields: Mapping[str, object] = doc  # read by key name
    for key in ("id", "workflow_name", "entity", "task_queue", "status", "attempt"):
        print(f"{key:14} {fields[key]}")
    if doc["parent_id"]:
        print(f"{'parent_id':14} {doc['parent_id']}")
    for key in ("created_at", "updated_at", "completed_at", "expire_at"):
        if fields[key]:
            print(f"{key:14} {fields[key]}")
    print(f"{'steps':14} {doc['steps']}")
    for wait in doc.get("waits") or []:
        print(f"{'waiting on':14} {json.dumps(wait)}")
    if doc.get("blocked_by"):
        # Its row is held by an open transaction: the workflow is delayed until it ends.
        print(f"{'blocked by':14} {doc['blocked_by']} (an open transaction holds its row)")
    print(f"{'context':14} {json.dumps(doc['context'])}")
    if doc.get("result") is not None:
        print(f"{'result':14} {json.dumps(doc['result'])}")
    if doc["error"]:
        error = dict(doc["error"])
        error.pop("stack", None)
        print(f"{'error':14} {json.dumps(error)}")
    for task in doc["tasks"]:
        print(f"{'task':14} {task['kind']} {task['name']} [{task['state']}] due {task['run_at']}")
    return 0


def _history_detail(row: HistoryEntry) -> str:
    if row.error:
        error = row.error
        return _short(f"error {error.get('code', '')}: {error.get('message', '')}")
    parts = []
    if row.entity_version is not None:
        parts.append(f"v{row.entity_version}")
    if (row.attempt or 1) > 1:
        parts.append(f"attempt {row.attempt}")
    if row.kind == "entity" and isinstance(row.input, dict):
        path = row.input.get("path")
        label = ".".join(str(p) for p in path) if isinstance(path, list) else ""
        parts.append(f"{label} {_short(row.input.get('value'), 30)}".strip())
    elif row.output is not None:
        parts.append("-> " + _short(row.output, 40))
    elif row.input is not None and row.status in ("started", "scheduled"):
        parts.append(_short(row.input, 40))
    return _short(" ".join(parts))


async def _history(args: argparse.Namespace) -> int:
    async with _client(args) as mf:
        rows = await mf.workflow.get_handle(args.workflow_id).history()
        if mf.payloads.enabled:
            decode = mf.payloads.decode
            rows = [replace(r, input=decode(r.input), output=decode(r.output)) for r in rows]
    if args.json:
        _print_json(rows)
        return 0
    table = [
        [
            _when(r.at),
            r.thread,
            "" if r.seq is None else str(r.seq),
            r.kind,
            r.name,
            r.status,
            _history_detail(r),
        ]
        for r in rows
    ]
    print(_table(("AT", "THREAD", "SEQ", "KIND", "NAME", "STATUS", "DETAIL"), table))
    return 0


async def _result(args: argparse.Namespace) -> int:
    async with _client(args) as mf:
        handle = mf.workflow.get_handle(args.workflow_id)
        if args.wait is None:
            status = (await handle.describe())["status"]
            if status not in ("completed", "failed", "cancelled"):
                raise HotMeshError(
                    f"workflow {args.workflow_id} is {status}: no result yet (--wait SECONDS)"
                )
        try:
            value = await handle.result(timeout=args.wait)
        except TimeoutError:
            raise HotMeshError(
                f"workflow {args.workflow_id} did not end within {args.wait:g} s"
            ) from None
    print(json.dumps(value, ensure_ascii=False))
    return 0


async def _export(args: argparse.Namespace) -> int:
    async with _client(args) as mf:
        doc = await mf.workflow.get_handle(args.workflow_id).export()
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")  # noqa: ASYNC240 - one small file
    return 0


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return datetime.now(UTC) - timedelta(seconds=seconds(text, "--since"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


async def _replay(args: argparse.Namespace) -> int:
    from hotmesh.testing import Replayer  # only this command needs it

    functions = [_load(spec) for spec in args.workflows]
    if args.workflow_name is not None:
        if len(functions) != 1:
            raise HotMeshError("--workflow-name takes exactly one MODULE:FUNCTION")
        replayer = Replayer(
            {args.workflow_name: functions[0]},
            ignore_arguments=args.ignore_arguments,
            codec=_codec(args),
        )
    else:
        replayer = Replayer(functions, ignore_arguments=args.ignore_arguments, codec=_codec(args))
    if args.from_file:
        report = await replayer.replay_files(args.from_file)
    else:
        statuses = [s.strip() for s in args.status.split(",") if s.strip()]
        async with _client(args) as mf:
            report = await replayer.replay_app(
                mf, statuses=statuses, since=_since(args.since), limit=args.limit
            )
    print(report.text())
    return 0 if report.ok else 1


async def _signal(args: argparse.Namespace) -> int:
    data = _json_arg(args.data, "--data")
    async with _client(args) as mf:
        outcome = await mf.workflow.signal(
            args.signal_id, data, workflow_id=args.workflow, idempotency_key=args.key
        )
    if args.json:
        _print_json(outcome)
    elif outcome.get("status") == "delivered":
        print(
            f"signal {args.signal_id}: delivered to workflow {outcome['workflow_id']} "
            f"(thread {outcome['thread']}, step {outcome['seq']})"
        )
    elif outcome.get("status") == "kept":
        print(f"signal {args.signal_id}: kept; nothing waits for it yet, the first wait takes it")
    else:
        print(f"signal {args.signal_id}: duplicate key {args.key!r}; ignored")
    return 0


async def _cancel(args: argparse.Namespace) -> int:
    async with _client(args) as mf:
        handle = mf.workflow.get_handle(args.workflow_id)
        cancelled = await handle.interrupt(args.reason, descend=args.descend)
    if args.json:
        _print_json({"cancelled": cancelled})
    else:
        print("cancelled: " + ", ".join(cancelled))
    return 0


async def _retry(args: argparse.Namespace) -> int:
    async with _client(args) as mf:
        outcome = await mf.workflow.get_handle(args.workflow_id).retry()
    if args.json:
        _print_json(outcome)
    elif outcome.get("revived_tasks"):
        print(f"{args.workflow_id}: {outcome['revived_tasks']} dead task(s) ready again")
    else:
        children = ", ".join(outcome.get("retried") or []) or "none"
        print(
            f"{args.workflow_id}: pending again; {outcome['reset_steps']} step(s) will run again;"
            f" children retried: {children}"
        )
    return 0


async def _metrics(args: argparse.Namespace) -> int:
    from hotmesh.metrics import render

    async with _client(args) as mf:
        if args.port is None:
            print(render(await mf.metrics()), end="")
            return 0

        async def scrape(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                request = (await reader.readline()).split()
                while (await reader.readline()).strip():
                    pass  # the headers
                path = request[1].split(b"?")[0] if len(request) > 1 else b""
                if path != b"/metrics":
                    status, body = b"404 Not Found", b"see /metrics\n"
                else:
                    status, body = b"200 OK", render(await mf.metrics()).encode()
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4; "
                    b"charset=utf-8\r\nContent-Length: " + str(len(body)).encode()
                    + b"\r\nConnection: close\r\n\r\n" + body
                )  # fmt: skip
                await writer.drain()
            finally:
                writer.close()

        try:
            server = await asyncio.start_server(scrape, args.host, args.port)
        except OSError as error:
            raise HotMeshError(
                f"cannot serve metrics on {args.host}:{args.port}: {error.strerror or error} "
                f"(is another process using the port? choose another with --port)"
            ) from None
        print(f"metrics of {args.app} on http://{args.host}:{args.port}/metrics", flush=True)
        async with server:
            await server.serve_forever()
    return 0


async def _queues(args: argparse.Namespace) -> int:
    async with _client(args) as mf:
        rows = await mf.queue_backlog()
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no tasks queued")
        return 0
    headers = ("QUEUE", "KIND", "READY", "DELAYED", "LEASED", "EXPIRED", "DEAD", "OLDEST", "NEXT")
    table = [
        [
            r.task_queue,
            r.kind,
            str(r.ready),
            str(r.delayed),
            str(r.leased),
            str(r.lease_expired),
            str(r.dead),
            _age(r.oldest_ready_age),
            _when(r.next_run_at),
        ]
        for r in rows
    ]
    print(_table(headers, table))
    return 0


async def _queue(args: argparse.Namespace) -> int:
    limits = (args.max_running, args.rate, args.per, args.key_max_running, args.key_rate,
              args.key_per)  # fmt: skip
    changing = args.clear or any(value is not None for value in limits)
    if changing and args.task_queue is None:
        raise HotMeshError("queue limits: name the QUEUE whose limits to set")
    if changing and args.clear and any(value is not None for value in limits):
        raise HotMeshError("queue limits: --clear lifts every limit; give it no limit options")
    async with _client(args) as mf:
        if changing:
            await mf.queue.set_limits(
                args.task_queue,
                max_running=args.max_running,
                rate=args.rate,
                per=args.per,
                key_max_running=args.key_max_running,
                key_rate=args.key_rate,
                key_per=args.key_per,
            )
        rows = [r for r in await mf.queue.limits() if args.task_queue in (None, r.task_queue)]
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no limits" + (f" on queue {args.task_queue}" if args.task_queue else ""))
        return 0
    headers = ("QUEUE", "RUNNING", "MAX", "RATE", "TOKENS", "NEXT TOKEN", "PER KEY", "KEY RATE")
    table = [
        [
            r.task_queue,
            str(r.running),
            _or_blank(r.max_running),
            "" if r.rate is None else f"{r.rate}/{_age(r.per)}",
            "" if r.tokens is None else f"{r.tokens:.2f}",
            _when(r.next_token_at),
            _or_blank(r.key_max_running),
            "" if r.key_rate is None else f"{r.key_rate}/{_age(r.key_per)}",
        ]
        for r in rows
    ]
    print(_table(headers, table))
    return 0


def _or_blank(value: int | None) -> str:
    return "" if value is None else str(value)


async def _prune(args: argparse.Namespace) -> int:
    older_than = timedelta(seconds=seconds(args.older_than, "--older-than"))
    async with _client(args) as mf:
        count = await mf.prune(older_than=older_than, batch=args.batch, dry_run=args.dry_run)
    if args.json:
        _print_json({"count": count, "dry_run": args.dry_run})
    elif args.dry_run:
        print(f"would prune {count} finished workflow(s)")
    else:
        print(f"pruned {count} finished workflow(s)")
    return 0


async def _setting(args: argparse.Namespace) -> int:
    async with _client(args) as mf:
        if args.unset:
            value = await mf.set_setting(args.key, None)
        elif args.value is not None:
            # Durations as the rest of the CLI takes them ("30d", "12h", seconds).
            new = seconds(args.value, args.key)
            value = await mf.set_setting(args.key, int(new) if new.is_integer() else new)
        else:
            value = await mf.get_setting(args.key)
    if args.json:
        _print_json({"key": args.key, "value": value})
    else:
        print(f"{args.key} = {value} seconds ({_age(timedelta(seconds=float(value)))})")
    return 0


async def _roles(args: argparse.Namespace) -> int:
    app = _app(args)
    action = args.roles_command
    if action == "list":
        rows = await _roles_module.call(args.dsn, app, "list")
        if args.json:
            _print_json(rows)
        else:
            headers = ("ROLE", "GROUP", "MANAGED", "CONNECTIONS")
            table = [
                (
                    r["role_name"],
                    r["group_name"],
                    "yes" if r["managed"] else "no",
                    str(r["connections"]),
                )
                for r in rows
            ]
            print(_table(headers, table))
        return 0
    params = (args.group, args.name) if action == "create" else (args.role,)
    (outcome,) = await _roles_module.call(args.dsn, app, action, *params)
    if args.json:
        _print_json(outcome)
    elif action == "revoke":
        print(f"revoked {outcome['role']}: {outcome['terminated']} session(s) ended")
    else:
        # The password is shown once; the server keeps only its hash.
        print(f"role {outcome['role']}\npassword {outcome['password']}")
    return 0


async def _schedule(args: argparse.Namespace) -> int:
    action = args.schedule_command
    async with _client(args) as mf:
        if action == "list":
            rows = await mf.schedule.list()
            if args.json:
                _print_json(rows)
                return 0
            headers = ("ID", "SPEC", "STATUS", "WORKFLOW", "NEXT", "LAST", "LAST RUN", "FIRES")
            table = [
                [
                    r.id,
                    r.spec,
                    r.status,
                    r.workflow_name,
                    _when(r.next_fire_at),
                    _when(r.last_fire_at),
                    r.last_run_status or "",
                    str(r.fires),
                ]
                for r in rows
            ]
            print(_table(headers, table))
            return 0
        outcome: dict[str, Any] = {"schedule_id": args.schedule_id, "action": action}
        if action in ("create", "update"):
            save = mf.schedule.create if action == "create" else mf.schedule.update
            outcome["next_fire_at"] = await save(
                args.schedule_id,
                args.spec,
                workflow_name=args.workflow_name,
                args=_json_arg(args.args, "--args"),
                task_queue=args.queue,
                entity=args.entity,
                timezone=args.timezone,
                overlap=args.overlap,
                catchup_window=args.catchup_window,
                jitter=args.jitter,
                paused=args.paused,
                note=args.note,
            )
        elif action == "resume":
            outcome["next_fire_at"] = await mf.schedule.resume(args.schedule_id)
        elif action == "trigger":
            outcome["workflow_id"] = (await mf.schedule.trigger(args.schedule_id)).workflow_id
        else:
            await getattr(mf.schedule, action)(args.schedule_id)
    if args.json:
        _print_json(outcome)
    else:
        print(" ".join(f"{k}={v}" for k, v in outcome.items()))
    return 0


async def _tasks(args: argparse.Namespace) -> int:
    action = args.tasks_command
    async with _client(args) as mf:
        tasks = mf.human_tasks
        rows: list[HumanTask]
        if action == "list":
            metadata = None if args.metadata is None else _json_arg(args.metadata, "--metadata")
            rows = await tasks.list(
                role=args.role, assignee=args.assignee, status=args.status, type=args.type,
                metadata=metadata, limit=args.limit, after=args.after,
            )  # fmt: skip
        elif action == "show":
            rows = [await tasks.get(args.task_id)]
        elif action == "claim-next":
            found = await tasks.claim_next(args.role, args.who)
            rows = [] if found is None else [found]
        elif action == "resolve":
            answer = _json_arg(args.answer, "ANSWER")
            rows = [await tasks.resolve(args.task_id, args.who, answer)]
        elif action == "comment":
            rows = [await tasks.comment(args.task_id, args.who, args.text)]
        elif action == "reassign":
            rows = [await tasks.reassign(args.task_id, args.who, args.assignee, args.role)]
        else:
            rows = [await getattr(tasks, action)(args.task_id, args.who)]
    if args.json:
        _print_json(rows if action == "list" else (rows[0] if rows else None))
        return 0
    if action == "claim-next" and not rows:
        print(f"no open task for role {args.role}")
        return 0
    if action == "show":
        task = rows[0]
        shown_fields = (
            "id", "job_id", "title", "role", "type", "priority", "status", "assignee",
            "claimed_by", "due_at", "description", "metadata", "form", "answer",
        )  # fmt: skip
        for field in shown_fields:
            value = getattr(task, field)
            if value is not None:
                shown = json.dumps(value) if isinstance(value, (dict, list)) else value
                print(f"{field:12} {_when(value) if field == 'due_at' else shown}")
        for e in task.events:
            text = f" {e['text']}" if "text" in e else ""
            print(f"  {e['at']}  {e['who']}: {e['event']}{text}")
        return 0
    headers = ("ID", "WORKFLOW", "ROLE", "PRI", "DUE", "STATUS", "WHO", "TITLE")
    table = [
        [
            str(r.id), r.job_id, r.role, str(r.priority), _when(r.due_at), r.status,
            r.claimed_by or r.assignee or "", r.title,
        ]
        for r in rows
    ]  # fmt: skip
    print(_table(headers, table))
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "migrate": _migrate,
    "worker": _worker,
    "start": _start,
    "list": _list,
    "show": _show,
    "history": _history,
    "result": _result,
    "export": _export,
    "replay": _replay,
    "signal": _signal,
    "cancel": _cancel,
    "retry": _retry,
    "queues": _queues,
    "metrics": _metrics,
    "queue": _queue,
    "prune": _prune,
    "setting": _setting,
    "roles": _roles,
    "schedule": _schedule,
    "tasks": _tasks,
}


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


_NO_CLUSTER = """\
hotmesh db: the private throwaway cluster is developer tooling of a source checkout; this
installed package does not include it (an installed package creates no database clusters).
Point hotmesh at your PostgreSQL instead: --dsn, DATABASE_URL or the libpq variables (PGHOST,
PGPORT, PGUSER, PGDATABASE). To use `hotmesh db`, work in a clone of the repository:
`make setup`, then `make db-up` (or .venv/bin/hotmesh db up).
"""


def _db_command(argv: list[str]) -> int:
    try:
        from hotmesh.devtools import pgcluster
    except ImportError:
        sys.stderr.write(_NO_CLUSTER)
        return 1
    return pgcluster.main(argv)


def _ui_command(args: argparse.Namespace) -> int:
    """Serve the dashboard until Ctrl-C (uvicorn; the `ui` extra)."""
    try:
        import uvicorn

        from hotmesh.ui import create_app
        from hotmesh.ui._app import loopback
    except ImportError as error:
        print(
            f"hotmesh ui needs the ui extra: pip install 'hotmesh[ui]' ({error})", file=sys.stderr
        )
        return 1
    try:
        app_id = _app(args)
    except HotMeshError as error:
        print(f"hotmesh: {error}", file=sys.stderr)
        return 1
    if not args.token and not loopback(args.host):
        print(
            f"hotmesh ui: refusing to listen on {args.host} without a token: pass --token "
            "(or set HOTMESH_UI_TOKEN), or listen on 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    mode = "actions allowed" if args.allow_actions else "read-only"
    print(f"hotmesh ui: http://{args.host}:{args.port}/ (app {app_id}, {mode})", flush=True)
    app = create_app(app_id, args.dsn, allow_actions=args.allow_actions, token=args.token)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["db"]:
        return _db_command(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "bench":
        from hotmesh.devtools import bench

        return bench.main(args)
    if args.command == "ui":
        return _ui_command(args)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    try:
        code = asyncio.run(_COMMANDS[args.command](args))
        sys.stdout.flush()  # a closed pipe must fail here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader (head, less) has all it wanted: exit quietly, as Unix tools do. Point
        # stdout at /dev/null so Python's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except DatabaseUnreachable as error:
        print(f"hotmesh: database error: {_first_line(error)}", file=sys.stderr)
        return 1
    except SchemaMismatch as error:
        # Its own status, for a supervisor: restart with the new release (or after migrate).
        print(f"hotmesh: {_first_line(error)}", file=sys.stderr)
        return error.exit_code
    except HotMeshError as error:
        print(f"hotmesh: {_first_line(error)}", file=sys.stderr)
        return 1
    except psycopg.Error as error:
        print(f"hotmesh: database error: {_first_line(error)}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"hotmesh: {_first_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
