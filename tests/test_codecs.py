"""Payload codecs (docs/codecs.md): with `MemFlow.init(codec=...)` no plaintext of an encoded
value reaches any table of the app; a SQL reader sees markers naming codec and key id; the
entity stays plain except the fields chosen; a payload this worker cannot decode fails its
task once, naming codec and key id; keys rotate."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from helpers import python
from hotmesh import FatalError, MemFlow, RetryPolicy, workflow
from hotmesh.codecs import AesGcm, Codec, CodecError, Compression, Payloads
from hotmesh.testing import Replayer

pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).resolve().parent

K1, K2 = os.urandom(32), os.urandom(32)
SECRET = "SSN-078-05-1120"  # must appear nowhere in the database


def vet(claim: str) -> str:
    return f"vetted {claim}"


async def intake(claim: str) -> dict[str, Any]:
    acts = workflow.proxy_activities(activities=[vet])
    vetted = await acts.vet(claim)
    note = await workflow.wait_for("note")
    entity = await workflow.entity()
    await entity.set({"ssn": claim, "stage": "vetted"})
    await workflow.signal("echo", {"claim": claim})  # to itself: kept, then taken
    echo = await workflow.wait_for("echo")
    return {"vetted": vetted, "note": note, "echo": echo, "entity": await entity.get()}


@pytest.fixture
async def coded(app: str, dsn: str) -> AsyncIterator[MemFlow]:
    client = await MemFlow.init(
        app_id=app, dsn=dsn, migrate=False, codec=[Compression(), AesGcm({"k1": K1})],
        encode_entity_fields=["ssn"],
    )  # fmt: skip
    yield client
    await client.close(grace=2.0)


async def test_no_plaintext_in_any_table(coded: MemFlow, db: Any, app: str) -> None:
    await coded.worker.create(task_queue="secure", workflow=intake)
    handle = await coded.workflow.start(
        workflow_name="intake", args=[SECRET], task_queue="secure", workflow_id="c1"
    )
    await coded.workflow.signal("note", f"note on {SECRET}", workflow_id="c1")
    result = await handle.result(timeout=30)
    assert result == {
        "vetted": f"vetted {SECRET}",
        "note": f"note on {SECRET}",
        "echo": {"claim": SECRET},
        "entity": {"ssn": SECRET, "stage": "vetted"},
    }
    # Every table of the app, every row, as text.
    tables = [r[0] for r in db.rows(
        "select tablename from pg_tables where schemaname = %s order by 1", app)]  # fmt: skip
    assert {"jobs", "steps", "tasks", "signals"} <= set(tables)
    for table in tables:
        leaked = db.one(f"select count(*) from {table} t where t::text like %s", f"%{SECRET[4:]}%")  # noqa: S608
        assert leaked == 0, f"plaintext in {app}.{table}"
    # What a SQL reader sees: markers naming codec and key; the entity's other fields plain.
    arg, entity, result_marker = db.rows(
        "select args->0, context, result from jobs where id = 'c1'")[0]  # fmt: skip
    assert arg["$codec"] == "zlib+aes-gcm" and arg["key_id"] == "k1"
    assert entity["stage"] == "vetted" and entity["ssn"]["$codec"] == "zlib+aes-gcm"
    assert result_marker["key_id"] == "k1"
    # The client decodes the entity's encoded field too; the Replayer decodes the history.
    assert await coded.entity("c1").get() == {"ssn": SECRET, "stage": "vetted"}
    report = await Replayer([intake]).replay_app(coded, statuses=None)
    assert report.ok, report.text()


async def test_undecodable_payload_fails_once_naming_codec_and_key(
    coded: MemFlow, app: str, dsn: str, db: Any
) -> None:
    other = await MemFlow.init(app_id=app, dsn=dsn, migrate=False,
                               codec=[Compression(), AesGcm({"k2": K2})])  # fmt: skip
    try:
        await other.worker.create(task_queue="secure", workflow=intake)
        handle = await coded.workflow.start(
            workflow_name="intake", args=[SECRET], task_queue="secure", workflow_id="c2",
            retry_policy=RetryPolicy(maximum_attempts=5, initial_interval=0.1),
        )  # fmt: skip
        with pytest.raises(FatalError) as caught:
            await handle.result(timeout=30)
    finally:
        await other.close(grace=1.0)
    assert caught.value.type == "CodecError"
    assert 'codec "zlib+aes-gcm" with key "k1"' in caught.value.message
    assert "no key 'k1'" in caught.value.message
    assert db.one("select attempt from jobs where id = 'c2'") == 1  # not retried


def cli_codec() -> list[Codec]:
    """`hotmesh --codec test_codecs:cli_codec`: a factory reading its keys at start, as an
    operator's would from a secret store (here: TEST_CODEC_KEYS, "id=hex,...")."""
    pairs = (item.split("=") for item in os.environ["TEST_CODEC_KEYS"].split(","))
    return [Compression(), AesGcm({key_id: bytes.fromhex(key) for key_id, key in pairs})]


