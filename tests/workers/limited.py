"""A worker process for the flow-control tests (tests/test_flow_control.py): several of them
serve the activity `tracked` on one limited queue together.

    python tests/workers/limited.py DSN APP QUEUE CONCURRENCY

`tracked(key)` records, from inside the activity, how many runs are inside at that moment:
it adds itself to the app's `inside` table, counts the rows there (all, and those of its
key) into `observed`, stays a moment, and removes itself. The last run to enter a set of
overlapping runs counts all of them, so the largest count is the most that ever ran at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from hotmesh import MemFlow

_POOL: list[AsyncConnectionPool] = []
_APP: list[str] = []
_STAY = 0.05  # seconds a run stays inside: long enough for the runs to overlap


async def tracked(key: str) -> int:
    pool, app = _POOL[0], sql.Identifier(_APP[0])
    async with pool.connection() as conn:
        cur = await conn.execute(
            sql.SQL("insert into {}.inside (key) values (%s) returning id").format(app), (key,)
        )
        row = await cur.fetchone()
        assert row is not None
        await conn.execute(
            sql.SQL(
                "insert into {0}.observed (key, on_queue, on_key)"
                " select %s, count(*), count(*) filter (where key = %s) from {0}.inside"
            ).format(app),
            (key, key),
        )
    await asyncio.sleep(_STAY)
    async with pool.connection() as conn:
        await conn.execute(sql.SQL("delete from {}.inside where id = %s").format(app), (row[0],))
    return int(row[0])


async def main(dsn: str, app: str, queue: str, concurrency: int) -> None:
    _APP.append(app)
    pool = AsyncConnectionPool(dsn, min_size=2, max_size=concurrency,
                               kwargs={"autocommit": True}, open=False)  # fmt: skip
    await pool.open()
    _POOL.append(pool)
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    await mf.worker.register_activities(
        task_queue=queue, activities=[tracked], concurrency=concurrency
    )
    print("ready", flush=True)
    try:
        await mf.run_until_signal(grace=2.0)
    finally:
        await pool.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
