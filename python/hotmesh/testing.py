"""Check new workflow code against recorded histories before it is deployed.

`Replayer` runs workflow functions against histories (exports: `<app>.export_workflow`,
`hotmesh export`, or read from an app) with no database write and no activity run: every
durable call is answered from the history. It reports, per workflow thread, that the code
replays it, or the first divergence: the step, what was recorded (kind, name, arguments) and
what the code asks for now. `hotmesh replay` is the same from a deploy pipeline.

    report = await Replayer([claims_review]).replay_app(mf)
    assert report.ok, report.text()
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hotmesh import errors
from hotmesh._runner import Completed, Diverged, Failed, Outcome, Suspended, replay
from hotmesh.codecs import Codec, Payloads
from hotmesh.workflow import check_workflow_function

if TYPE_CHECKING:
    from hotmesh.client import MemFlow

EXPORT_FORMAT = "hotmesh-export"
LIVE = ("pending", "running", "waiting")


@dataclass(frozen=True)
class ReplayResult:
    """One thread of one workflow, replayed: `divergence` is None when the code replays its
    history, else how the code differs from it (the first difference)."""

    workflow_id: str
    workflow_name: str
    thread: str
    status: str  # the thread's recorded status
    divergence: str | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None


@dataclass(frozen=True)
class ReplayReport:
    results: tuple[ReplayResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def diverged(self) -> list[ReplayResult]:
        return [r for r in self.results if not r.ok]

    def text(self) -> str:
        """One line per thread replayed, then a summary."""
        lines = [
            f"{r.workflow_id} {r.thread} ({r.workflow_name}, {r.status}): "
            + ("ok" if r.ok else f"DIVERGED: {r.divergence}")
            for r in self.results
        ]
        lines.append(
            f"{len(self.results)} replayed, {len(self.diverged)} diverged"
            if self.results
            else "no workflow history to replay"
        )
        return "\n".join(lines)


def load_export(path: str | Path) -> dict[str, Any]:
    """A history file written by `hotmesh export`; InvalidArgument when it is not one."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise errors.InvalidArgument(f"{path}: cannot read a hotmesh export: {error}") from None
    check_export(doc, str(path))
    return dict(doc)


def check_export(doc: Any, source: str = "history") -> None:
    """InvalidArgument unless `doc` is a hotmesh export (format, version, workflow, steps)."""
    problem = None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        problem = f'no "format": "{EXPORT_FORMAT}"'
    elif doc.get("version") != 1:
        problem = f"version {doc.get('version')!r}; this hotmesh reads version 1"
    elif not isinstance(workflow := doc.get("workflow"), dict) or not all(
        isinstance(workflow.get(key), str) for key in ("id", "workflow_name", "status")
    ):
        problem = "no workflow with id, workflow_name and status"
    elif not isinstance(doc.get("steps"), list) or not all(
        isinstance(s, dict) and isinstance(s.get("seq"), int) and isinstance(s.get("kind"), str)
        for s in doc["steps"]
    ):
        problem = "no list of steps with seq and kind"
    elif not isinstance(doc.get("threads", []), list) or not all(
        isinstance(t, dict) and isinstance(t.get("thread"), str) and isinstance(t.get("name"), str)
        for t in doc.get("threads", [])
    ):
        problem = "threads is not a list of threads with thread and name"
    if problem is not None:
        raise errors.InvalidArgument(f"{source} is not a hotmesh export: {problem}")


class Replayer:
    """Replays histories against `workflows` (functions, registered by `__name__`, or a
    mapping of workflow name to function). With `ignore_arguments`, a call whose arguments
    changed is not a divergence (kind and name still are). `codec` decodes histories recorded
    with one (replay_app uses the app client's by default)."""

    def __init__(
        self,
        workflows: Mapping[str, Callable[..., Any]] | Iterable[Callable[..., Any]],
        *,
        ignore_arguments: bool = False,
        codec: Codec | Sequence[Codec] | None = None,
    ) -> None:
        if isinstance(workflows, Mapping):
            named = dict(workflows)
        else:
            named = {getattr(fn, "__name__", repr(fn)): fn for fn in workflows}
        if not named:
            raise errors.InvalidArgument("a Replayer needs at least one workflow function")
        for fn in named.values():
            check_workflow_function(fn)
        self.workflows = named
        self.ignore_arguments = ignore_arguments
        self.payloads = Payloads(codec)  # histories recorded with a codec (docs/codecs.md)

    async def replay_export(self, export: Mapping[str, Any]) -> list[ReplayResult]:
        """Replay one export: its main thread, and each hook thread whose function is given.
        InvalidArgument when it is not an export or its workflow's function is not given."""
        check_export(export)
        export = self.payloads.decode(export)
        job = export["workflow"]
        name = job["workflow_name"]
        if name not in self.workflows:
            given = ", ".join(sorted(self.workflows))
            raise errors.InvalidArgument(
                f'workflow "{job["id"]}" is a {name}; no function of that name was given'
                f" (given: {given})"
            )
        threads = [("main", name, job.get("args") or [], job["status"])]
        threads += [
            (t["thread"], t["name"], t.get("args") or [], t.get("status", ""))
            for t in export.get("threads", [])
            if t.get("name") in self.workflows
        ]
        results = []
        for thread, fn_name, args, status in threads:
            outcome = await replay(
                self.workflows[fn_name],
                export["steps"],
                args=args,
                workflow_id=job["id"],
                thread=thread,
                workflow_name=fn_name,
                task_queue=job.get("task_queue", ""),
                check_input=not self.ignore_arguments,
                run=int(job.get("run") or 1),
            )
            divergence = _divergence(outcome, status, export["steps"], thread)
            results.append(ReplayResult(job["id"], fn_name, thread, status, divergence))
        return results

    async def replay_exports(self, exports: Iterable[Mapping[str, Any]]) -> ReplayReport:
        results: list[ReplayResult] = []
        for export in exports:
            results += await self.replay_export(export)
        return ReplayReport(tuple(results))

    async def replay_files(self, paths: Iterable[str | Path]) -> ReplayReport:
        """Replay history files written by `hotmesh export` (no database needed)."""
        return await self.replay_exports([load_export(path) for path in paths])

    async def replay_app(
        self,
        mf: MemFlow,
        *,
        statuses: Sequence[str] | None = LIVE,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> ReplayReport:
        """Replay the recorded histories of an app's workflows that these functions serve:
        by default the unfinished ones, which the new code must take over (None: all)."""
        exports = await mf._db.export_workflows(list(self.workflows), statuses, since, limit)
        if mf.payloads.enabled and not self.payloads.enabled:  # the app's codec decodes them
            exports = [mf.payloads.decode(export) for export in exports]
        return await self.replay_exports(exports)


def _divergence(
    outcome: Outcome, status: str, steps: Sequence[Mapping[str, Any]], thread: str
) -> str | None:
    """The first divergence of a replay, or None. A run that completed must complete again:
    code that now fails or asks for more than the run did differs from it."""
    if isinstance(outcome, Diverged):
        return outcome.error.message
    if status != "completed" or isinstance(outcome, Completed):
        return None
    last = max((s["seq"] for s in steps if s.get("thread", "main") == thread), default=0)
    if isinstance(outcome, Failed):
        return f"the run completed after step {last} but the code now fails: {outcome.error}"
    assert isinstance(outcome, Suspended)  # noqa: S101 - the only outcome left
    if outcome.commands:
        seq, command = outcome.commands[0]
        return (
            f"the run completed after step {last} but the code now calls {command.kind} "
            f'"{command.name}" at step {seq}'
        )
    return f"the run completed after step {last} but the code now waits on a recorded call"
