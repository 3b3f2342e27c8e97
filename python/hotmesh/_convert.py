"""Typed payloads: Python values to JSON and back into the annotated type (docs/typed-payloads.md).

`default` is what `json.dumps` calls for a value it cannot write itself: a dataclass or a
pydantic model becomes a JSON object, a datetime, date, time, UUID or Decimal text (a Decimal
keeps every digit), an enum its value (a set stays refused: its order is not stable).
`from_json` goes back: a JSON value into the type a function's parameter or return
annotation names, checking as it goes and naming the field that does not fit
(`PayloadTypeError`, a FatalError: retrying cannot help).

A function whose annotations are all plain JSON types (or none) has no plan (`None`): its
arguments and results are passed as they are, with no cost on the hot path.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import inspect
import sys
import types
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from hotmesh import errors


def _pydantic() -> Any:
    """pydantic, when something imported it (a model can only exist then): never imported
    here, so hotmesh starts as fast without it."""
    return sys.modules.get("pydantic")


# Annotations whose JSON form is the value itself: nothing to convert, nothing checked.
_PLAIN: frozenset[Any] = frozenset(
    {Any, object, str, int, float, bool, dict, list, type(None), None, inspect.Parameter.empty}
)


class PayloadTypeError(errors.FatalError):
    """A payload does not match the type its function is annotated with: the message names
    the value (argument, result) and the field. Final (598): a retry would get the same JSON."""

    def __init__(self, message: str) -> None:
        super().__init__(message, type="PayloadTypeError")


def default(value: Any) -> Any:
    """The JSON form of a value json.dumps cannot write itself; TypeError for anything else."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    pydantic = _pydantic()
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _needs(tp: Any) -> bool:
    """Whether a value annotated `tp` needs converting from its JSON form."""
    if tp in _PLAIN or isinstance(tp, str | typing.TypeVar):
        return False
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _needs(typing.get_args(tp)[0])
    if origin is not None:
        if origin is typing.Literal:
            return False
        return any(_needs(arg) for arg in typing.get_args(tp) if arg is not Ellipsis) or (
            origin in (tuple, set, frozenset)
        )
    return isinstance(tp, type) and (
        dataclasses.is_dataclass(tp)
        or issubclass(tp, enum.Enum | Decimal | dt.date | dt.time | uuid.UUID)
        or _is_model(tp)
    )


def _is_model(tp: type) -> bool:
    pydantic = _pydantic()
    return pydantic is not None and issubclass(tp, pydantic.BaseModel)


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=False)
    except Exception:  # unresolvable annotations: the function gets plain JSON
        return {}


@functools.lru_cache(maxsize=1024)
def arg_plan(fn: Callable[..., Any]) -> tuple[tuple[str, Any], ...] | None:
    """(name, type) of each positional parameter, in order, when one needs converting."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    hints = _hints(fn)
    plan = []
    for param in params:
        if param.kind is param.VAR_POSITIONAL:
            plan.append(("*" + param.name, hints.get(param.name, Any)))
            break
        if param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            break
        plan.append((param.name, hints.get(param.name, Any)))
    if not any(_needs(tp) for _name, tp in plan):
        return None
    return tuple(plan)


@functools.lru_cache(maxsize=1024)
def return_type(fn: Callable[..., Any]) -> Any:
    """The return annotation of `fn` when its value needs converting, else None."""
    tp = _hints(fn).get("return", Any)
    return tp if _needs(tp) else None


def convert_args(fn: Callable[..., Any], args: Sequence[Any], what: str) -> list[Any]:
    """`args` (JSON) as `fn`'s annotated parameter types; PayloadTypeError naming the field."""
    plan = arg_plan(fn)
    if plan is None:
        return list(args)
    out = []
    for index, value in enumerate(args):
        if index < len(plan):
            name, tp = plan[index]
        elif plan[-1][0].startswith("*"):
            name, tp = plan[-1]
        else:
            out.append(value)  # too many: the call itself raises TypeError
            continue
        out.append(from_json(value, tp, f"argument {name.lstrip('*')} of {what}"))
    return out


def from_json(value: Any, tp: Any, where: str) -> Any:
    """`value`, a JSON value, as type `tp`; PayloadTypeError naming `where` and the field."""
    return _convert(value, tp, where, "")