async def sealed(claim: str) -> dict[str, Any]:
    acts = workflow.proxy_activities(activities=[vet])
    return {"vetted": await acts.vet(claim)}


async def cli(app: str, dsn: str, *args: str, **env: str) -> tuple[int, str, str]:
    """`hotmesh ARGS` with `env` (forked by the tests' forkserver: hotmesh already imported)."""

    def run(tmp: str) -> tuple[int, str, str]:
        out, err = Path(tmp, "out"), Path(tmp, "err")
        every = {**os.environ, "DATABASE_URL": dsn, "HOTMESH_APP": app, **env}
        code = python("-m", "hotmesh.cli", *args, env=every, stdout=out, stderr=err, cwd=TESTS)
        return code.wait(60), out.read_text(), err.read_text()

    with tempfile.TemporaryDirectory() as tmp:
        return await asyncio.to_thread(run, tmp)


@pytest.mark.timeout(120)  # six commands, each a process
async def test_cli_codec_reads_encoded_payloads(coded: MemFlow, app: str, dsn: str) -> None:
    """`hotmesh --codec MODULE:FACTORY` (or $HOTMESH_CODEC) decodes what show, history and
    result print; a key it lacks is a clear error naming codec and key id; without a codec
    only markers are shown."""
    await coded.worker.create(task_queue="secure", workflow=sealed)
    handle = await coded.workflow.start(
        workflow_name="sealed", args=[SECRET], task_queue="secure", workflow_id="c3"
    )
    assert await handle.result(timeout=30) == {"vetted": f"vetted {SECRET}"}
    keys = {"TEST_CODEC_KEYS": f"k1={K1.hex()}"}

    code, out, err = await cli(app, dsn, "--codec", "test_codecs:cli_codec", "result", "c3",
                               **keys)  # fmt: skip
    assert (code, out) == (0, f'{{"vetted": "vetted {SECRET}"}}\n'), err
    code, out, err = await cli(app, dsn, "show", "c3", HOTMESH_CODEC="test_codecs:cli_codec",
                               **keys)  # fmt: skip
    assert code == 0, err
    assert f'result         {{"vetted": "vetted {SECRET}"}}' in out, out
    code, out, err = await cli(app, dsn, "--codec", "test_codecs:cli_codec", "history", "c3",
                               **keys)  # fmt: skip
    assert code == 0 and f"-> vetted {SECRET}" in out, out + err

    code, out, err = await cli(app, dsn, "show", "c3")  # no codec: the markers, never the value
    assert code == 0 and SECRET not in out and '"$codec": "zlib+aes-gcm"' in out, out + err
    code, out, err = await cli(app, dsn, "--codec", "test_codecs:cli_codec", "result", "c3",
                               TEST_CODEC_KEYS=f"k2={K2.hex()}")  # fmt: skip
    assert code == 1 and not out
    assert 'cannot decode a payload encoded by codec "zlib+aes-gcm" with key "k1"' in err, err
    assert "no key 'k1' in this process's keys (it has: k2)" in err, err
    code, out, err = await cli(app, dsn, "--codec", "test_codecs:SECRET", "show", "c3")
    assert code == 1
    assert "--codec test_codecs:SECRET: expected a Codec (name, encode, decode)" in err, err


def test_keys_rotate_and_tampering_is_caught() -> None:
    old = Payloads(AesGcm({"k1": K1}))
    rotated = Payloads(AesGcm({"k1": K1, "k2": K2}))  # the last key is the current one
    marker = old.encode({"a": SECRET})
    assert marker["key_id"] == "k1" and SECRET not in str(marker)
    assert rotated.decode(marker) == {"a": SECRET}
    assert rotated.encode(1)["key_id"] == "k2"
    tampered = {**marker, "data": marker["data"][:-6] + "AAAAA="}
    with pytest.raises(CodecError, match='codec "aes-gcm" with key "k1": authentication failed'):
        rotated.decode(tampered)
    with pytest.raises(CodecError, match="this process has no codec 'aes-gcm'"):
        Payloads(Compression()).decode(marker)
