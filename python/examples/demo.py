"""`make demo`: the seed's AI-assisted claims review, end to end, on Postgres.

Two claims are filed. Each `claims_review` workflow sets its entity (my_app.jobs.context),
runs two hooks in parallel — `verify_coverage` (a legacy policy system) and
`generate_summary` (where an AI model would go) — which both write to the shared entity,
then asks a person for approval through a human task (my_app.human_tasks, docs/people.md).
The demo shows the reviewers' inbox, resolves A42's task from SQL with resolve_human_task, as
any application (or a person in psql) would, and shows the inbox again; B17 is then withdrawn
(cancelled from SQL, which cancels its task). It prints A42's final entity, its history, and
the seed's SQL query over in-flight claims.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import psycopg
from psycopg.types.string import TextLoader

from hotmesh import MemFlow, RetryPolicy, workflow

APP = "my_app"  # the schema the seed's SQL names: my_app.jobs


# -- activities: the outside world ---------------------------------------------------------


def lookup_policy(case_id: str) -> dict[str, object]:
    """A legacy policy system (a plain `def`: it runs in a thread)."""
    return {"policy": f"P-{case_id}", "covered": not case_id.startswith("X")}


def summarise(case_id: str, coverage: dict[str, object]) -> dict[str, object]:
    """Plug a real model in here. This stand-in is deterministic, so the demo is too."""
    verdict = "Verified coverage" if coverage["covered"] else "Not covered"
    return {"result": verdict, "confidence": 0.93, "case": case_id}


ACTIVITIES = [lookup_policy, summarise]
APPROVAL_FORM = {
    "type": "object",
    "required": ["approved"],
    "properties": {"approved": {"type": "boolean"}, "note": {"type": "string"}},
}
RETRIES = RetryPolicy(maximum_attempts=5, initial_interval=0.5, backoff_coefficient=2)


# -- hooks: stateless functions that work on the shared entity ------------------------------


async def verify_coverage(case_id: str) -> bool:
    acts = workflow.proxy_activities(activities=ACTIVITIES, retry_policy=RETRIES)
    coverage = await acts.lookup_policy(case_id)
    entity = await workflow.entity()
    await entity.merge({"coverage": coverage})
    await entity.append("notes", {"by": "verify_coverage", "note": "policy checked"})
    return bool(coverage["covered"])


async def generate_summary(case_id: str) -> str:
    acts = workflow.proxy_activities(activities=ACTIVITIES, retry_policy=RETRIES)
    entity = await workflow.entity()
    coverage = await acts.lookup_policy(case_id)
    summary = await acts.summarise(case_id, coverage)
    await entity.merge({"aiSummary": summary, "stage": "approval"})
    return str(summary["result"])


# -- the workflow ---------------------------------------------------------------------------


async def claims_review(case_id: str) -> dict[str, object]:
    entity = await workflow.entity()
    await entity.set({"caseId": case_id, "stage": "intake", "approved": False, "notes": []})

    # Verification and summarisation run in parallel, both writing to the same entity.
    await workflow.exec_hook_batch(
        [
            {"key": "verify", "options": {"workflow_name": "verify_coverage", "args": [case_id]}},
            {"key": "summary", "options": {"workflow_name": "generate_summary", "args": [case_id]}},
        ]
    )

    # Ask a person for the sign-off: a task in the reviewers' inbox, for days if need be (no
    # worker slot is held meanwhile); the answer must match the form.
    run = workflow.get_context().workflow_id.rsplit("-", 1)[-1]
    answer = await workflow.ask_human(
        f"Approve claim {case_id}",
        role="claims-approver",
        description="Coverage verified and summarised; see the entity.",
        metadata={"case": case_id, "run": run},
        due="3 days",
        form=APPROVAL_FORM,
    )
    await entity.merge({"approved": answer["approved"] is True, "stage": "complete"})
    await entity.increment("reviews", 1)
    result: dict[str, object] = await entity.get()
    return result


# -- the demo ---------------------------------------------------------------------------------


# The seed's query over in-flight claims, narrowed to this run's ids, so a second `make demo`
# does not list the first run's claims.
SEED_QUERY = """SELECT id, context->>'stage', context->'aiSummary'->>'result'
FROM my_app.jobs
WHERE entity = 'claims-review'
  AND context->>'stage' != 'complete'
  AND id LIKE %s"""

# The reviewers' inbox, as a review screen would query it (this run's tasks only).
INBOX_QUERY = """select id, job_id, title, status, priority, resolved_by, answer
from my_app.list_human_tasks(role => 'claims-approver', metadata => %s::jsonb)"""

# Every column read as the text Postgres sends, so rows print as psql prints them
# (t/f, JSON as stored, timestamps with their zone), not as Python reprs.
_AS_TEXT = psycopg.adapt.AdaptersMap(psycopg.adapters)
for _type in psycopg.postgres.types:
    _AS_TEXT.register_loader(_type.oid, TextLoader)
    if _type.array_oid:
        _AS_TEXT.register_loader(_type.array_oid, TextLoader)
_NUMBERS = {psycopg.postgres.types[name].oid for name in ("int2", "int4", "int8", "numeric")}


def psql(
    conn: psycopg.Connection[tuple[object, ...]], title: str, query: str, *params: str
) -> None:
    """Run `query` and print it, with its rows, as psql's default (aligned) output would."""
    cur = psycopg.ClientCursor(conn)
    text = cur.mogrify(query, params or None)  # the statement exactly as sent
    print(f"\n-- {title}\npsql> {text.strip()};")
    cur.execute(text)  # type: ignore[call-overload]
    names = [column.name for column in cur.description or ()]
    numeric = [column.type_code in _NUMBERS for column in cur.description or ()]
    rows = [["" if value is None else str(value) for value in row] for row in cur.fetchall()]
    widths = [max([len(name)] + [len(row[i]) for row in rows]) for i, name in enumerate(names)]
    header = " | ".join(name.center(width) for name, width in zip(names, widths, strict=True))
    print((" " + header).rstrip())
    print("-" + "-+-".join("-" * width for width in widths) + "-")
    for row in rows:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ]
        print((" " + " | ".join(cells)).rstrip())
    print(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")


async def wait_until_waiting(mf: MemFlow, workflow_id: str) -> None:
    """Poll (demo only) until the workflow parks on its approval wait."""
    for _ in range(600):
        if (await mf.workflow.get_handle(workflow_id).status()) == "waiting":
            doc = await mf.workflow.get_handle(workflow_id).describe()
            if doc["context"].get("stage") == "approval" and not doc["tasks"]:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{workflow_id} never reached the approval step")


async def main() -> None:
    dsn = os.environ.get("DATABASE_URL", "")
    suffix = uuid.uuid4().hex[:6]  # this run's ids: claim-A42-<suffix>, claim-B17-<suffix>
    this_run = f"claim-%-{suffix}"
    mf = await MemFlow.init(app_id=APP, dsn=dsn)
    try:
        await mf.worker.create(
            task_queue="agents", workflow=[claims_review, verify_coverage, generate_summary]
        )
        ids = {}
        for case_id in ("A42", "B17"):
            handle = await mf.workflow.start(
                workflow_name="claims_review",
                args=[case_id],
                task_queue="agents",
                entity="claims-review",
                workflow_id=f"claim-{case_id}-{suffix}",
            )
            ids[case_id] = handle.workflow_id
            print(f"started {handle.workflow_id}")
        for workflow_id in ids.values():
            await wait_until_waiting(mf, workflow_id)

        with psycopg.connect(dsn, autocommit=True, context=_AS_TEXT) as conn:
            psql(conn, "claims in flight (the seed's query)", SEED_QUERY, this_run)
            inbox = json.dumps({"run": suffix})
            psql(conn, "the reviewers' inbox: a task per claim", INBOX_QUERY, inbox)
            [task] = await mf.human_tasks.list(
                role="claims-approver", metadata={"case": "A42", "run": suffix}
            )
            psql(
                conn,
                "a reviewer approves A42 from SQL: the answer reaches the workflow",
                "select id, status, resolved_by, answer"
                " from my_app.resolve_human_task(%s, 'ann', %s)",
                str(task.id),
                '{"approved": true, "note": "coverage verified"}',
            )
            final = await mf.workflow.get_handle(ids["A42"]).result(timeout=30)
            print(f"\nA42 finished; its entity:\n{json.dumps(final, indent=2)}")
            psql(
                conn,
                "A42's row in my_app.jobs",
                "select id, entity, status, completed_at from my_app.jobs where id = %s",
                ids["A42"],
            )
            psql(
                conn,
                "A42's entity history: every change, by thread (h1, h2: the hooks)",
                "select version, thread, seq, op, path, value from my_app.entity_history(%s)",
                ids["A42"],
            )
            psql(conn, "claims still in flight (the seed's query again)", SEED_QUERY, this_run)
            psql(conn, "the inbox now: B17's task only", INBOX_QUERY, inbox)
            psql(
                conn,
                "B17 is withdrawn: cancelled from SQL (code 410, nothing of it runs again)",
                "select my_app.cancel_workflow(%s, 'claim withdrawn')",
                ids["B17"],
            )
            psql(
                conn,
                "B17's task was cancelled with it",
                "select id, job_id, status from my_app.list_human_tasks(status => 'cancelled',"
                " metadata => %s::jsonb)",
                inbox,
            )
    finally:
        await mf.close()


if __name__ == "__main__":
    asyncio.run(main())
