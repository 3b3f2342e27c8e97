"""Exceptions: one class per SQLSTATE a caller branches on, and the workflow-side errors that
carry the seed's numeric codes (598 fatal, 597 retries exhausted, 596 timeout, 410 cancelled).
"""

from __future__ import annotations

import traceback
from typing import Any

import psycopg


class HotMeshError(Exception):
    """Base class of every error hotmesh raises. `sqlstate` is set when Postgres raised it."""

    sqlstate: str | None = None

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if sqlstate is not None:
            self.sqlstate = sqlstate


class InvalidArgument(HotMeshError, ValueError):
    """A bad argument: invalid app id, duration, retry policy, JSON, ... (SQLSTATE 22023)."""

    sqlstate = "22023"


class DuplicateJobError(HotMeshError):
    """A live workflow already has this id (HM001)."""

    sqlstate = "HM001"


class WorkflowNotFound(HotMeshError, LookupError):
    """No workflow has this id (HM002)."""

    sqlstate = "HM002"


class IllegalTransition(HotMeshError):
    """The workflow or task is not in a state that allows the call (HM003)."""

    sqlstate = "HM003"


class LeaseLost(HotMeshError):
    """The task's lease is held by another claim; this worker must stop writing (HM004)."""

    sqlstate = "HM004"


class TaskNotFound(HotMeshError, LookupError):
    """The task finished, was cancelled or never existed (HM005)."""

    sqlstate = "HM005"


class NonDeterminismError(HotMeshError):
    """Workflow code asked for a different call than the one recorded at that step (HM006)."""

    sqlstate = "HM006"


class EntityPathError(HotMeshError):
    """An entity path does not exist or has the wrong shape (HM007)."""

    sqlstate = "HM007"


class EntityTypeError(HotMeshError, TypeError):
    """An entity operation met a value of the wrong type (HM008)."""

    sqlstate = "HM008"


class DatabaseUnreachable(HotMeshError, ConnectionError):
    """`MemFlow.init` could not connect; the message says where the DSN came from (`dsn=`,
    DATABASE_URL or the libpq variables) and what libpq answered."""


class SchemaMismatch(HotMeshError):
    """The app's schema and this package do not match (docs/upgrading.md): the schema is newer
    than this worker can serve (restart it with the new release), or older than it needs (run
    `hotmesh migrate` with this release first). A worker that finds it logs it and stops
    claiming; `MemFlow.run_until_signal` raises it and `hotmesh worker` exits with
    `exit_code`, for the process's supervisor to restart it."""

    exit_code = 75  # EX_TEMPFAIL (sysexits.h): restart me later, with the right release


_BY_SQLSTATE: dict[str, type[HotMeshError]] = {
    cls.sqlstate: cls
    for cls in (
        InvalidArgument,
        DuplicateJobError,
        WorkflowNotFound,
        IllegalTransition,
        LeaseLost,
        TaskNotFound,
        NonDeterminismError,
        EntityPathError,
        EntityTypeError,
    )
    if cls.sqlstate is not None
}
_BY_SQLSTATE["22P02"] = InvalidArgument  # invalid text representation (e.g. bad JSON)
_BY_SQLSTATE["22P05"] = InvalidArgument  # untranslatable character (\u0000 in JSON)
_BY_SQLSTATE["22003"] = InvalidArgument  # numeric value out of range (e.g. an index > 2**31)


def shown(value: object, limit: int = 80) -> str:
    """A short repr of a caller's value for a message; never raises (a structure nested too
    deeply, or an int too long, to print is named by its type)."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_sqlstate(sqlstate: str | None) -> type[HotMeshError]:
    """The exception class for a SQLSTATE (HotMeshError for codes not listed)."""
    return _BY_SQLSTATE.get(sqlstate or "", HotMeshError)


def from_database(error: psycopg.Error) -> HotMeshError:
    """The hotmesh exception for a database error (HotMeshError for codes not listed)."""
    sqlstate = error.sqlstate
    diag = error.diag.message_primary or str(error)
    cls = _BY_SQLSTATE.get(sqlstate or "", HotMeshError)
    result = cls(diag, sqlstate=sqlstate)
    result.__cause__ = error
    return result


class WorkflowError(HotMeshError):
    """An error that crossed a durable boundary: an activity, a child or a whole workflow failed.

    `code` is the seed's numeric code, `type` the name of the original exception class and
    `details` the whole stored error payload.
    """

    code = 500

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        type: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.type = type or self.__class__.__name__
        self.details = details or {}

    def payload(self) -> dict[str, Any]:
        """The JSON form stored in Postgres."""
        return {**self.details, "message": self.message, "code": self.code, "type": self.type}


class FatalError(WorkflowError):
    """Raise in an activity or workflow to fail at once, without retries (code 598)."""

    code = 598


class MaxedError(WorkflowError):
    """The retry policy's attempts ran out (code 597); the message is the last error's."""

    code = 597


class TimeoutFailure(WorkflowError):
    """A timeout expired (code 596)."""

    code = 596


class CancelledFailure(WorkflowError):
    """The workflow was cancelled (interrupted; code 410)."""

    code = 410


_BY_CODE: dict[int, type[WorkflowError]] = {
    598: FatalError,
    597: MaxedError,
    596: TimeoutFailure,
    410: CancelledFailure,
}


def from_payload(payload: dict[str, Any]) -> WorkflowError:
    """Rebuild the exception a stored error payload describes."""
    code = payload.get("code")
    code = int(code) if isinstance(code, (int, float, str)) and str(code).isdigit() else 500
    cls = _BY_CODE.get(code, WorkflowError)
    return cls(
        str(payload.get("message", "")),
        code=code,
        type=str(payload.get("type") or cls.__name__),
        details=payload,
    )


def to_payload(error: BaseException) -> dict[str, Any]:
    """The JSON form of an exception raised by user code, as stored in Postgres."""
    stack = "".join(traceback.format_exception(error))[-4000:]
    if isinstance(error, WorkflowError):
        return {"stack": stack, **error.payload()}
    return {
        "message": str(error) or repr(error),
        "type": type(error).__name__,
        "code": 599,
        "stack": stack,
    }
