"""`make demo`: one workflow end to end against Postgres.

A claims-intake workflow runs two activities inline (recorded in Postgres as it goes), sleeps
durably, retries a flaky legacy API with backoff computed in SQL, and returns. The demo then
prints the result and the workflow's row in demo.jobs and its steps, as psql would show them.
Run it with `make demo` (which starts a private Postgres when DATABASE_URL is not set).
"""

from __future__ import annotations

import asyncio
import os
import uuid

import psycopg

from hotmesh import MemFlow, RetryPolicy, workflow

APP = "demo"
_legacy_calls = 0


def lookup_policy(case_id: str) -> dict[str, object]:
    """Stands in for a legacy policy system (a plain `def`: runs in a thread)."""
    return {"case_id": case_id, "policy": "P-" + case_id[-2:], "covered": True}


def legacy_status_api(case_id: str) -> str:
    """A flaky legacy API: fails twice, then answers. The engine retries it."""
    global _legacy_calls
    _legacy_calls += 1
    if _legacy_calls < 3:
        raise ConnectionError(f"legacy system timed out (call {_legacy_calls})")
    return "open"


async def summarise(policy: dict[str, object]) -> str:
    """Where an AI model would summarise the case (deterministic here)."""
    return f"Policy {policy['policy']} covers case {policy['case_id']}."


async def claims_intake(case_id: str) -> dict[str, object]:
    acts = workflow.proxy_activities(
        activities=[lookup_policy, legacy_status_api, summarise],
        retry_policy=RetryPolicy(maximum_attempts=5, initial_interval=0.2, backoff_coefficient=2),
    )
    policy = await acts.lookup_policy(case_id)
    status, summary = await asyncio.gather(acts.legacy_status_api(case_id), acts.summarise(policy))
    await workflow.sleep_for("1 second")  # durable: survives a restart of this process
    return {"case_id": case_id, "status": status, "summary": summary}


async def main() -> None:
    dsn = os.environ.get("DATABASE_URL", "")
    mf = await MemFlow.init(app_id=APP, dsn=dsn)
    try:
        await mf.worker.create(task_queue="claims", workflow=claims_intake)
        workflow_id = f"claim-A42-{uuid.uuid4().hex[:6]}"
        handle = await mf.workflow.start(
            workflow_name="claims_intake",
            args=["A42"],
            task_queue="claims",
            workflow_id=workflow_id,
        )
        print(f"started workflow {workflow_id}")
        result = await handle.result(timeout=60)
        print(f"result: {result}")
        print(f"legacy API calls (2 failures retried with backoff): {_legacy_calls}\n")
    finally:
        await mf.close()

    with psycopg.connect(dsn) as conn:
        for query in (
            "select id, status, workflow_name, result from demo.jobs where id = %s",
            "select seq, kind, name, status, attempt, output from demo.steps"
            " where job_id = %s order by seq",
        ):
            print("psql> " + query.replace("%s", f"'{workflow_id}'"))
            cur = conn.execute(query, (workflow_id,))
            names = [d.name for d in cur.description or []]
            for row in cur.fetchall():
                print("  " + " | ".join(f"{n}={v}" for n, v in zip(names, row, strict=True)))
            print()


if __name__ == "__main__":
    asyncio.run(main())