def _fail(where: str, path: str, message: str) -> PayloadTypeError:
    field = f" field {path.lstrip('.')}:" if path else ""
    return PayloadTypeError(f"{where}:{field} {message}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(value: Any, tp: Any, where: str, path: str) -> Any:
    if tp in _PLAIN or isinstance(tp, str | typing.TypeVar):
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return _convert(value, args[0], where, path)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        problems = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(value, option, where, path)
            except PayloadTypeError as error:
                problems.append(error)
        if len(problems) == 1:
            raise problems[0]
        names = " | ".join(_name(a) for a in args)
        raise _fail(where, path, f"expected {names}, got {_show(value)}")
    if origin is typing.Literal:
        if value not in args:
            raise _fail(where, path, f"expected one of {list(args)}, got {_show(value)}")
        return value
    if origin in (list, set, frozenset, Sequence) or origin is typing.get_origin(Sequence[int]):
        if not isinstance(value, list):
            raise _fail(where, path, f"expected a list, got {_show(value)}")
        item = args[0] if args else Any
        items = [_convert(v, item, where, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin not in (set, frozenset) else origin(items)
    if origin is tuple:
        if not isinstance(value, list):
            raise _fail(where, path, f"expected a list, got {_show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], where, f"{path}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise _fail(where, path, f"expected {len(args)} items, got {len(value)}")
        kinds = args or (Any,) * len(value)
        return tuple(
            _convert(v, t, where, f"{path}[{i}]")
            for i, (v, t) in enumerate(zip(value, kinds, strict=True))
        )
    if origin in (dict, Mapping) or origin is typing.get_origin(Mapping[str, int]):
        if not isinstance(value, dict):
            raise _fail(where, path, f"expected an object, got {_show(value)}")
        key_tp, val_tp = args if args else (Any, Any)
        return {
            _convert(k, key_tp, where, f"{path}.{k}"): _convert(v, val_tp, where, f"{path}.{k}")
            for k, v in value.items()
        }
    if origin is not None or not isinstance(tp, type):
        return value  # a generic this converter does not know: left as JSON
    if dataclasses.is_dataclass(tp):
        return _dataclass(value, tp, where, path)
    if _is_model(tp):
        return _model(value, tp, where, path)
    if issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = [m.value for m in tp]
            raise _fail(
                where, path, f"{_show(value)} is not a {tp.__name__} (one of {allowed})"
            ) from None
    if issubclass(tp, bool):
        if not isinstance(value, bool):
            raise _fail(where, path, f"expected bool, got {_show(value)}")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _fail(where, path, f"expected int, got {_show(value)}")
        return value
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _fail(where, path, f"expected float, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _fail(where, path, f"expected str, got {_show(value)}")
        return value
    if tp is Decimal:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _fail(where, path, f"expected a Decimal, got {_show(value)}")
        try:
            return Decimal(str(value))
        except InvalidOperation:
            raise _fail(where, path, f"expected a Decimal, got {_show(value)}") from None
    if tp in (dt.datetime, dt.date, dt.time):
        if not isinstance(value, str):
            raise _fail(where, path, f"expected an ISO 8601 {tp.__name__}, got {_show(value)}")
        try:
            return tp.fromisoformat(value)
        except ValueError:
            raise _fail(
                where, path, f"expected an ISO 8601 {tp.__name__}, got {_show(value)}"
            ) from None
    if tp is uuid.UUID:
        try:
            return uuid.UUID(value)
        except (TypeError, ValueError, AttributeError):
            raise _fail(where, path, f"expected a UUID, got {_show(value)}") from None
    return value  # a class this converter does not know (a TypedDict, ...): left as JSON


def _dataclass(value: Any, tp: type, where: str, path: str) -> Any:
    if not isinstance(value, dict):
        raise _fail(where, path, f"expected a {tp.__name__} object, got {_show(value)}")
    hints = typing.get_type_hints(tp)
    kwargs = {}
    for field in dataclasses.fields(tp):
        if field.name in value:
            kwargs[field.name] = _convert(
                value[field.name], hints.get(field.name, Any), where, f"{path}.{field.name}"
            )
        elif (
            field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
            and field.init
        ):
            raise _fail(where, f"{path}.{field.name}", f"missing (required by {tp.__name__})")
    unknown = sorted(set(value) - {f.name for f in dataclasses.fields(tp)})
    if unknown:
        raise _fail(where, f"{path}.{unknown[0]}", f"is not a field of {tp.__name__}")
    try:
        return tp(**kwargs)
    except (TypeError, ValueError) as error:
        raise _fail(where, path, f"{tp.__name__}: {error}") from None


def _model(value: Any, tp: type, where: str, path: str) -> Any:
    pydantic = _pydantic()
    try:
        return tp.model_validate(value)  # type: ignore[attr-defined]
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        got = _show(first.get("input"))
        raise _fail(where, path + loc, f"{first['msg']} (got {got})") from None


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)
