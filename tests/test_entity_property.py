"""Random sequences of entity operations, run through the SQL functions and through a small
Python model of the documented semantics: after every operation the documents, the results
and the errors (SQLSTATE) must agree, and a failed operation must change nothing. At the end
the history's last document is the entity."""

from __future__ import annotations

import copy
import itertools
import json
import re
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import event
from hypothesis import strategies as st

from helpers import fast_and_slow

pytestmark = pytest.mark.timeout(120)

MISSING = object()  # SQL null: a get of a path that does not exist


class ModelError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def walk(doc: Any, path: list[str]) -> tuple[int, Any, str | None]:
    """How far the path exists: (depth, node there, why the next segment does not)."""
    node = doc
    for depth, segment in enumerate(path):
        if isinstance(node, dict):
            if segment not in node:
                return depth, node, "missing"
            node = node[segment]
        elif isinstance(node, list):
            if not re.fullmatch("[0-9]+", segment):
                return depth, node, "index"
            if int(segment) >= len(node):
                return depth, node, "missing"
            node = node[int(segment)]
        else:
            return depth, node, "scalar"
    return len(path), node, None


def child(node: Any, segment: str) -> Any:
    return node[int(segment)] if isinstance(node, list) else node[segment]


def assign(doc: Any, path: list[str], value: Any) -> None:
    node = doc
    for segment in path[:-1]:
        node = child(node, segment)
    if isinstance(node, list):
        node[int(path[-1])] = value
    else:
        node[path[-1]] = value


def put(doc: Any, path: list[str], value: Any) -> Any:
    depth, node, blocker = walk(doc, path)
    doc = copy.deepcopy(doc)
    if blocker is None:
        assign(doc, path, value)
        return doc
    if blocker != "missing" or not isinstance(node, dict):
        raise ModelError("HM008" if blocker == "scalar" else "HM007")
    for segment in reversed(path[depth + 1 :]):
        value = {segment: value}
    assign(doc, path[: depth + 1], value)
    return doc


def merge(target: Any, patch: Any) -> Any:
    if not (isinstance(target, dict) and isinstance(patch, dict)):
        return patch
    merged = dict(target)
    for key, value in patch.items():
        merged[key] = merge(target.get(key, MISSING), value) if key in target else value
    return merged


def model(doc: dict[str, Any], op: str, path: list[str] | None, value: Any) -> tuple[Any, Any]:
    """(new document, result) as docs/entity.md documents them, or ModelError."""
    if path is None and op not in ("set", "merge", "get"):
        raise ModelError("HM007")
    depth, node, _ = walk(doc, path or [])
    found = depth == len(path or [])
    if op == "get":
        return doc, (node if found else MISSING)
    if op == "set":
        if path is not None:
            new = put(doc, path, value)
        elif isinstance(value, dict):
            new = value
        else:
            raise ModelError("HM008")
        return new, new
    if op == "merge":
        if not isinstance(value, dict):
            raise ModelError("HM008")
        new = merge(doc, value)
        return new, new
    assert path is not None
    if op == "delete":
        if not found:
            raise ModelError("HM007")
        new = copy.deepcopy(doc)
        parent = new
        for segment in path[:-1]:
            parent = child(parent, segment)
        del parent[int(path[-1]) if isinstance(parent, list) else path[-1]]
        return new, new
    if op in ("append", "prepend"):
        if not found:
            result = [value]
        elif not isinstance(node, list):
            raise ModelError("HM008")
        else:
            result = [*node, value] if op == "append" else [value, *node]
        return put(doc, path, result), result
    if op == "remove":
        if not found:
            raise ModelError("HM007")
        if not isinstance(node, list):
            raise ModelError("HM008")
        if not -len(node) <= value < len(node):
            raise ModelError("HM007")
        result = [v for i, v in enumerate(node) if i != value % len(node)]
        return put(doc, path, result), result
    if op == "increment":
        if not found:
            result = value
        elif is_number(node):
            result = Decimal(str(node)) + Decimal(str(value))
        else:
            raise ModelError("HM008")
        return put(doc, path, result), result
    if op == "toggle":
        if not found:
            result = True
        elif isinstance(node, bool):
            result = not node
        else:
            raise ModelError("HM008")
        return put(doc, path, result), result
    assert op == "set_if_not_exists"
    if found:
        return doc, node
    return put(doc, path, value), value


def canon(value: Any) -> Any:
    """A comparable form that keeps JSON types apart (True is not 1) and numbers exact."""
    if value is MISSING:
        return ("missing",)
    if isinstance(value, bool):
        return ("bool", value)
    if is_number(value):
        return ("number", Decimal(str(value)).normalize())
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null",)
    if isinstance(value, list):
        return ("array", tuple(canon(v) for v in value))
    return ("object", tuple(sorted((k, canon(v)) for k, v in value.items())))


def loads(text: str | None) -> Any:
    return MISSING if text is None else json.loads(text, parse_float=Decimal)


def dumps(value: Any) -> str:
    return json.dumps(value, default=lambda d: float(d))


