"""Hostile input: every public SQL function and the Python entry points, fed injection
strings, NUL bytes, oversized and deeply nested values, odd unicode, negative and huge numbers.
Every call either succeeds (storing exactly what it was given) or fails with a clear SQLSTATE /
hotmesh exception, changes nothing when it fails, and a running worker keeps serving.

The limits these inputs run into are documented in docs/errors.md (Limits) and pinned by
tests/sql/80_hostile.sql: JSON values 1 MiB, 100 levels, numbers within a double's range;
names 255 characters; entity paths 100 segments / 10000 characters; leases at most 1 day."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg import sql

from helpers import fast_and_slow
from hotmesh import MemFlow, errors, workflow

pytestmark = pytest.mark.timeout(180)

# Errors the engine documents, plus the ones Postgres raises on an argument before any function
# runs: \u0000 in JSON (22P05), a number that does not fit the parameter's type (22003), JSON
# text too deeply nested for Postgres's own parser (54001). "client" is psycopg refusing a NUL
# byte in a text argument before sending anything.
DOCUMENTED = {f"HM00{i}" for i in range(1, 9)} | {"22023", "22P02"}
BEFORE_THE_CALL = {"22P05", "22003", "54001", "client"}
# The worker's protocol (functions taking a lease token): a step's number, kind and name are
# NOT NULL columns, and a null one is refused by the constraint, which names the column.
WORKER_PROTOCOL = {"23502"}

INJECTIONS = [
    "'; drop table jobs; --",
    "' or '1'='1",
    '"; drop schema public cascade; --',
    "$$; select pg_sleep(30); $$",
    "$x$ select 1 $x$",
    "robert'); delete from steps; --",
    "%s %I %L %1$s %%",
    "{} {0} {name}",
    "\\",
    "\\\\'",
    "\\u0000",
    "a.b.c",
    '["a", "b"]',
    "[",
    "]]",
    "$gt",
    "*",
    "%",
    "_",
    "\n\r\t",
    "null",
    "1e400",
    "-1",
    "<script>alert(1)</script>",
    "${jndi:ldap://x/a}",
    "pg_temp.jobs",
    "public.jobs",
    "q:other",
    "d:wf",
    "e:{}",
]
UNICODE = [
    "é",
    "日本語",
    "🙂👍🏽",
    "\u202eevil",
    "\ufeffbom",
    "a\u0301",
    "zero\u200bwidth",
    "Ω≈ç√∫",
    "\U0001d54f" * 10,
    "\U0010ffff",
]
TEXTS = [
    *INJECTIONS,
    *UNICODE,
    "",
    " ",
    "x" * 255,
    "x" * 256,
    "x" * 10_000,
    "x" * (1 << 20),
    "a\x00b",
    None,
]


def deep(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


def deep_text(levels: int) -> str:
    return "[" * levels + "]" * levels


# JSON text, cast to jsonb by the server (None: SQL null).
JSONS = [
    None,
    "null",
    "[]",
    "{}",
    "0",
    "-1",
    "1e308",
    "-1e308",
    "1e400",
    "-1e400",
    "1e-400",
    "9223372036854775808",
    '"\U0001d54f🙂"',
    json.dumps({inj: inj for inj in INJECTIONS[:8]}),
    '{"$gt": 1, "$where": "1=1"}',
    json.dumps(deep(99)),
    json.dumps(deep(101)),
    deep_text(5_000),
    deep_text(200_000),
    json.dumps("x" * (1 << 20)),
    json.dumps(["x" * 1000] * 2000),
    '"a\\u0000b"',
    '"\\ud800"',
]
INTEGERS = [None, -1, 0, -(2**31), 2**31 - 1, 2**31, 2**63]
BIGINTS = [None, -1, 0, 2**63 - 1, -(2**63)]
NUMERICS = [None, "NaN", "Infinity", "-Infinity", -1, 0, "1e1000", "-1e1000", "1e-1000"]
INTERVALS = [None, "-1 second", "0", "1 day 1 second", "1000000 years", "-178000000 years"]
UUIDS = [None, str(uuid.uuid4()), "00000000-0000-0000-0000-000000000000"]
TEXT_ARRAYS = [None, [], [None], ["x" * 10_000], INJECTIONS[:3], ["q"] * 1000, ["a\x00b"]]
BIGINT_ARRAYS = [None, [], [None], [-1], [2**63 - 1], [1, 2, 3]]
UUID_ARRAYS = [None, [], [None], [str(uuid.uuid4())] * 5]
BOOLEANS = [None, True, False]
XIDS = [None, "0", "1", "4294967295"]  # any transaction id, current or not
TIMESTAMPS = [None, "-infinity", "infinity", "4713-01-01 BC", "294276-12-31", "2020-01-01"]

HOSTILE = {
    "text": TEXTS,
    "jsonb": JSONS,
    "integer": INTEGERS,
    "bigint": BIGINTS,
    "numeric": NUMERICS,
    "interval": INTERVALS,
    "uuid": UUIDS,
    "text[]": TEXT_ARRAYS,
    "bigint[]": BIGINT_ARRAYS,
    "uuid[]": UUID_ARRAYS,
    "boolean": BOOLEANS,
    "xid": XIDS,
    "timestamp with time zone": TIMESTAMPS,
}

# A sensible value per parameter (the fuzz varies one at a time); {task}/{token} are the held
# activation's lease, {activity}/{activity_token} the held activity's.
GOOD: dict[str, Any] = {
    "p_workflow_id": "wf",
    "p_workflow_name": "w",
    "p_args": "[1]",
    "p_task_queue": "q",
    "p_task_queues": ["q"],
    "p_task_roles": ["approver"],
    "p_entity": "w",
    "p_options": "{}",
    "p_signal_id": "go",
    "p_payload": '"hi"',
    "p_idempotency_key": None,
    "p_path": "a.b",
    "p_value": "1",
    "p_where": '{"n": 1}',
    "p_op": "get",
    "p_limit": 10,
    "p_offset": 0,
    "p_index": 0,
    "p_by": 1,
    "p_kind": "activity",
    "p_name": "act",
    "p_seq": 10,
    "p_input": "[]",
    "p_output": "1",
    "p_error": '{"message": "boom"}',
    "p_retry_policy": None,
    "p_result": '"done"',
    "p_seconds": 5,
    "p_timeout": None,
    "p_reason": "because",
    "p_descend": True,
    "p_ignore_finished": False,
    "p_await": False,
    "p_events": '{"progress": 1}',
    "p_worker_id": "fuzz",
    "p_max_tasks": 1,
    "p_lease": "30 seconds",
    "p_prefetch": 0,
    "p_prefetch_lease": "5 seconds",
    "p_traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "p_policy": "{}",
    "p_attempt": 2,
    "p_key": "default_retention",
    "p_older_than": "0",
    "p_batch": 10,
    "p_dry_run": True,
    "p_items": None,  # set per function below
    "p_group": "worker",
    "p_role": "nobody",
    "p_job_id": "wf",
    "p_waits": '[{"kind": "signal", "name": "go"}]',
    "p_xmax": "1",
    "p_schedule_id": "sch",
    "p_spec": "@every 1m",
    "p_expr": "*/5 1-3 * * mon,fri",
    "p_tz": "Europe/Paris",
    "p_after": "2030-01-01 00:00+00",
    "p_patch_id": "fraud-check",
    "p_build_id": "b1",
    "p_deprecated": False,
    "p_workflow_names": ["w"],
    "p_statuses": ["running", "waiting"],
    "p_since": "2020-01-01",
    "p_run": 1,
    "p_concurrency_key": None,
    # human tasks (sql/49_human_tasks.sql); list_human_tasks' filters have plain names
    "p_id": 1,
    "p_who": "ann",
    "p_answer": '{"approved": true}',
    "p_text": "a note",
    "p_assignee": "ann",
    "p_request": '{"role": "approver", "title": "Approve"}',
    "role": "approver",
    "assignee": None,
    "status": None,
    "type": None,
    "metadata": '{"region": "eu"}',
    "max_rows": 10,
    "after": None,
    # set_queue_limits: plain names, so that a call reads `max_running => 4`
    "max_running": 4,
    "rate": 60,
    "per": "1 minute",
    "key_max_running": None,
    "key_rate": None,
    "key_per": None,
}


@pytest.fixture
def state(db: Any) -> dict[str, Any]:
    """A running workflow `wf` (entity, a wait for 'go', a hook, human task 1) whose activation
    is held, an activity task held on `acts`, a finished workflow, a kept signal and a schedule
    `sch`."""
    db.one("select start_workflow('w', '[1]', 'q', 'wf')")
    task, token = db.one("select row(task_id, lease_token) from claim_tasks(array['q'], 'W', 1)")
    db.one("select entity_step(%s, %s, 1, 'set', null, %s)", task, token, '{"a": {"b": [1, 2]}}')
    db.one("select wait_signal(%s, %s, 2, 'go', null)", task, token)
    db.one("select schedule_activity(%s, %s, 3, 'act', '[]', 'acts')", task, token)
    db.one("select hook('wf', 'h', '[]', 'hq', 'hook-done')")
    db.one(
        "select ask_human(%s, %s, 4, 'ask', %s)",
        task,
        token,
        '{"role": "approver", "title": "Approve", "metadata": {"region": "eu"}}',
    )  # human task 1
    act = db.one("select row(task_id, lease_token) from claim_tasks(array['acts'], 'A', 1)")
    db.one("select start_workflow('w', '[]', 'q2', 'done')")
    done = db.one("select row(task_id, lease_token) from claim_tasks(array['q2'], 'W', 1)")
    db.one("select complete_task(%s, %s, '1')", *done)
    db.one("select signal('kept', '1')")
    db.one("select create_schedule('sch', '@every 1m', 'w', '[]', 'q')")
    return {"task": int(task), "token": str(token), "activity": int(act[0]), "act": str(act[1])}


def signature(db: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """Every public function of the app: its name and (parameter, type) list."""
    rows = db.rows(
        "select p.proname, array_agg(a.name order by a.n),"
        " array_agg(format_type(a.t, null) order by a.n)"
        " from pg_proc as p"
        " cross join lateral unnest(p.proargnames[1:p.pronargs], p.proargtypes::oid[])"
        "   with ordinality as a (name, t, n)"
        " where p.pronamespace = current_schema()::regnamespace and p.prokind = 'f'"
        "   and p.proname not like '\\_%%'"
        " group by p.oid, p.proname order by p.proname"
    )
    return [(name, list(zip(names, types, strict=True))) for name, names, types in rows]


def outcome(conn: psycopg.Connection[Any], query: Any, params: list[Any]) -> str:
    """'ok', the SQLSTATE, or 'client' (refused by psycopg before sending); the call runs in a
    savepoint that is always rolled back, so every call sees the same state."""
    try:
        with conn.transaction():
            conn.execute(query, params).fetchall()
            raise psycopg.Rollback()
    except psycopg.DataError as error:
        if error.sqlstate is None:
            return "client"
        return str(error.sqlstate)
    except psycopg.Error as error:
        return str(error.sqlstate)
    return "ok"


def test_every_public_sql_function_refuses_hostile_arguments_clearly(
    db: Any, state: dict[str, Any]
) -> None:
    good = {
        **GOOD,
        "p_task_id": state["task"],
        "p_token": state["token"],
        "p_task_ids": [state["task"], state["activity"]],
        "p_tokens": [state["token"], state["act"]],
        "p_db_role": f"{db.app}_reviewer",  # set_reviewer_roles: a role that exists
    }
    per_function = {
        "complete_tasks": {
            "p_items": json.dumps([{"task_id": state["activity"], "token": state["act"]}])
        },
        "record_steps": {
            "p_items": json.dumps(
                [
                    {
                        "task_id": state["task"],
                        "token": state["token"],
                        "seq": 11,
                        "kind": "activity",
                        "name": "a",
                        "output": 1,
                    }
                ]
            )
        },
        "complete_task": {"p_task_id": state["activity"], "p_token": state["act"]},
        "fail_task": {"p_task_id": state["activity"], "p_token": state["act"]},
        "entity_find_by_condition": {"p_op": "="},
        "entity_step": {"p_op": "set"},
        "search_step": {"p_op": "set", "p_args": '{"k": 1}'},
        "set_setting": {"p_value": "60"},
        "retry_workflow": {"p_workflow_id": "done"},
    }
    functions = signature(db)
    assert len(functions) >= 45
    seen: dict[str, int] = {}
    unclear: list[str] = []
    before = schema_objects(db)
    db.conn.execute("begin")
    try:
        for name, params in functions:
            defaults = {**good, **per_function.get(name, {})}
            missing = [p for p, _ in params if p not in defaults]
            assert missing == [], f"{name}: no sensible value for {missing} (add it to GOOD)"
            casts = ", ".join(f"%s::{t}" for _, t in params)
            # count(*): what the functions return is not decoded here (a SQL caller's concern)
            query = sql.SQL(f"select count(*) from {{}}({casts})").format(  # noqa: S608
                sql.Identifier(name)
            )
            assert outcome(db.conn, query, [defaults[p] for p, _ in params]) in (
                {"ok"} | DOCUMENTED
            ), f"{name} with sensible arguments"
            for i, (param, kind) in enumerate(params):
                for value in HOSTILE[kind]:
                    args = [defaults[p] for p, _ in params]
                    args[i] = value
                    result = outcome(db.conn, query, args)
                    seen[result] = seen.get(result, 0) + 1
                    allowed = {"ok"} | DOCUMENTED | BEFORE_THE_CALL
                    if any(p == "p_token" for p, _ in params):
                        allowed |= WORKER_PROTOCOL
                    if result not in allowed:
                        unclear.append(f"{name}({param}={value!r:.60}): {result}")
    finally:
        db.conn.execute("rollback")
    assert unclear == [], "\n".join(unclear)
    assert schema_objects(db) == before  # no injected DDL survived anywhere
    assert seen.get("ok", 0) > 0 and seen.get("22023", 0) > 0
    print(f"hostile SQL calls: {sum(seen.values())}, outcomes: {sorted(seen.items())}")


def schema_objects(db: Any) -> list[tuple[Any, ...]]:
    return db.rows(
        "select n.nspname, count(c.oid) from pg_namespace as n"
        " left join pg_class as c on c.relnamespace = n.oid"
        " where n.nspname in (current_schema(), 'public') group by n.nspname order by 1"
    )


# ------------------------------------------------------------------------ data stays data


def test_injection_and_unicode_strings_are_stored_verbatim(db: Any) -> None:
    before = schema_objects(db)
    for s in [*INJECTIONS, *UNICODE]:
        assert db.one("select start_workflow(%s, %s, %s, %s, %s)", s, json.dumps([s]), s, s, s) == s
        row = db.rows(
            "select id, workflow_name, task_queue, entity, args from jobs where id = %s", s
        )
        assert row == [(s, s, s, s, [s])]
        assert db.one("select workflow_status(%s)", s) == "pending"
        path = json.dumps([s])
        assert db.one("select entity_set(%s, %s, %s)", s, json.dumps(s), path) == {s: s}
        assert db.one("select entity_get(%s, %s)", s, path) == s
        found = db.rows("select id from entity_find(%s, %s)", s, json.dumps({path: s}))
        assert found == [(s,)]
        assert db.one("select signal(%s, %s, %s, %s)", s, json.dumps(s), s, s)["status"] == "kept"
        assert db.one("select payload from signals where signal_id = %s", s) == s
        assert db.one("select hook(%s, %s, %s, %s, %s)", s, s, json.dumps([s]), s, s) == "h1"
        assert db.one("select cancel_workflow(%s, %s)", s, s) == [s]
        assert db.one("select error ->> 'message' from jobs where id = %s", s) == s
    assert schema_objects(db) == before
    assert db.one("select count(*) from jobs") == len(INJECTIONS) + len(UNICODE)


# ------------------------------------------------------------------------ hypothesis-made text

hypothesis_settings = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
names = st.text(max_size=300) | st.text(alphabet=st.characters(codec="utf-8"), min_size=250)


def sql_outcome(db: Any, query: str, *params: Any) -> tuple[str, Any]:
    try:
        with db.conn.transaction():
            row = db.conn.execute(query, params).fetchone()
    except psycopg.DataError as error:
        return ("client" if error.sqlstate is None else str(error.sqlstate)), None
    except psycopg.Error as error:
        return str(error.sqlstate), None
    return "ok", None if row is None else row[0]


def _any_text_as_a_workflow_id_name_or_queue(db: Any, text: str) -> None:
    wid = f"{uuid.uuid4().hex[:6]}{text}"
    result, value = sql_outcome(db, "select start_workflow(%s, '[]', %s, %s)", text, text, wid)
    if "\x00" in text:
        assert result == "client"
    elif text == "" or len(text) > 255 or len(wid) > 255:
        event("refused: empty or long")
        assert result == "22023"
    else:
        event("stored")
        assert (result, value) == ("ok", wid)
        row = db.one("select row(workflow_name, task_queue) from jobs where id = %s", wid)
        assert row == (text, text)


(
    test_any_text_as_a_workflow_id_name_or_queue,
    test_any_text_as_a_workflow_id_name_or_queue_thoroughly,
) = fast_and_slow(_any_text_as_a_workflow_id_name_or_queue, 40, 150, text=names)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**400), 10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values: st.SearchStrategy[Any] = st.deferred(
    lambda: (
        json_scalars
        | st.lists(json_values, max_size=3)
        | st.dictionaries(st.text(max_size=5), json_values, max_size=3)
    )
)


@hypothesis_settings
@given(
    key=st.text(max_size=50),
    value=json_values,
)
def test_any_key_and_value_round_trip_through_the_entity(db: Any, key: str, value: Any) -> None:
    if not db.one("select exists (select from jobs where id = 'e')"):
        db.one("select start_workflow('w', '[]', 'q', 'e')")
    path = json.dumps([key])
    text = json.dumps(value)
    result, _ = sql_outcome(db, "select entity_set('e', %s, %s)", text, path)
    if "\0" in key or has_nul(value):
        event("NUL refused")
        assert result == "22P05" if "\0" not in path else result in {"client", "22P05"}
        return
    if any(abs(v) > 1.7976931348623157e308 for v in numbers(value)):
        event("huge number refused")
        assert result == "22023"
        return
    event("stored")
    assert result == "ok"
    stored = db.one("select entity_get('e', %s)::text", path)
    # JSON numbers are decimals: 3.669814992434277e+16 reads back as 36698149924342770
    assert json.loads(stored, parse_float=Decimal) == json.loads(text, parse_float=Decimal)
    if not (isinstance(value, dict) and any(k.startswith("$") for k in value)):  # operators
        found = db.rows("select id from entity_find('w', %s)", json.dumps({path: value}))
        assert found == [("e",)]


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, list):
        return any(has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    return False


def numbers(value: Any) -> Iterator[float]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int | float):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)
    else:
        for item in value.values():
            yield from numbers(item)


@hypothesis_settings
@given(path=st.text(max_size=60), op=st.text(max_size=8), limit=st.integers(-(2**33), 2**33))
def test_any_find_condition_is_data(db: Any, path: str, op: str, limit: int) -> None:
    result, _ = sql_outcome(
        db,
        "select count(*) from entity_find_by_condition('w', %s, %s, '1', %s::bigint::integer)",
        path,
        op,
        limit,
    )
    event(result)
    assert result in {"ok", "client"} | DOCUMENTED | {"22003"}
    if not -(2**31) <= limit < 2**31:
        assert result in {"22003", "client"}


# ------------------------------------------------------------------------ the Python API


def tables(db: Any) -> Any:
    """A fingerprint of every row version: an insert, update or delete that committed changes
    a row's (ctid, xmin), so this sees any change without reading the (megabyte) values the
    calls store."""
    return db.one(
        "select md5(string_agg(t, '|' order by t)) from ("
        " select 'j' || ctid::text || xmin::text as t from jobs"
        " union all select 's' || ctid::text || xmin::text from steps"
        " union all select 't' || ctid::text || xmin::text from tasks"
        " union all select 'h' || ctid::text || xmin::text from threads"
        " union all select 'g' || ctid::text || xmin::text from signals"
        " union all select 'k' || ctid::text || xmin::text from signal_keys) as all_rows"
    )


VALUES: list[Any] = [
    None,
    "'; drop table jobs; --",
    "🙂\u202e",
    "a\x00b",
    "\ud800",
    float("nan"),
    10**400,
    10**5000,
    -(2**63),
    deep(99),
    deep(150),
    deep(5000),
    "x" * (1 << 20),
    {"$gt": 1},
    object(),
    b"bytes",
]
STRINGS: list[Any] = [
    "'; drop table jobs; --",
    "$$",
    "",
    "x" * 256,
    "x" * 10_000,
    "a\x00b",
    "\ud800",
    "🙂",
    None,
    42,
]


def short(value: Any) -> str:
    try:
        return repr(value)[:60]
    except ValueError:  # an int too long to print
        return f"<{type(value).__name__}>"


async def test_python_entry_points_raise_hotmesh_errors_and_change_nothing(
    mf: MemFlow, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Each call either works or raises a hotmesh exception (never a raw driver error, a
    RecursionError or a UnicodeEncodeError); one that raises changes no row. First with no
    worker running (so a row that changes can only be the call's doing), then a worker takes on
    the backlog this left (hostile args, unknown workflow names) and the same calls again while
    it serves; it finishes what it can and keeps serving."""

    async def echo(value: Any) -> Any:
        return value

    async def waiter() -> Any:
        return await workflow.wait_for("go")

    async def bump() -> int:
        entity = await workflow.entity()
        return int(await entity.increment("hooked", 1))

    waiting = await mf.workflow.start(workflow_name="waiter", task_queue="q", workflow_id="wait")
    await mf.workflow.start(workflow_name="echo", args=[1], task_queue="q", workflow_id="wf")
    entity = mf.entity("wf")
    outcomes: dict[str, int] = {}
    checking = True  # compare the tables around a failing call (only while no worker runs)

    async def attempt(label: str, call: Callable[[Any], Awaitable[Any]], arg: Any) -> None:
        before = tables(db)
        try:
            await call(arg)
        except (errors.HotMeshError, TimeoutError) as error:
            outcomes[type(error).__name__] = outcomes.get(type(error).__name__, 0) + 1
            assert not checking or tables(db) == before, f"{label}: failed but changed rows"
        except Exception as error:  # pragma: no cover - what the test is here to catch
            pytest.fail(f"{label} {short(arg)}: {type(error).__name__}: {error}")
        else:
            outcomes["ok"] = outcomes.get("ok", 0) + 1

    wf = mf.workflow
    with_string: list[tuple[str, Callable[[Any], Awaitable[Any]]]] = [
        ("start name", lambda x: wf.start(workflow_name=x, task_queue="q")),
        ("start queue", lambda x: wf.start(workflow_name="echo", task_queue=x, args=[1])),
        (
            "start id",
            lambda x: wf.start(workflow_name="echo", task_queue="q", workflow_id=x, args=[x]),
        ),
        (
            "start entity",
            lambda x: wf.start(workflow_name="echo", task_queue="q", entity=x, args=[x]),
        ),
        ("status", lambda x: wf.get_handle(x).status()),
        ("describe", lambda x: wf.get_handle(x).describe()),
        ("result", lambda x: wf.get_handle(x).result(timeout=0.05)),
        ("interrupt", lambda x: wf.get_handle(x).interrupt(x)),
        ("signal id", lambda x: wf.signal(x, 1)),
        ("signal key", lambda x: wf.signal("s", 1, idempotency_key=x)),
        ("signal target", lambda x: wf.signal("s", 1, workflow_id=x)),
        ("hook name", lambda x: wf.hook(workflow_id="wait", workflow_name=x, task_queue="hooks")),
        ("hook target", lambda x: wf.hook(workflow_id=x, workflow_name="bump")),
        ("entity id", lambda x: mf.entity(x).get()),
        ("entity path", lambda x: entity.get(x)),
        ("entity set path", lambda x: entity.set(1, x)),
        ("entity key", lambda x: entity.increment("n", 1, idempotency_key=x)),
        ("find entity", lambda x: mf.entity.find(x, {"n": 1})),
        ("find path", lambda x: mf.entity.find("echo", {x: 1})),
        ("find op", lambda x: mf.entity.find_by_condition("echo", "n", x, 1)),
        ("find by id", lambda x: mf.entity.find_by_id(x, x)),
        ("history", lambda x: mf.entity.history(x)),
    ]
    with_value: list[tuple[str, Callable[[Any], Awaitable[Any]]]] = [
        ("start args", lambda x: wf.start(workflow_name="echo", task_queue="q", args=[x])),
        ("signal data", lambda x: wf.signal("nobody", x)),
        (
            "hook args",
            lambda x: wf.hook(workflow_id="wait", workflow_name="bump", args=[x], task_queue="h"),
        ),
        ("entity set", lambda x: entity.set(x, "v")),
        ("entity merge", lambda x: entity.merge({"m": x})),
        ("entity append", lambda x: entity.append("list", x)),
        ("entity increment", lambda x: entity.increment("n", x)),
        ("entity remove", lambda x: entity.remove("list", x)),
        ("find value", lambda x: mf.entity.find("echo", {"n": x})),
        ("find value op", lambda x: mf.entity.find_by_condition("echo", "n", ">", x)),
        (
            "retry policy",
            lambda x: wf.start(
                workflow_name="echo", task_queue="q", args=[1], retry_policy={"maximum_attempts": x}
            ),
        ),
        (
            "priority",
            lambda x: wf.start(workflow_name="echo", task_queue="q", args=[1], priority=x),
        ),
        ("expire", lambda x: wf.start(workflow_name="echo", task_queue="q", args=[1], expire=x)),
    ]

    async def barrage() -> None:
        for h in STRINGS:
            for label, call in with_string:
                await attempt(label, call, h)
            if not (isinstance(h, str) and 0 < len(h) <= 255 and "\0" not in h):
                await attempt("worker queue", lambda x: mf.worker.create(task_queue=x), h)
        for v in VALUES:
            for label, call in with_value:
                await attempt(label, call, v)
        for app_id in ["'; drop", "A", "1abc", "x" * 64, "", "app-1", "é", None, "a\0"]:
            await attempt("init", lambda x: MemFlow.init(app_id=x, dsn=mf.dsn), app_id)

    with caplog.at_level(logging.ERROR, logger="hotmesh"):
        await barrage()
        # The backlog: every echo started with hostile-but-storable args must come back as is.
        echoes = db.rows(
            "select id, args -> 0 from jobs"
            " where workflow_name = 'echo' and task_queue = 'q' and jsonb_array_length(args) = 1"
            " and status = 'pending'"  # not one the barrage cancelled
        )
        assert len(echoes) > 10
        await mf.worker.create(task_queue="q", workflow=[echo, waiter, bump])
        for wid, arg in echoes:
            assert await mf.workflow.get_handle(wid).result(timeout=30) == arg
        checking = False
        await barrage()

        # The worker kept serving: a hostile but valid payload goes through intact.
        payload = {"'; drop table jobs; --": ["🙂\u202e", 1.5, 10**300, -(2**63)], "deep": deep(90)}
        await mf.workflow.signal("go", payload, workflow_id="wait")
        assert await waiting.result(timeout=30) == payload
        handle = await mf.workflow.start(workflow_name="echo", args=["still here"], task_queue="q")
        assert await handle.result(timeout=30) == "still here"
        # ... and a queue named like an attack is just a name.
        odd = "'; drop table tasks; -- 🙂"
        await mf.worker.create(task_queue=odd, workflow=echo)
        handle = await mf.workflow.start(workflow_name="echo", args=[odd], task_queue=odd)
        assert await handle.result(timeout=30) == odd
    crashes = [r.getMessage() for r in caplog.records if "crash" in r.getMessage()]
    assert crashes == []
    assert outcomes.get("InvalidArgument", 0) > 0 and outcomes.get("ok", 0) > 0
    print(f"hostile Python calls: {sum(outcomes.values())}, outcomes: {sorted(outcomes.items())}")
