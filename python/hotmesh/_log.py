"""Structured log lines: one line per event, `event=<name> key=value ...`, through stdlib
`logging` (loggers `hotmesh.worker` and `hotmesh.listener`), so any handler or formatter
works and `grep event=retry` finds every retry.

Levels: INFO for what happens to tasks (claim, complete, suspend, retry, fail, drop, release)
and to workers (start, stop); WARNING for trouble an operator should see (database
unreachable, lease lost, reconnected); ERROR for a workflow parked as stuck or a crashed
runner. DEBUG adds the internals. Nothing is printed below WARNING unless asked for
(`hotmesh --log-level INFO worker ...`).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hotmesh._db import Claimed, FailOutcome

_PLAIN = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")


def _text(value: object) -> str:
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".")
    elif isinstance(value, timedelta):
        text = f"{value.total_seconds():.3f}".rstrip("0").rstrip(".")
    elif isinstance(value, datetime):
        text = value.isoformat()
    else:
        text = str(value)
    return text if _PLAIN.match(text) else json.dumps(text)


def fields(event: str, /, **values: object) -> str:
    """`event=<event> key=value ...`; values with spaces or quotes are JSON-quoted, None is
    left out."""
    parts = [f"event={event}"]
    parts.extend(f"{key}={_text(value)}" for key, value in values.items() if value is not None)
    return " ".join(parts)


def event(logger: logging.Logger, level: int, name: str, /, **values: object) -> None:
    """Log one event line at `level` (the line is only built when the level is enabled). An
    `exc_info` value (an exception) is attached as the traceback, not as a field."""
    if logger.isEnabledFor(level):
        error = values.pop("exc_info", None)
        exc_info = error if isinstance(error, BaseException) else None
        logger.log(level, "%s", fields(name, **values), exc_info=exc_info)


def task_fields(task: Claimed) -> dict[str, object]:
    """The fields that name a task in every event about it."""
    return {
        "task": task.task_id,
        "kind": task.kind,
        "name": task.name,
        "workflow": task.job_id,
        "thread": task.thread,
        "queue": task.task_queue,
    }


def first_line(error: BaseException) -> str:
    """The first line of an error's message (database errors add detail lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def log_failure(
    logger: logging.Logger, task: Claimed, outcome: FailOutcome, error: BaseException
) -> None:
    """Log what fail_task decided for a failed run: `retry` (with the delay until the next
    attempt) or `fail` (for good)."""
    retrying = outcome.status == "retrying"
    run_at = outcome.run_at
    delay = None
    if retrying and run_at is not None:
        delay = max((run_at - datetime.now(UTC)).total_seconds(), 0.0)
    event(
        logger,
        logging.INFO,
        "retry" if retrying else "fail",
        **task_fields(task),
        attempt=task.attempt if task.kind == "activity" else task.job_attempt,
        delay=delay,
        run_at=run_at if retrying else None,
        error=first_line(error),
    )
