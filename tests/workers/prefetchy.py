"""A worker process for tests/test_prefetch.py: it serves `held` workflows, whose one inline
activity never returns, so the tasks it starts stay running and those it claims ahead stay in
its buffer (not started) until it dies.

    python tests/workers/prefetchy.py DSN APP QUEUE CONCURRENCY PREFETCH PREFETCH_LEASE

PREFETCH_LEASE (seconds) replaces the 5-second default, so that on the test's frozen engine
clock the worker does not give its buffer back (at half that lease, on its own clock) before
the test kills it.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from hotmesh import MemFlow, worker, workflow


async def forever() -> None:
    await asyncio.sleep(3600)


async def held() -> None:
    await workflow.proxy_activities(activities=[forever]).forever()


async def main(dsn: str, app: str, queue: str, concurrency: int, prefetch: int) -> None:
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    await mf.worker.create(
        task_queue=queue, workflow=held, concurrency=concurrency, prefetch=prefetch, lease=120
    )
    print("ready", flush=True)
    await mf.run_until_signal(grace=1.0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    worker._PREFETCH_LEASE = float(sys.argv[6])
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
