"""Payload codecs (docs/codecs.md): what workflows and activities pass through the database,
encrypted or compressed before it is stored and decoded after it is read.

`MemFlow.init(codec=...)` takes a codec or a list of them (applied in order: compress, then
encrypt). Each encoded value is stored as a marker a SQL reader can recognise:

    {"$codec": "zlib+aes-gcm", "key_id": "2026-12", "data": "<base64>"}

Workflow and activity arguments and results, signal payloads, hook and child arguments are
encoded; the entity stays plain JSON (queryable) except the top-level fields named in
`encode_entity_fields`. A value that cannot be decoded (no such codec or key here, a wrong key,
tampered data) fails its task at once with `CodecError` (598, not retried), naming the codec
and the key id.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from hotmesh import errors
from hotmesh._commands import (
    NOT_RECORDED,
    Command,
    EntityOp,
    RecordedStep,
    ScheduleActivity,
    SendSignal,
    StartChild,
    StartHook,
)

_T = TypeVar("_T")

MARKER = "$codec"


@runtime_checkable
class Codec(Protocol):
    """Turns bytes into bytes and back. `encode` returns the encoded bytes and the id of the
    key it used (None for a codec without keys); `decode` gets that key id back (a chain
    records one key id: that of the last keyed codec)."""

    name: str

    def encode(self, data: bytes) -> tuple[bytes, str | None]: ...

    def decode(self, data: bytes, key_id: str | None) -> bytes: ...


class CodecError(errors.FatalError):
    """A payload this process cannot encode or decode: names the codec and the key id. Final
    (598): a retry by the same worker would fail the same way."""

    def __init__(self, message: str) -> None:
        super().__init__(message, type="CodecError")


class Compression:
    """zlib (the standard library): smaller rows for large, repetitive payloads."""

    name = "zlib"

    def __init__(self, level: int = 6) -> None:
        self.level = level

    def encode(self, data: bytes) -> tuple[bytes, str | None]:
        return zlib.compress(data, self.level), None

    def decode(self, data: bytes, key_id: str | None) -> bytes:
        return zlib.decompress(data)


class AesGcm:
    """AES-GCM (256-bit keys when given 32 bytes) with a key id per value, for rotation:
    values are encrypted with `current` (default: the last key given) and decrypted with
    whichever key their marker names, so old keys stay in `keys` until nothing uses them.
    Needs `pip install 'hotmesh[crypto]'` (the `cryptography` package)."""

    name = "aes-gcm"

    def __init__(self, keys: Mapping[str, bytes], current: str | None = None) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise errors.InvalidArgument(
                "the aes-gcm codec needs the cryptography package: pip install 'hotmesh[crypto]'"
            ) from None
        if not keys:
            raise errors.InvalidArgument("AesGcm needs at least one key: {key_id: key bytes}")
        self._ciphers = {}
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not key_id:
                raise errors.InvalidArgument(f"AesGcm: key ids are non-empty text, not {key_id!r}")
            if not isinstance(key, bytes) or len(key) not in (16, 24, 32):
                raise errors.InvalidArgument(
                    f"AesGcm: key {key_id!r} must be 16, 24 or 32 bytes (os.urandom(32))"
                )
            self._ciphers[key_id] = AESGCM(key)
        self.current = current if current is not None else list(keys)[-1]
        if self.current not in self._ciphers:
            raise errors.InvalidArgument(f"AesGcm: current key {self.current!r} is not in keys")

    def encode(self, data: bytes) -> tuple[bytes, str | None]:
        nonce = os.urandom(12)
        return nonce + self._ciphers[self.current].encrypt(nonce, data, None), self.current

    def decode(self, data: bytes, key_id: str | None) -> bytes:
        cipher = self._ciphers.get(key_id or "")
        if cipher is None:
            known = ", ".join(sorted(self._ciphers))
            raise ValueError(f"no key {key_id!r} in this process's keys (it has: {known})")
        try:
            return bytes(cipher.decrypt(data[:12], data[12:], None))
        except Exception:  # cryptography's InvalidTag: wrong key or altered data
            raise ValueError("authentication failed: a wrong key or altered data") from None


class Payloads:
    """Applies the codecs at the edge: to each value sent to the database and each one read
    back. `Payloads(None)` is the identity (no codec: nothing is looked at)."""

    def __init__(
        self, codec: Codec | Sequence[Codec] | None, encode_entity_fields: Sequence[str] = ()
    ) -> None:
        chain = [] if codec is None else [codec] if isinstance(codec, Codec) else list(codec)
        for item in chain:
            if not isinstance(item, Codec):
                raise errors.InvalidArgument(
                    f"codec must have name, encode and decode (hotmesh.codecs.Codec), not {item!r}"
                )
        self.chain = tuple(chain)
        self.enabled = bool(self.chain)
        self.name = "+".join(c.name for c in self.chain)
        self._by_name = {c.name: c for c in self.chain}
        self.entity_fields = frozenset(encode_entity_fields)
        if self.entity_fields and not self.enabled:
            raise errors.InvalidArgument("encode_entity_fields needs a codec")

    # -- encoding -------------------------------------------------------------------------
    def encode(self, value: Any) -> Any:
        """One JSON value as its marker (the value itself without a codec)."""
        if not self.enabled:
            return value
        data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        key = None
        for codec in self.chain:
            try:
                data, key_id = codec.encode(data)
            except Exception as error:
                raise CodecError(f"codec {codec.name} cannot encode a payload: {error}") from None
            key = key_id if key_id is not None else key
        marker: dict[str, Any] = {MARKER: self.name, "data": base64.b64encode(data).decode()}
        if key is not None:
            marker["key_id"] = key
        return marker

    def encode_args(self, args: list[Any]) -> list[Any]:
        """Positional arguments: each one its own marker (the list stays a JSON array)."""
        return [self.encode(a) for a in args] if self.enabled else args

    def encode_entity(self, path: str | None, value: Any) -> Any:
        """An entity operand: the chosen top-level fields encoded, the rest plain."""
        if not self.entity_fields:
            return value
        if path is None or path in ("", "$"):
            if isinstance(value, dict):
                return {
                    k: self.encode(v) if k in self.entity_fields else v for k, v in value.items()
                }
            return value
        first = path.split(".", 1)[0] if not path.startswith("[") else None
        return self.encode(value) if first in self.entity_fields and "." not in path else value

    # -- decoding -------------------------------------------------------------------------
    def decode(self, value: Any) -> Any:
        """`value` with every marker in it decoded; CodecError naming codec and key id."""
        if not self.enabled:
            return value
        if isinstance(value, dict):
            if MARKER in value:
                return self._decode_marker(value)
            return {k: self.decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        return value

    def _decode_marker(self, marker: Mapping[str, Any]) -> Any:
        names = str(marker.get(MARKER))
        key_id = marker.get("key_id")
        key_id = None if key_id is None else str(key_id)
        shown = f'codec "{names}"' + (f' with key "{key_id}"' if key_id is not None else "")
        try:
            data = base64.b64decode(str(marker.get("data", "")), validate=True)
            chain = []
            for name in names.split("+"):
                codec = self._by_name.get(name)
                if codec is None:
                    raise ValueError(
                        f"this process has no codec {name!r} (it has: {self.name or 'none'})"
                    )
                chain.append(codec)
            for codec in reversed(chain):
                data = codec.decode(data, key_id)
            return json.loads(data)
        except CodecError:
            raise
        except Exception as error:
            raise CodecError(f"cannot decode a payload encoded by {shown}: {error}") from None

    # -- at the worker's edge ---------------------------------------------------------------
    def command(self, command: Command) -> Command:
        """A workflow's durable call as sent: its payloads encoded."""
        match command:
            case ScheduleActivity():
                return dataclasses.replace(command, args=self.encode_args(command.args))
            case SendSignal():
                return dataclasses.replace(command, payload=self.encode(command.payload))
            case StartHook() | StartChild():
                return dataclasses.replace(command, args=self.encode_args(command.args))
            case EntityOp() if command.has_value and self.entity_fields:
                return dataclasses.replace(
                    command, value=self.encode_entity(command.path, command.value)
                )
        return command

    def step(self, step: RecordedStep) -> RecordedStep:
        """A recorded step as read: its outcome (and input, where given) decoded."""
        decoded = step._replace(output=self.decode(step.output))
        if step.input is not NOT_RECORDED:
            decoded = decoded._replace(input=self.decode(step.input))
        return decoded

    def task(self, task: _T) -> _T:
        """A claimed task as read: its arguments and its history decoded."""
        steps = getattr(task, "steps", None)
        return dataclasses.replace(
            task,  # type: ignore[type-var]
            args=self.decode(getattr(task, "args", None)),
            steps=None if steps is None else [self.step(s) for s in steps],
        )
