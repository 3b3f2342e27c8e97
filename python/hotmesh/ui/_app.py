"""The dashboard's ASGI application: pages, actions, and the live stream.

Reads run as `<app>_reader` (no function that changes anything) in read-only transactions;
actions call the same stored functions a psql user would (through hotmesh._db), as
`<app>_app`, except retry_workflow and set_queue_limits, which the database keeps for the
schema's owner: they run with the dashboard's own login. Every
connection is opened for the request and closed after it (a null pool), so a database that
went away and came back needs nothing reset.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncNullConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from hotmesh import _durations as durations
from hotmesh import errors
from hotmesh._db import ADAPTERS, Database
from hotmesh._install import check_app_id
from hotmesh.ui import _queries
from hotmesh.ui._live import Live
from hotmesh.ui._views import diff, list_filters, timeline

_PAGE = 50  # workflows per page of the list
_CSRF_COOKIE = "hm_csrf"
_DB_DOWN = (psycopg.OperationalError, PoolTimeout, errors.DatabaseUnreachable)
# What a finished action says on the page it redirects to (a fixed set: nothing from the URL).
_DONE = {
    "signal": "Signal sent.",
    "cancel": "Cancelled.",
    "retry": "Retry requested.",
    "hook": "Hook started.",
    "start": "Workflow started.",
    "pause": "Schedule paused.",
    "resume": "Schedule resumed.",
    "trigger": "Schedule triggered: its run started.",
    "limits": "Limits set.",
    "clear": "Limits cleared.",
    "claim": "Claimed.",
    "comment": "Comment added.",
    "resolve": "Resolved: the workflow has its answer.",
}
_INBOX = 100  # human tasks a page of the inbox shows
TASK_STATUSES = ("open", "claimed", "resolved", "expired", "cancelled")
_KEYS = 200  # concurrency keys shown on a queue's page
_NUMBERS = ("max_running", "rate", "key_max_running", "key_rate")  # integer fields: SQL numbers


Values = dict[str, str | None]  # an action's form fields: text, or None when left empty


@dataclass(frozen=True)
class _Action:
    """One action: its form fields, the SQL a psql user would run, and the call itself."""

    title: str
    fields: tuple[str, ...]
    sql: str  # shown on the confirmation page, with the form's values as literals
    run: Callable[[_Ui, str, Values], Awaitable[str]]  # returns what `page` shows
    page: str = "/workflows/{}"  # where it goes when done, with what `run` returned
    as_owner: str = ""  # the owner-only function it calls: it runs with the dashboard's login
    # Checks and normalises the fields before the confirmation (InvalidArgument: a message);
    # gets the whole form too (the answer form's fields).
    prepare: Callable[[Values, Mapping[str, Any]], Values] | None = None


class _Ui:
    """What every request shares: the settings, the connections' pools, the live stream."""

    def __init__(
        self, app_id: str, dsn: str, allow_actions: bool, token: str | None, list_window: int
    ) -> None:
        self.app_id = check_app_id(app_id)
        self.allow_actions = allow_actions
        self.token = token
        self.list_window = list_window
        self.schema = sql.Identifier(app_id)
        role = sql.Identifier(f"{app_id}_app")
        reader = sql.Identifier(f"{app_id}_reader")
        kwargs = {"autocommit": True, "context": ADAPTERS, "connect_timeout": 5}

        async def as_reader(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(sql.SQL("set role {}").format(reader))
            await conn.execute("set default_transaction_read_only = on")

        async def as_app(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(sql.SQL("set role {}").format(role))

        def pool(configure: Any) -> AsyncNullConnectionPool:
            return AsyncNullConnectionPool(
                dsn, kwargs=kwargs, configure=configure, max_size=8, timeout=10, open=False
            )

        self.pools = [pool(as_reader), pool(as_app), pool(None)]
        self.reader = Database(self.pools[0], app_id)
        self.actor = Database(self.pools[1], app_id)
        self.owner = Database(self.pools[2], app_id)
        self.live = Live(dsn, app_id)
        self.started = False
        self._starting = asyncio.Lock()
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("hotmesh.ui", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["json"] = _pretty
        self.templates.filters["when"] = _when
        self.templates.filters["age"] = _age

    async def start(self) -> None:
        """Open the pools and start listening, once: at startup when the ASGI server runs this
        app's lifespan, else (mounted in another application, whose lifespan does not run a
        mounted app's) at the first request."""
        async with self._starting:
            if not self.started:
                for pool in self.pools:
                    await pool.open()
                await self.live.start()
                self.started = True

    async def stop(self) -> None:
        if self.started:
            await self.live.stop()
            for pool in self.pools:
                await pool.close()
            self.started = False

    async def read(self, query: str, **params: Any) -> list[dict[str, Any]]:
        statement = sql.SQL(query).format(app=self.schema)
        async with self.pools[0].connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(statement, params)
            return await cur.fetchall()


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _age(value: timedelta | None) -> str:
    if value is None:
        return ""
    seconds = value.total_seconds()
    return (
        f"{seconds:.1f} s"
        if seconds < 120
        else str(value - timedelta(microseconds=value.microseconds))
    )


def _ui(request: Request) -> _Ui:
    ui: _Ui = request.app.state.ui
    return ui


def _csrf(request: Request) -> str:
    token: str = getattr(request.state, "csrf", None) or request.cookies.get(_CSRF_COOKIE) or ""
    if not token:
        token = request.state.csrf = secrets.token_hex(16)
    return token


def _render(request: Request, template: str, status: int = 200, **context: Any) -> Response:
    ui = _ui(request)
    html = ui.templates.get_template(template).render(
        app=ui.app_id,
        actions=ui.allow_actions,
        csrf=_csrf(request),
        root=request.scope.get("root_path", ""),  # where it is mounted: "" at the root
        live=request.method == "GET",  # a page that a GET shows again (not a POST's answer)
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    if request.cookies.get(_CSRF_COOKIE) != _csrf(request):
        # Double-submit: a form posts this value back; another site can neither read the
        # cookie nor send it (SameSite=Strict).
        response.set_cookie(_CSRF_COOKIE, _csrf(request), httponly=True, samesite="strict")
    return response


def _error(request: Request, status: int, title: str, message: str) -> Response:
    return _render(request, "error.html", status, title=title, message=message)


# -- pages ---------------------------------------------------------------------------------------


async def overview(request: Request) -> Response:
    ui = _ui(request)
    counts: dict[str, int] = {}
    completions: dict[int, int] = {}
    failed_day = 0
    for row in await ui.read(_queries.OVERVIEW):
        counts[row["status"]] = counts.get(row["status"], 0) + row["n"]
        if row["minute"] is not None:
            completions[row["minute"]] = completions.get(row["minute"], 0) + row["n"]
        failed_day += row["n"] if row["failed_day"] else 0
    starts = [[row["minute"], row["n"]] for row in await ui.read(_queries.STARTS)]
    roles: dict[str, dict[str, int]] = {}
    open_tasks = {**_task_filters({}), "limit": 1000}
    for item in await ui.reader.human_tasks("list_human_tasks", open_tasks):
        counts_of = roles.setdefault(item.role, {"open": 0, "claimed": 0})
        counts_of[item.status] = counts_of.get(item.status, 0) + 1
    chart = {"starts": starts, "completions": sorted(completions.items())}
    return _render(
        request,
        "overview.html",
        counts=counts,
        failed_day=failed_day,
        chart=json.dumps(chart),
        roles=sorted(roles.items()),
        queues=await ui.reader.queue_backlog(),
    )


async def workflows(request: Request) -> Response:
    ui = _ui(request)
    try:
        filters = list_filters(request.query_params)
    except ValueError as problem:
        return _render(
            request,
            "workflows.html",
            400,
            rows=[],
            next_url=None,
            searched_to=None,
            problem=problem,
            form=request.query_params,
        )
    # Only the filters no index serves need a window larger than the page itself.
    unindexed = any(filters[f] is not None for f in ("status", "name", "waits"))
    scan = ui.list_window if unindexed else _PAGE + 1
    found = await ui.read(_queries.WORKFLOWS, **filters, limit=_PAGE + 1, scan=scan)
    rows = [row for row in found if not row["edge"]]
    # The next page starts after the last row shown or, when the window ran out first,
    # after the last row searched.
    last = rows[_PAGE - 1] if len(rows) > _PAGE else next((r for r in found if r["edge"]), None)
    next_url = None
    if last is not None:
        query = {k: v for k, v in request.query_params.items() if v and k != "after"}
        query["after"] = f"{last['created_at'].isoformat()}|{last['id']}"
        next_url = f"{request.scope.get('root_path', '')}/workflows?{urlencode(query)}"
    return _render(
        request,
        "workflows.html",
        rows=rows[:_PAGE],
        next_url=next_url,
        searched_to=None if last is None or len(rows) > _PAGE else last["created_at"],
        problem=None,
        form=request.query_params,
    )


async def workflow(request: Request) -> Response:
    ui = _ui(request)
    workflow_id = request.path_params["id"]
    jobs = await ui.read(_queries.JOB, id=workflow_id)
    if not jobs:
        raise HTTPException(404, f"No workflow has the id {workflow_id!r}.")
    history = await ui.reader.workflow_history(workflow_id)
    changes = await ui.reader.entity_history(workflow_id)
    return _render(
        request,
        "workflow.html",
        job=jobs[0],
        waits=await ui.reader.workflow_waits(workflow_id),
        threads=timeline(history),
        children=await ui.read(_queries.CHILDREN, id=workflow_id),
        hooks=await ui.read(_queries.HOOKS, id=workflow_id),
        versions=[
            (change, diff(before, change.document))
            for change, before in zip(changes, [{}, *(c.document for c in changes)], strict=False)
        ],
        done=_DONE.get(request.query_params.get("done", "")),
        problem=None,
    )


async def queues(request: Request) -> Response:
    ui = _ui(request)
    return _render(
        request,
        "queues.html",
        schedules=await ui.reader.list_schedules(None),
        limits=await ui.reader.get_queue_limits(),
        queues=await ui.reader.queue_backlog(),
        done=_DONE.get(request.query_params.get("done", "")),
    )


def _task_filters(query: Mapping[str, str]) -> dict[str, Any]:
    get = {k: v.strip() for k, v in query.items() if v.strip()}
    status = get.get("status")
    if status is not None and status not in TASK_STATUSES:
        raise ValueError(f"status: {status!r} is not one of {', '.join(TASK_STATUSES)}")
    return {
        "role": get.get("role"),
        "assignee": get.get("assignee"),
        "status": status,
        "type": get.get("type"),
        "metadata": None,
        "limit": _INBOX,
        "after": None,
    }


async def inbox(request: Request) -> Response:
    """People's tasks (docs/people.md) by role, assignee, status and type, most urgent first."""
    ui = _ui(request)
    try:
        filters = _task_filters(request.query_params)
    except ValueError as problem:
        return _render(
            request, "inbox.html", 400, tasks=[], problem=problem, form=request.query_params
        )
    tasks = await ui.reader.human_tasks("list_human_tasks", filters)
    return _render(
        request, "inbox.html", tasks=tasks, problem=None, form=request.query_params, limit=_INBOX
    )


async def task(request: Request) -> Response:
    ui = _ui(request)
    text = request.path_params["id"]
    found = (
        await ui.reader.human_tasks("get_human_task", {"id": int(text)}) if text.isdigit() else []
    )
    if not found:
        raise HTTPException(404, f"No human task has the id {text!r}.")
    item = found[0]
    fields = []
    properties = (item.form or {}).get("properties")
    if isinstance(properties, dict):
        required = set((item.form or {}).get("required") or [])
        for name, spec in properties.items():
            spec = spec if isinstance(spec, dict) else {}
            fields.append(
                {
                    "name": name,
                    "type": spec.get("type") if isinstance(spec.get("type"), str) else "json",
                    "enum": spec.get("enum") if isinstance(spec.get("enum"), list) else None,
                    "required": name in required,
                    "title": spec.get("title") or spec.get("description") or "",
                }
            )
    return _render(
        request,
        "task.html",
        task=item,
        fields=fields,
        done=_DONE.get(request.query_params.get("done", "")),
    )


async def queue(request: Request) -> Response:
    """One task queue: its limits (and a form to change them), its concurrency keys, its
    backlog. Any name has a page: a queue may be limited before its first task."""
    ui = _ui(request)
    name = request.path_params["queue"]
    limits = [row for row in await ui.reader.get_queue_limits() if row.task_queue == name]
    return _render(
        request,
        "queue.html",
        queue=name,
        limits=limits,
        current=limits[0] if limits else None,
        keys=await ui.reader.queue_keys(name, _KEYS),
        key_limit=_KEYS,
        queues=[row for row in await ui.reader.queue_backlog() if row.task_queue == name],
        done=_DONE.get(request.query_params.get("done", "")),
    )


async def start_form(request: Request) -> Response:
    return _render(request, "start.html", problem=None, form={})


# -- actions -------------------------------------------------------------------------------------


def _json_field(values: Values, name: str, default: Any) -> Any:
    text = values.get(name)
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise errors.InvalidArgument(f"{name} is not valid JSON: {error}") from None


def _text(values: Mapping[str, Any], name: str) -> str | None:
    return str(values.get(name) or "").strip() or None


async def _signal(ui: _Ui, workflow_id: str, values: Values) -> str:
    await ui.actor.signal(
        str(values.get("signal_id")), _json_field(values, "payload", None), workflow_id, None
    )
    return workflow_id


async def _cancel(ui: _Ui, workflow_id: str, values: Values) -> str:
    descend = values.get("descend") == "true"
    await ui.actor.cancel_workflow(workflow_id, values.get("reason"), descend, False)
    return workflow_id


async def _retry(ui: _Ui, workflow_id: str, values: Values) -> str:
    await ui.owner.retry_workflow(workflow_id)
    return workflow_id


async def _hook(ui: _Ui, workflow_id: str, values: Values) -> str:
    await ui.actor.hook(
        workflow_id,
        str(values.get("workflow_name")),
        _json_field(values, "args", []),
        values.get("task_queue"),
        values.get("signal_id"),
    )
    return workflow_id


async def _start(ui: _Ui, workflow_id: str, values: Values) -> str:
    return await ui.actor.start_workflow(
        str(values.get("workflow_name")),
        _json_field(values, "args", []),
        values.get("task_queue"),
        values.get("workflow_id"),
        values.get("entity"),
        {},
    )


def _schedule_call(name: str) -> Callable[[_Ui, str, Values], Awaitable[str]]:
    async def call(ui: _Ui, schedule_id: str, values: Values) -> str:
        shown = await ui.actor.schedule_call(name, schedule_id)
        return str(shown) if name == "trigger" else schedule_id  # trigger: the run's id

    return call


def _limit_values(values: Values, form: Mapping[str, Any]) -> Values:
    """The limits as the SQL takes them: whole numbers, and `per`/`key_per` as intervals' text."""
    checked: Values = {}
    for name, value in values.items():
        if value is not None and name in _NUMBERS:
            if not value.isdigit():
                raise errors.InvalidArgument(f"{name}: {value!r} is not a whole number")
            value = str(int(value))
        elif value is not None and name in ("per", "key_per"):
            value = f"{durations.seconds(value, name):g} seconds"
        checked[name] = value
    return checked


async def _limits(ui: _Ui, task_queue: str, values: Values) -> str:
    def number(name: str) -> int | None:
        value = values.get(name)
        return None if value is None else int(value)

    def interval(name: str) -> timedelta | None:
        value = values.get(name)
        return None if value is None else timedelta(seconds=durations.seconds(value, name))

    await ui.owner.set_queue_limits(
        task_queue,
        number("max_running"),
        number("rate"),
        interval("per"),
        number("key_max_running"),
        number("key_rate"),
        interval("key_per"),
    )
    return task_queue


async def _clear(ui: _Ui, task_queue: str, values: Values) -> str:
    await ui.owner.set_queue_limits(task_queue, None, None, None, None)
    return task_queue


def _task_id(text: str) -> int:
    if not text.isdigit():
        raise errors.InvalidArgument(f"a human task id is a number, not {text!r}")
    return int(text)


async def _claim(ui: _Ui, task_id: str, values: Values) -> str:
    await ui.actor.human_tasks(
        "claim_human_task", {"id": _task_id(task_id), "who": values.get("who")}
    )
    return task_id


async def _comment(ui: _Ui, task_id: str, values: Values) -> str:
    params = {"id": _task_id(task_id), "who": values.get("who"), "text": values.get("text")}
    await ui.actor.human_tasks("comment_human_task", params)
    return task_id


async def _resolve(ui: _Ui, task_id: str, values: Values) -> str:
    answer = _json_field(values, "answer", None)
    params = {"id": _task_id(task_id), "who": values.get("who"), "answer": Jsonb(answer)}
    await ui.actor.human_tasks("resolve_human_task", params)
    return task_id


def _answer_value(kind: str, name: str, text: str) -> Any:
    """One field of the answer form, as its JSON schema type says."""
    if kind == "boolean":
        return text == "true"
    if kind in ("number", "integer"):
        try:
            return int(text) if kind == "integer" else float(text)
        except ValueError:
            raise errors.InvalidArgument(f"{name}: {text!r} is not a {kind}") from None
    if kind == "string":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise errors.InvalidArgument(f"{name} is not valid JSON: {error}") from None


def _answer(values: Values, form: Mapping[str, Any]) -> Values:
    """The answer as JSON text: from the fields the task's form built (`a.<name>`, typed by
    `t.<name>`; an empty one is left out), else the `answer` field as it came."""
    answer: dict[str, Any] = {}
    built = False
    for key in form:
        if key.startswith("t."):
            built = True
            name = key[2:]
            text = str(form.get("a." + name) or "")
            if text != "":
                answer[name] = _answer_value(str(form[key]), name, text)
    if built:
        values = {**values, "answer": json.dumps(answer, sort_keys=True)}
    elif values.get("answer") is not None:
        values = {**values, "answer": json.dumps(_json_field(values, "answer", None))}
    return values


_TASK_ACTIONS = {
    "claim": _Action(
        "Claim the task",
        ("who",),
        "select {app}.claim_human_task({id}, {who})",
        _claim,
        "/inbox/{}",
    ),
    "comment": _Action(
        "Comment on the task",
        ("who", "text"),
        "select {app}.comment_human_task({id}, {who}, {text})",
        _comment,
        "/inbox/{}",
    ),
    "resolve": _Action(
        "Resolve the task",
        ("who", "answer"),
        "select {app}.resolve_human_task({id}, {who}, {answer})",
        _resolve,
        "/inbox/{}",
        prepare=_answer,
    ),
}
_WORKFLOW_ACTIONS = {
    "signal": _Action(
        "Send a signal",
        ("signal_id", "payload"),
        "select {app}.signal({signal_id}, {payload}, {id})",
        _signal,
    ),
    "cancel": _Action(
        "Cancel the workflow",
        ("reason", "descend"),
        "select {app}.cancel_workflow({id}, {reason}, {descend})",
        _cancel,
    ),
    "retry": _Action(
        "Retry from the last recorded step",
        (),
        "select {app}.retry_workflow({id})",
        _retry,
        as_owner="retry_workflow",
    ),
    "hook": _Action(
        "Start a hook",
        ("workflow_name", "args", "task_queue", "signal_id"),
        "select {app}.hook({id}, {workflow_name}, {args}, {task_queue}, {signal_id})",
        _hook,
    ),
}
_START = _Action(
    "Start a workflow",
    ("workflow_name", "args", "task_queue", "workflow_id", "entity"),
    "select {app}.start_workflow({workflow_name}, {args}, {task_queue}, {workflow_id}, {entity})",
    _start,
)
_SCHEDULE_ACTIONS = {
    "pause": _Action(
        "Pause the schedule",
        (),
        "select {app}.pause_schedule({id})",
        _schedule_call("pause"),
        "/queues",
    ),
    "resume": _Action(
        "Resume the schedule",
        (),
        "select {app}.resume_schedule({id})",
        _schedule_call("resume"),
        "/queues",
    ),
    "trigger": _Action(
        "Start a run of the schedule now",
        (),
        "select {app}.trigger_schedule({id})",
        _schedule_call("trigger"),
    ),
}
_QUEUE_ACTIONS = {
    "limits": _Action(
        "Set the queue's limits",
        ("max_running", "rate", "per", "key_max_running", "key_rate", "key_per"),
        "select {app}.set_queue_limits({id}, max_running => {max_running}, rate => {rate},"
        " per => {per}, key_max_running => {key_max_running}, key_rate => {key_rate},"
        " key_per => {key_per})",
        _limits,
        "/queues/{}",
        "set_queue_limits",
        _limit_values,
    ),
    "clear": _Action(
        "Clear the queue's limits",
        (),
        "select {app}.set_queue_limits({id})",
        _clear,
        "/queues/{}",
        "set_queue_limits",
    ),
}


def _literal(name: str, value: str | None) -> str:
    if name == "descend":
        return "true" if value == "true" else "false"
    if value is None or value == "":
        return "null"
    if name in _NUMBERS:
        return value  # checked by _limit_values: digits only
    return "'" + value.replace("'", "''") + "'"


async def workflow_action(request: Request) -> Response:
    name = request.path_params["action"]
    return await _act(request, _WORKFLOW_ACTIONS.get(name), name, request.path_params["id"])


async def start_action(request: Request) -> Response:
    return await _act(request, _START, "start", "")


async def schedule_action(request: Request) -> Response:
    name = request.path_params["action"]
    return await _act(request, _SCHEDULE_ACTIONS.get(name), name, request.path_params["id"])


async def task_action(request: Request) -> Response:
    name = request.path_params["action"]
    return await _act(request, _TASK_ACTIONS.get(name), name, request.path_params["id"])


async def queue_action(request: Request) -> Response:
    name = request.path_params["action"]
    return await _act(request, _QUEUE_ACTIONS.get(name), name, request.path_params["queue"])


async def _act(request: Request, act: _Action | None, name: str, target: str) -> Response:
    """POST an action on `target` (a workflow, a schedule, a queue; "" for a start): refused
    when read-only or without the CSRF token; without `confirm` it shows what will run; with
    it, it runs and redirects."""
    ui = _ui(request)
    if not ui.allow_actions:
        return _error(
            request,
            403,
            "Read-only",
            "This dashboard is read-only: start it with --allow-actions to change workflows.",
        )
    form = await request.form()
    cookie = request.cookies.get(_CSRF_COOKIE, "")
    sent = str(form.get("csrf", ""))
    if not cookie or not hmac.compare_digest(cookie, sent) or not _same_origin(request):
        return _error(
            request,
            403,
            "Refused",
            "The form's CSRF token is missing or wrong: reload the page and try again.",
        )
    if act is None:
        raise HTTPException(404, f"No action {name!r}.")
    values = {f: _text(form, f) for f in act.fields}
    if act.prepare is not None:
        try:
            values = act.prepare(values, form)
        except errors.InvalidArgument as invalid:
            return _error(request, 400, act.title, str(invalid))
    statement = act.sql.format(
        app=ui.app_id,
        id=_literal("id", target),
        **{f: _literal(f, v) for f, v in values.items()},
    )
    root = request.scope.get("root_path", "")
    context: dict[str, Any] = {
        "act": act,
        "target": target,
        "values": values,
        "statement": statement,
        "back": act.page.format(_quote(target)) if target else "/workflows",
    }
    if form.get("confirm") != "yes":
        return _render(request, "confirm.html", problem=None, **context)
    try:
        shown = await act.run(ui, target, values)
    except (errors.HotMeshError, psycopg.Error) as error:
        if isinstance(error, _DB_DOWN):
            raise
        sqlstate = getattr(error, "sqlstate", None) or ""
        problem = f"The database refused it ({sqlstate}): {str(error).splitlines()[0]}"
        return _render(request, "confirm.html", 409, problem=problem, **context)
    return RedirectResponse(f"{root}{act.page.format(_quote(shown))}?done={name}", status_code=303)


def _quote(workflow_id: str) -> str:
    return quote(workflow_id, safe="")


def _same_origin(request: Request) -> bool:
    """A browser names the page a form came from; it must be this dashboard."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True  # not a browser (curl): the CSRF token alone decides
    return urlsplit(origin).netloc == request.headers.get("host")


# -- live ----------------------------------------------------------------------------------------


async def events(request: Request) -> Response:
    """Server-Sent Events: `change` when the app's channel carried a notification (coalesced),
    `db` with `up` or `down` when the dashboard's LISTEN connection is lost or back."""
    live = _ui(request).live

    async def stream() -> AsyncIterator[str]:
        with live.subscribe() as queue:
            yield f"event: db\ndata: {'up' if live.up else 'down'}\n\n"
            while True:
                try:
                    kind, data = await asyncio.wait_for(queue.get(), 15)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: {kind}\ndata: {data}\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


# -- errors, access ------------------------------------------------------------------------------


async def _not_found(request: Request, exc: Exception) -> Response:
    detail = exc.detail if isinstance(exc, HTTPException) else "Not found."
    return _error(request, 404, "Not found", str(detail))


async def _db_down(request: Request, exc: Exception) -> Response:
    return _render(
        request,
        "down.html",
        503,
        message=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
    )


async def _refused(request: Request, exc: Exception) -> Response:
    return _error(request, 500, "Database error", str(exc).splitlines()[0])


def loopback(host: str | None) -> bool:
    try:
        return host == "localhost" or (host is not None and ipaddress.ip_address(host).is_loopback)
    except ValueError:
        return False


class _Access:
    """Anyone on this machine may look; anyone else needs the token, as a bearer token or as
    the password of HTTP basic auth (any user name). Without a token only loopback clients
    are served."""

    def __init__(self, app: ASGIApp, ui: _Ui) -> None:
        self.app = app
        self.ui = ui
        self.token = ui.token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._allowed(Request(scope)):
            await self.ui.start()
            await self.app(scope, receive, send)
            return
        if self.token is None:
            response: Response = Response(
                "hotmesh ui: only this machine may connect (start "
                "it with a token to serve others)\n",
                403,
            )
        else:
            response = Response(
                "hotmesh ui: the token is required\n",
                401,
                headers={"WWW-Authenticate": 'Basic realm="hotmesh"'},
            )
        await response(scope, receive, send)

    def _allowed(self, request: Request) -> bool:
        if self.token is None:
            return loopback(request.client.host if request.client else None)
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            with contextlib.suppress(ValueError):
                credentials = base64.b64decode(credentials).decode().partition(":")[2]
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.encode(), self.token.encode())


def create_app(
    app_id: str,
    dsn: str = "",
    *,
    allow_actions: bool = False,
    token: str | None = None,
    list_window: int = 10_000,
) -> ASGIApp:
    """The dashboard of app `app_id` as an ASGI application: mount it in your own Starlette or
    FastAPI application, or serve it with any ASGI server (`hotmesh ui` uses uvicorn).

    `dsn` is the connection string (default: DATABASE_URL, else the libpq variables); its login
    must be a member of `<app>_app`. Read-only unless `allow_actions`. Without a `token` only
    clients on this machine are served; with one, every request must carry it. A page of the
    workflow list searches at most `list_window` workflows (docs/ui.md)."""
    ui = _Ui(app_id, dsn, allow_actions, token, list_window)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await ui.start()
        try:
            yield
        finally:
            await ui.stop()

    static = resources.files("hotmesh.ui") / "static"
    routes = [
        Route("/", overview),
        Route("/workflows", workflows),
        Route("/workflows/{id:path}/{action:str}", workflow_action, methods=["POST"]),
        Route("/workflows/{id:path}", workflow),
        Route("/queues", queues),
        Route("/queues/{queue:path}/{action:str}", queue_action, methods=["POST"]),
        Route("/queues/{queue:path}", queue),
        Route("/schedules/{id:path}/{action:str}", schedule_action, methods=["POST"]),
        Route("/inbox", inbox),
        Route("/inbox/{id:str}", task),
        Route("/inbox/{id:str}/{action:str}", task_action, methods=["POST"]),
        Route("/start", start_form),
        Route("/start", start_action, methods=["POST"]),
        Route("/events", events),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        404: _not_found,
        **{cls: _db_down for cls in _DB_DOWN},
        psycopg.Error: _refused,
    }
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.ui = ui
    return _Access(app, ui)
