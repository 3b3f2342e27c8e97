"""The entity: a workflow's JSON document (`<app>.jobs.context`), shared by its code, its hooks,
other applications and people.

Inside a workflow, `e = await workflow.entity()`: every operation is a durable step, applied
exactly once per code position (a replay returns the recorded result and changes nothing).
Outside, `mf.entity("workflow-id")` calls the SQL functions `<app>.entity_<operation>`, which
any application can call too; `mf.entity.find(...)` and friends query the entities of one type.

Paths are dotted text (`"a.b.0.c"`: a segment indexes an array when the value there is one) or
a list of segments (`["a.b", "c", 0]`) for keys that contain dots.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from hotmesh import errors
from hotmesh._commands import EntityOp
from hotmesh._runner import Activation, SandboxError, current, encode

if TYPE_CHECKING:
    from hotmesh._db import Database
    from hotmesh.codecs import Payloads

Path = str | Sequence[str | int]
"""Dotted text, or a sequence of segments (str keys, int array indexes)."""


class _NoValue:
    """The operand of operations that take none (get, delete, toggle)."""


_NO_VALUE = _NoValue()


def path_text(path: Path | None) -> str | None:
    """A path as the SQL functions take it: dotted text as is, segments as a JSON array."""
    if path is None or isinstance(path, str):
        return path
    if isinstance(path, Sequence) and not isinstance(path, bytes | bytearray):
        segments = list(path)
        for segment in segments:
            if isinstance(segment, bool) or not isinstance(segment, str | int):
                raise errors.EntityPathError(
                    f"entity path segments are strings (keys) or ints (array indexes), "
                    f"not {errors.shown(segment)}",
                    sqlstate="HM007",
                )
        return json.dumps(segments)
    raise errors.EntityPathError(
        f"an entity path is dotted text or a list of segments, not {type(path).__name__}",
        sqlstate="HM007",
    )


class EntityPathFailure(errors.FatalError, errors.EntityPathError):
    """HM007 inside a workflow. Catch it as `errors.EntityPathError`; uncaught, it fails the
    workflow at once (code 598): it is recorded, so every replay would raise it again."""


class EntityTypeFailure(errors.FatalError, errors.EntityTypeError):
    """HM008 inside a workflow (see EntityPathFailure)."""


class EntityArgumentFailure(errors.FatalError, errors.InvalidArgument):
    """22023 inside a workflow (see EntityPathFailure)."""


_FAILURES: dict[str, type[errors.FatalError]] = {
    "HM007": EntityPathFailure,
    "HM008": EntityTypeFailure,
    "22023": EntityArgumentFailure,
}


class _Backend(Protocol):
    workflow_id: str

    def run(self, op: str, path: str | None, value: Any, key: str | None) -> Awaitable[Any]: ...

    def fail(self, error: errors.HotMeshError) -> Awaitable[Any]: ...


class Entity:
    """One workflow's entity. Every method returns an awaitable; inside a workflow the call
    takes its step number when it is made (so `asyncio.gather` numbers calls in call order).

    Outside workflows, each changing method takes an optional `idempotency_key`: a retried call
    with the same key returns the first call's result and changes nothing.
    """

    def __init__(self, backend: _Backend) -> None:
        self._backend = backend

    def __repr__(self) -> str:
        return f"Entity({self.workflow_id!r})"

    @property
    def workflow_id(self) -> str:
        return self._backend.workflow_id

    def set(
        self, value: Any, path: Path | None = None, *, idempotency_key: str | None = None
    ) -> Awaitable[dict[str, Any]]:
        """Replace the whole entity (a dict), or with `path` the value there (creating missing
        intermediate objects). Returns the new entity."""
        return self._run("set", path, value, idempotency_key)

    def merge(
        self, value: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Awaitable[dict[str, Any]]:
        """Deep-merge a dict into the entity: dicts merge at every depth, any other value
        (lists included) replaces. `merge({})` changes nothing. Returns the new entity."""
        return self._run("merge", None, value, idempotency_key)

    def get(self, path: Path | None = None) -> Awaitable[Any]:
        """The whole entity, or the value at `path` (None when it does not exist)."""
        return self._run("get", path, _NO_VALUE, None)

    def delete(
        self, path: Path, *, idempotency_key: str | None = None
    ) -> Awaitable[dict[str, Any]]:
        """Remove the key or array element at `path` (EntityPathError when it does not exist).
        Returns the new entity."""
        return self._run("delete", path, _NO_VALUE, idempotency_key)

    def append(
        self, path: Path, value: Any, *, idempotency_key: str | None = None
    ) -> Awaitable[list[Any]]:
        """Add `value` as the last element of the list at `path` (created when missing; a list
        value is added as one element). Returns the new list."""
        return self._run("append", path, value, idempotency_key)

    def prepend(
        self, path: Path, value: Any, *, idempotency_key: str | None = None
    ) -> Awaitable[list[Any]]:
        """Add `value` as the first element of the list at `path`. Returns the new list."""
        return self._run("prepend", path, value, idempotency_key)

    def remove(
        self, path: Path, index: int, *, idempotency_key: str | None = None
    ) -> Awaitable[list[Any]]:
        """Remove element `index` (negative counts from the end) of the list at `path`.
        Returns the new list ([] after removing the last element)."""
        if isinstance(index, bool) or not isinstance(index, int):
            return self._fail(
                errors.EntityTypeError(
                    f"entity remove: the index must be an int, not {errors.shown(index)}",
                    sqlstate="HM008",
                )
            )
        return self._run("remove", path, index, idempotency_key)

    def increment(
        self, path: Path, by: int | float | Decimal = 1, *, idempotency_key: str | None = None
    ) -> Awaitable[int | float]:
        """Add `by` to the number at `path` (a missing value counts as 0, missing intermediate
        objects are created). Returns the new number."""
        if isinstance(by, bool) or not isinstance(by, int | float | Decimal):
            return self._fail(
                errors.EntityTypeError(
                    f"entity increment: the amount must be a number, not {errors.shown(by)}",
                    sqlstate="HM008",
                )
            )
        return self._run("increment", path, by, idempotency_key)

    def toggle(self, path: Path, *, idempotency_key: str | None = None) -> Awaitable[bool]:
        """Flip the boolean at `path` (a missing value becomes True). Returns the new value."""
        return self._run("toggle", path, _NO_VALUE, idempotency_key)

    def set_if_not_exists(
        self, path: Path, value: Any, *, idempotency_key: str | None = None
    ) -> Awaitable[Any]:
        """Set `path` to `value` only when the path does not exist (an existing null counts as
        existing). Returns the value at `path` afterwards."""
        return self._run("set_if_not_exists", path, value, idempotency_key)

    def _run(self, op: str, path: Path | None, value: Any, key: str | None) -> Awaitable[Any]:
        operand: Any = _NO_VALUE
        try:
            text = path_text(path)
            if isinstance(value, Decimal):
                if not value.is_finite():
                    raise errors.EntityTypeError(
                        f"entity {op}: the amount must be a finite number, not {value}",
                        sqlstate="HM008",
                    )
                operand = value
            elif value is not _NO_VALUE:
                operand = encode(value, f"the value of entity {op}")
        except errors.HotMeshError as error:
            return self._fail(error)
        return self._backend.run(op, text, operand, key)

    def _fail(self, error: errors.HotMeshError) -> Awaitable[Any]:
        return self._backend.fail(error)


# -- inside workflows --------------------------------------------------------------------------


class _Durable:
    """Operations as steps of the running activation (entity_step)."""

    def __init__(self, act: Activation) -> None:
        self._act = act
        self.workflow_id = act.task.job_id

    def _active(self) -> Activation:
        if current.get(None) is not self._act:
            raise SandboxError(
                "this entity belongs to another workflow run: call workflow.entity() in the "
                "workflow function that uses it (outside workflows use mf.entity(workflow_id))"
            )
        return self._act

    def run(self, op: str, path: str | None, value: Any, key: str | None) -> Awaitable[Any]:
        act = self._active()
        if key is not None:
            return self.fail(
                errors.InvalidArgument(
                    "idempotency_key is for callers outside workflows: inside one, each entity "
                    "operation already happens exactly once"
                )
            )
        if isinstance(value, Decimal):  # JSON has no decimals: the nearest int or float
            value = int(value) if value == value.to_integral_value() else float(value)
        if value is _NO_VALUE:
            command = EntityOp(op, path, None, has_value=False)
        else:
            command = EntityOp(op, path, value)
        return _raise_as_entity_error(act.call(command))

    def fail(self, error: errors.HotMeshError) -> Awaitable[Any]:
        failure = _FAILURES.get(error.sqlstate or "")
        if failure is not None and not isinstance(error, errors.WorkflowError):
            error = failure(
                error.message, type=type(error).__name__, details={"sqlstate": error.sqlstate}
            )
        return self._active().fail_now(error)


async def _raise_as_entity_error(outcome: Awaitable[Any]) -> Any:
    """The recorded outcome; a recorded entity error raises its Entity*Failure class."""
    try:
        return await outcome
    except errors.WorkflowError as error:
        failure = _FAILURES.get(str(error.details.get("sqlstate")))
        if failure is None or isinstance(error, failure):
            raise
        raise failure(
            error.message, type=error.type, details=error.details, code=error.code
        ) from None


def workflow_entity(act: Activation) -> Entity:
    """The entity of the workflow `act` runs (its hooks share it)."""
    return Entity(_Durable(act))


# -- outside workflows -------------------------------------------------------------------------


class _Direct:
    """Operations as calls of the SQL API (entity_<operation>), one transaction each."""

    def __init__(self, db: Database, workflow_id: str, payloads: Payloads | None = None) -> None:
        self._db = db
        self.workflow_id = workflow_id
        self._payloads = payloads

    def run(self, op: str, path: str | None, value: Any, key: str | None) -> Awaitable[Any]:
        if value is _NO_VALUE:
            value = None
        elif op == "increment" and isinstance(value, float):
            value = Decimal(repr(value))  # exact: the SQL function takes numeric
        if self._payloads is not None and self._payloads.enabled:
            return self._coded(self._payloads, op, path, value, key)
        return self._db.entity_call(op, self.workflow_id, path, value, key)

    async def _coded(
        self, payloads: Payloads, op: str, path: str | None, value: Any, key: str | None
    ) -> Any:
        """With a codec: the chosen fields go out encoded, what comes back is decoded."""
        value = payloads.encode_entity(path, value)
        return payloads.decode(await self._db.entity_call(op, self.workflow_id, path, value, key))

    async def fail(self, error: errors.HotMeshError) -> Any:
        if isinstance(error, errors.WorkflowError):  # a value that cannot be stored as JSON
            raise errors.InvalidArgument(error.message) from None
        raise error


def _plain(value: Any, what: str) -> Any:
    """`value` as JSON, or InvalidArgument (outside workflows nothing is fatal)."""
    try:
        return encode(value, what)
    except errors.WorkflowError as error:
        raise errors.InvalidArgument(error.message) from None


class EntityClient:
    """`mf.entity`: `mf.entity(workflow_id)` is that workflow's Entity; `find`, `find_by_id`,
    `find_by_condition`, `create_index` and `history` query entities from outside workflows.
    Each is one SQL function (entity_find, ...), callable from psql just the same."""

    def __init__(
        self,
        db: Database,
        payloads: Payloads | None = None,
        route: Callable[[str], Database] | None = None,
    ) -> None:
        self._db = db
        self._payloads = payloads
        # The engine of a workflow (its shard group's on an app distributed by job_id); the
        # finds read every workflow, through `db`.
        self._route = route or (lambda _workflow_id: db)

    def __call__(self, workflow_id: str) -> Entity:
        if not isinstance(workflow_id, str) or not workflow_id:
            raise errors.InvalidArgument(
                f"workflow id must be a non-empty str, not {errors.shown(workflow_id)}"
            )
        return Entity(_Direct(self._route(workflow_id), workflow_id, self._payloads))

    async def history(self, workflow_id: str) -> list[dict[str, Any]]:
        """Every change of the entity in the order applied: version, thread ('main', a hook
        thread, or 'sql' for SQL callers), seq, op, path, value, result, document (the entity
        after the change), caller (worker id or database user) and recorded_at."""
        changes = await self._route(workflow_id).entity_history(workflow_id)
        return [asdict(change) for change in changes]

    async def find(
        self,
        entity: str,
        where: Mapping[str | Sequence[str | int], Any] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Workflows of entity type `entity` whose entity matches every condition, newest first:
        `{"status": "active"}` (typed equality: 30 does not match "30"), nested paths
        (`{"preferences.notifications": True}` or a tuple key), and operator dicts
        `{"age": {"$gte": 18, "$lt": 65}}` with $eq $ne $gt $gte $lt $lte $in $like.
        Returns `[{"id", "context", "status"}]`."""
        conditions: dict[str, Any] = {}
        for key, condition in (where or {}).items():
            text = path_text(key)
            if text is None:
                raise errors.EntityPathError("a condition needs a path", sqlstate="HM007")
            conditions[text] = _plain(condition, f"the condition on {text}")
        return [asdict(m) for m in await self._db.entity_find(entity, conditions, limit, offset)]

    async def find_by_condition(
        self,
        entity: str,
        path: Path,
        op: str,
        value: Any,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Workflows of entity type `entity` whose value at `path` compares with `value` by
        `op` (= != > >= < <= like in), newest first. Comparisons are typed: numbers with
        numbers, strings with strings; `in` takes a list."""
        value = _plain(value, f"the value compared with {op}")
        found = await self._db.entity_find_by_condition(
            entity, path_text(path), op, value, limit, offset
        )
        return [asdict(m) for m in found]

    async def find_by_id(self, entity: str, workflow_id: str) -> dict[str, Any] | None:
        """`{"id", "context", "status"}` of that workflow if it is of entity type `entity`."""
        found = await self._route(workflow_id).entity_find_by_id(entity, workflow_id)
        return None if found is None else asdict(found)

    async def create_index(self, entity: str, path: Path | None = None, kind: str = "btree") -> str:
        """Create (once) a partial index for entity type `entity`: 'btree' on the value at
        `path` (serves find's comparisons on it), 'gin' on the whole entity or the value at
        `path` (serves equality / containment). Returns the index name."""
        return await self._db.entity_create_index(entity, path_text(path), kind)
