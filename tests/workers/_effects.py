"""The side-effect counter of the crash tests' worker processes: every run of `effect` inserts
one row into the app's `effects` table (tests/helpers.py, `create_effects`), so a test counts
how often an activity really ran, by which process and in which attempt.

A worker script sets CONFIG (dsn, app, and `hang`: the call that blocks after its row until the
process is killed) before it starts."""

from __future__ import annotations

import os
import time

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from hotmesh import activity

CONFIG = {"dsn": "", "app": "", "hang": ""}
_POOL: list[AsyncConnectionPool] = []  # the asyncio workers' one pool, made on first use


def insert(name: str) -> tuple[sql.Composed, tuple[str, str, int, int]]:
    """The statement and parameters that record one run of the current activity."""
    info = activity.info()
    statement = sql.SQL(
        "insert into {}.effects (job_id, name, attempt, pid) values (%s, %s, %s, %s)"
    ).format(sql.Identifier(CONFIG["app"]))
    return statement, (info.workflow_id, name, info.attempt, os.getpid())


def effect(name: str) -> str:
    """The side effect: one row per run, then (when told to) hang until killed."""
    with psycopg.connect(CONFIG["dsn"], autocommit=True) as conn:
        conn.execute(*insert(name))
    if name == CONFIG["hang"]:
        time.sleep(3600)
    return f"{name} done"


async def pooled_effect(name: str) -> str:
    """`effect` for the asyncio workers (fleet, upgrade): one row per run through a pool the
    process's activities share. A failed insert drops the connections a database restart
    broke before it raises, so the activity's next attempt finds a fresh one."""
    if not _POOL:
        pool = AsyncConnectionPool(
            CONFIG["dsn"], min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
        )
        _POOL.append(pool)
        await pool.open()
    pool = _POOL[0]
    try:
        async with pool.connection() as conn:
            await conn.execute(*insert(name))
    except Exception:
        await pool.check()
        raise
    return f"{name} done"


async def close_pool() -> None:
    """Closes the pool pooled_effect made, if it made one (at a worker's exit)."""
    while _POOL:
        await _POOL.pop().close()