# -- strategies ---------------------------------------------------------------------------------

KEYS = ["a", "b", "c", "0", "1", "x.y"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.sampled_from([1.5, -0.25, 2.75])
    | st.sampled_from(["s", "", "0"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=6,
)
# Short paths over few keys hit existing values often; longer ones exercise the error paths.
paths = st.sampled_from([["a"], ["b"], ["x.y"], ["a", "0"], ["b", "1"]]) | st.lists(
    st.sampled_from(KEYS), min_size=1, max_size=3
)
operations = st.one_of(
    st.tuples(
        st.just("set"), st.none(), st.dictionaries(st.sampled_from(KEYS), values, max_size=3)
    ),
    st.tuples(st.just("set"), st.none(), values),
    st.tuples(st.just("set"), paths, values),
    st.tuples(st.just("merge"), st.none(), values),
    st.tuples(st.just("get"), st.none() | paths, st.none()),
    st.tuples(st.just("delete"), paths, st.none()),
    st.tuples(st.sampled_from(["append", "prepend", "set_if_not_exists"]), paths, values),
    st.tuples(st.just("remove"), paths, st.integers(-2, 2)),
    st.tuples(st.just("increment"), paths, st.sampled_from([1, -2, 0.5, 1.25])),
    st.tuples(st.just("toggle"), paths, st.none()),
)

CALLS = {
    "set": "select entity_set(%(id)s, %(value)s::jsonb, %(path)s)::text",
    "merge": "select entity_merge(%(id)s, %(value)s::jsonb)::text",
    "get": "select entity_get(%(id)s, %(path)s)::text",
    "delete": "select entity_delete(%(id)s, %(path)s)::text",
    "append": "select entity_append(%(id)s, %(path)s, %(value)s::jsonb)::text",
    "prepend": "select entity_prepend(%(id)s, %(path)s, %(value)s::jsonb)::text",
    "remove": "select entity_remove(%(id)s, %(path)s, %(value)s::integer)::text",
    "increment": "select to_jsonb(entity_increment(%(id)s, %(path)s, %(value)s::numeric))::text",
    "toggle": "select to_jsonb(entity_toggle(%(id)s, %(path)s))::text",
    "set_if_not_exists": "select entity_set_if_not_exists(%(id)s, %(path)s,"
    " %(value)s::jsonb)::text",
}

COUNTER = itertools.count()


def path_argument(path: list[str] | None, as_list: bool) -> str | None:
    """The path as a caller writes it: dotted when it can be, else (or when asked) JSON."""
    if path is None:
        return None
    if as_list or any("." in s for s in path):
        return json.dumps([int(s) if s.isdigit() and as_list else s for s in path])
    return ".".join(path)


def _sql_matches_the_model(
    db: Any, initial: dict[str, Any], steps: list[tuple[tuple[str, Any, Any], bool]]
) -> None:
    workflow_id = f"p{next(COUNTER)}"
    db.one("select start_workflow('w', '[]', 'q', %s)", workflow_id)
    doc: dict[str, Any] = {}
    changes = 0
    for (op, path, value), as_list in [(("set", None, initial), False), *steps]:
        try:
            expected: tuple[Any, Any] | ModelError = model(doc, op, path, value)
        except ModelError as error:
            expected = error
        event(f"{op}: {expected.sqlstate if isinstance(expected, ModelError) else 'ok'}")
        params = {
            "id": workflow_id,
            "path": path_argument(path, as_list),
            "value": value if op in ("remove", "increment") else dumps(value),
        }
        if op == "increment":
            params["value"] = Decimal(str(value))
        try:
            row = db.conn.execute(CALLS[op], params).fetchone()
            got: Any = loads(row[0])
        except psycopg.Error as error:
            got = ModelError(error.sqlstate or "?")
        stored = loads(db.one("select context::text from jobs where id = %s", workflow_id))
        if isinstance(expected, ModelError):
            assert isinstance(got, ModelError), (op, path, value, doc, got)
            assert got.sqlstate == expected.sqlstate, (op, path, value, doc)
            assert canon(stored) == canon(doc), "a failed operation changed the entity"
            continue
        assert not isinstance(got, ModelError), (op, path, value, doc, got.sqlstate)
        doc, result = expected
        assert canon(got) == canon(result), (op, path, value)
        assert canon(stored) == canon(doc), (op, path, value)
        changes += op != "get"
    history = db.rows(
        "select version, document::text from entity_history(%s) order by version", workflow_id
    )
    assert [v for v, _ in history] == list(range(1, changes + 1))
    if history:
        assert canon(loads(history[-1][1])) == canon(doc)


test_sql_matches_the_model, test_sql_matches_the_model_thoroughly = fast_and_slow(
    _sql_matches_the_model,
    40,
    150,
    initial=st.dictionaries(
        st.sampled_from(["a", "b", "c", "x.y"]),
        st.lists(values, min_size=1, max_size=3) | values,
        min_size=1,
        max_size=4,
    ),
    steps=st.lists(st.tuples(operations, st.booleans()), min_size=1, max_size=15),
)
