"""The `hotmesh` command: install an app, run workers, start and inspect workflows.

Every command takes `--app` (default $HOTMESH_APP) and `--dsn` (default $DATABASE_URL, else
the libpq environment). Errors print one line and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg

from hotmesh import _install
from hotmesh.client import MemFlow
from hotmesh.errors import HotMeshError


def _common(parser: argparse.ArgumentParser) -> None:
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotmesh", description="Durable workflows with permanent memory, native to Postgres."
    )
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    migrate = commands.add_parser("migrate", help="install or upgrade an app's schema")
    _common(migrate)

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
    worker.add_argument("--concurrency", type=int, default=8, help="tasks run at once (8)")
    worker.add_argument("--lease", type=float, default=30.0, help="lease seconds (30)")

    start = commands.add_parser("start", help="start a workflow")
    _common(start)
    start.add_argument("workflow_name", metavar="NAME")
    start.add_argument("--args", default="[]", help="JSON array of arguments (default [])")
    start.add_argument("--queue", help="task queue (default: the entity)")
    start.add_argument("--id", dest="workflow_id", help="workflow id (default: generated)")
    start.add_argument("--entity", help="entity type (default: the workflow name)")
    start.add_argument("--wait", action="store_true", help="wait for the result and print it")

    bench = commands.add_parser("bench", help="measure throughput and latency (see README)")
    from hotmesh import bench as bench_module

    bench_module.add_arguments(bench)

    show = commands.add_parser("show", help="show a workflow: status, entity, result or error")
    _common(show)
    show.add_argument("workflow_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print JSON")
    return parser


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


def _app(args: argparse.Namespace) -> str:
    if not args.app:
        raise HotMeshError("no app id: pass --app NAME or set HOTMESH_APP")
    return _install.check_app_id(args.app)


async def _migrate(args: argparse.Namespace) -> int:
    applied = await _install.migrate(args.dsn, _app(args))
    done = ", ".join(f"{v:04d}" for v in applied) if applied else "none (up to date)"
    print(f"app {args.app}: migrations applied: {done}; functions installed")
    return 0


async def _worker(args: argparse.Namespace) -> int:
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
    mf = await MemFlow.init(app_id=_app(args), dsn=args.dsn, migrate=False)
    if activities:
        await mf.worker.register_activities(
            task_queue=args.queue, activities=activities, concurrency=args.concurrency
        )
    await mf.worker.create(
        task_queue=args.queue, workflow=workflows, concurrency=args.concurrency, lease=args.lease
    )
    names = ", ".join([fn.__name__ for fn in workflows] + sorted(activities))
    print(f"worker serving {args.app}/{args.queue}: {names} (Ctrl-C to stop)", flush=True)
    await mf.run_until_signal()
    return 0


async def _start(args: argparse.Namespace) -> int:
    try:
        arguments = json.loads(args.args)
    except json.JSONDecodeError as error:
        raise HotMeshError(f"--args is not valid JSON: {error}") from None
    if not isinstance(arguments, list):
        raise HotMeshError("--args must be a JSON array, e.g. '[\"Jane\"]'")
    mf = await MemFlow.init(app_id=_app(args), dsn=args.dsn, migrate=False)
    try:
        handle = await mf.workflow.start(
            workflow_name=args.workflow_name,
            args=arguments,
            task_queue=args.queue,
            workflow_id=args.workflow_id,
            entity=args.entity,
        )
        print(handle.workflow_id, flush=True)
        if args.wait:
            print(json.dumps(await handle.result()))
    finally:
        await mf.close()
    return 0


async def _show(args: argparse.Namespace) -> int:
    mf = await MemFlow.init(app_id=_app(args), dsn=args.dsn, migrate=False)
    try:
        doc = await mf.db.get_workflow(args.workflow_id)
    finally:
        await mf.close()
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    for key in ("id", "workflow_name", "entity", "task_queue", "status", "attempt"):
        print(f"{key:14} {doc[key]}")
    for key in ("created_at", "completed_at"):
        if doc.get(key):
            print(f"{key:14} {doc[key]}")
    print(f"{'steps':14} {doc['steps']}")
    print(f"{'context':14} {json.dumps(doc['context'])}")
    if doc.get("result") is not None:
        print(f"{'result':14} {json.dumps(doc['result'])}")
    if doc.get("error"):
        error = dict(doc["error"])
        error.pop("stack", None)
        print(f"{'error':14} {json.dumps(error)}")
    for task in doc["tasks"]:
        print(f"{'task':14} {task['kind']} {task['name']} [{task['state']}] due {task['run_at']}")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "migrate": _migrate,
    "worker": _worker,
    "start": _start,
    "show": _show,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["db"]:
        from hotmesh import _pgcluster

        return _pgcluster.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "bench":
        from hotmesh import bench

        return bench.main(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        return asyncio.run(_COMMANDS[args.command](args))
    except KeyboardInterrupt:
        return 130
    except HotMeshError as error:
        print(f"hotmesh: {error}", file=sys.stderr)
        return 1
    except psycopg.Error as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        print(f"hotmesh: database error: {message}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"hotmesh: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
