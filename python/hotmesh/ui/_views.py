"""What the pages compute from rows: the list's filters, the timeline's threads, and what each
entity version changed. Plain functions: no database, no web framework."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from hotmesh.rows import HistoryEntry

STATUSES = ("pending", "running", "waiting", "completed", "failed", "cancelled")
# What a workflow can wait on, as the list's filter names it, and the step kind it means.
WAITS = {"timer": "sleep", "signal": "signal", "activity": "activity", "child": "child"}


def _when(name: str, text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def list_filters(query: Mapping[str, str]) -> dict[str, Any]:
    """The parameters of the list query from the page's query string; ValueError names a
    filter that is not valid."""
    get = {k: v.strip() for k, v in query.items() if v.strip()}
    status = get.get("status")
    if status is not None and status not in STATUSES:
        raise ValueError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    waits = get.get("waits")
    if waits is not None and waits not in WAITS:
        raise ValueError(f"waits on: {waits!r} is not one of {', '.join(WAITS)}")
    search: dict[str, str] | None = None
    if "search" in get:
        search = {}
        for pair in get["search"].split(","):
            key, equals, value = pair.partition("=")
            if not equals or not key.strip():
                raise ValueError(f"search: {pair.strip()!r} is not key=value")
            search[key.strip()] = value.strip()
    after_at = after_id = None
    if "after" in get:
        at, bar, after_id = get["after"].partition("|")
        if not bar:
            raise ValueError("after: not a page cursor (follow the Next link)")
        after_at = _when("after", at)
    return {
        "status": status,
        "name": get.get("name"),
        "entity": get.get("entity"),
        "search": None if search is None else Jsonb(search),
        "since": _when("from", get["from"]) if "from" in get else None,
        "until": _when("to", get["to"]) if "to" in get else None,
        "waits": None if waits is None else WAITS[waits],
        "after_at": after_at,
        "after_id": after_id,
    }


@dataclass(frozen=True)
class Thread:
    """One thread of the timeline (main, a hook) with its steps in order."""

    name: str
    entries: list[HistoryEntry]


def timeline(history: list[HistoryEntry]) -> list[Thread]:
    """workflow_history's rows grouped by thread, main first, each in its recorded order."""
    threads: dict[str, list[HistoryEntry]] = {}
    for entry in history:
        threads.setdefault(entry.thread, []).append(entry)
    order = sorted(threads, key=lambda t: (t != "main", t))
    return [Thread(t, threads[t]) for t in order]


def diff(before: Any, after: Any, path: str = "") -> list[tuple[str, str, Any, Any]]:
    """What changed from one entity document to the next: (path, added | removed | changed,
    old, new), objects compared key by key, anything else as a whole value."""
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[tuple[str, str, Any, Any]] = []
        for key in sorted(before.keys() | after.keys()):
            where = f"{path}.{key}" if path else key
            if key not in after:
                changes.append((where, "removed", before[key], None))
            elif key not in before:
                changes.append((where, "added", None, after[key]))
            else:
                changes.extend(diff(before[key], after[key], where))
        return changes
    if before == after:
        return []
    return [(path or "(document)", "changed", before, after)]
