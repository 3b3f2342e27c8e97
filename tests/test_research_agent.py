"""The durable AI agent example (python/examples/research_agent.py, docs/agents.md) with its
offline model: end to end, and with its worker killed (SIGKILL) while the tool hooks run,
after which another worker finishes it with the same entity as an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from helpers import SQL, Process, kill9, python, sleep_until, until, until_row
from hotmesh import FatalError, MemFlow

EXAMPLES = Path(__file__).resolve().parent.parent / "python" / "examples"
sys.path.insert(0, str(EXAMPLES))

import research_agent as agent  # noqa: E402

QUESTION = "Is PostgreSQL a good fit for durable workflows?"
REVIEW = {"accepted": True, "comment": "well sourced"}


async def awaiting_acceptance(mf: MemFlow, workflow_id: str) -> None:
    """Until the supervisor's answer waits for a person."""

    async def reached() -> bool:
        doc = await mf.workflow.get_handle(workflow_id).describe()
        assert doc["status"] not in ("failed", "cancelled"), doc
        return doc["context"].get("stage") == "awaiting acceptance" and bool(doc["waiting_on"])

    await until(reached, f"{workflow_id} to reach its answer", limit=60, every=0.1)


async def accepted_run(mf: MemFlow, workflow_id: str) -> tuple[Any, dict[str, Any]]:
    """Wait for the answer; a research lead takes the task from the inbox and accepts it.
    The result and the final entity."""
    await awaiting_acceptance(mf, workflow_id)
    task = await mf.human_tasks.claim_next(agent.REVIEWER, "lead@example.com")
    assert task is not None and task.job_id == workflow_id, task
    await mf.human_tasks.resolve(task.id, "lead@example.com", REVIEW)
    result = await mf.workflow.get_handle(workflow_id).result(timeout=60)
    return result, await mf.entity(workflow_id).get()


@pytest.mark.timeout(120)
async def test_research_agent_end_to_end(app: str, dsn: str, db: SQL) -> None:
    assert isinstance(agent.MODEL, agent.OfflineModel)
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    try:
        await agent.serve(mf)
        workflow_id = await agent.start(mf, QUESTION, "research-1")
        await awaiting_acceptance(mf, workflow_id)
        # the supervisor's answer waits in the research leads' inbox; nothing else is queued
        # (once the activation that asked has suspended: the question is recorded before it)
        await until_row(db, "select count(*) = 0 from tasks")
        [task] = db.rows(
            "select id, job_id, role, type, title, status, metadata, form, escalate_to,"
            " due_at - created_at from list_human_tasks(role => 'research-lead')"
        )
        assert task[1:] == (
            workflow_id,
            "research-lead",
            "acceptance",
            "Accept the research agent's answer",
            "open",
            {"question": QUESTION, "rounds": 3},
            agent.ACCEPT_FORM,
            "research-director",
            timedelta(days=2),
        )
        # an answer that does not fit the form is refused; the task stays open, the agent waits
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="accepted"):
            db.one("select resolve_human_task(%s, 'lead@example.com', '{\"ok\": 1}')", task[0])
        assert db.one("select status from human_tasks where id = %s", task[0]) == "open"
        assert await mf.workflow.get_handle(workflow_id).status() == "waiting"
        result, entity = await accepted_run(mf, workflow_id)
    finally:
        await mf.close(grace=2.0)

    answer = "Is PostgreSQL a good fit for durable workflows: yes, on balance. After round 3: "
    answer += "3 findings for, 3 doubts, 3 checked sources."
    assert result == {"answer": answer, "accepted": True, "rounds": 3}
    assert entity == {
        "question": QUESTION,
        "tasks": ["Find background", "Find evidence for", "Find evidence against"],
        "round": 3,
        "stage": "accepted",
        "summary": "After round 3: 3 findings for, 3 doubts, 3 checked sources.",
        "memory": [
            {
                "round": n,
                "summary": f"After round {n}: 3 findings for, 3 doubts, 3 checked sources.",
            }
            for n in (1, 2, 3)
        ],
        "decisions": [
            {"round": 1, "decision": "continue"},
            {"round": 2, "decision": "continue"},
            {"round": 3, "decision": "done"},
        ],
        "answer": answer,
        "review": REVIEW,
    }
    # rounds 1-2 in run 1, round 3 in run 2 (continue_as_new)
    assert db.rows("select run, status, args from workflow_runs('research-1') order by run") == [
        (1, "continued", [QUESTION]),
        (2, "completed", [QUESTION, 3]),
    ]
    # each round's three tools wrote their own findings from their own hook thread, then the
    # reflector condensed and removed them
    changes = db.rows("select thread, op, path from entity_history('research-1') order by version")
    tools = [(t, p) for t, op, p in changes if op == "set" and p and p[0] == "findings"]
    assert sorted(p[1] for _, p in tools) == sorted(list(agent.ROLES) * 3)
    assert len({t for t, _ in tools}) >= 3 and all(t.startswith("h") for t, _ in tools)
    assert [p for _, op, p in changes if op == "delete"] == [["findings"]] * 3
    # every model call went through the limited queue, with its timeout, and ran once:
    # 1 plan + 3 rounds x (3 tools + reflector + supervisor)
    calls = db.rows(
        "select input ->> 0 from steps where kind = 'activity' and name = 'ask_model'"
        " union all select input ->> 0 from run_steps"
        " where kind = 'activity' and name = 'ask_model'"
    )
    assert sorted(role for (role,) in calls) == sorted(
        ["planner"] + ["optimist", "skeptic", "verifier", "reflector", "supervisor"] * 3
    )
    limits = db.rows(
        "select max_running, rate, per from get_queue_limits() where task_queue = 'llm'"
    )
    assert [(m, r, p.total_seconds()) for m, r, p in limits] == [(2, 10, 1.0)]


def spawn_worker(dsn: str, app: str, log: Path, **env: str) -> Process:
    """python/examples/research_agent.py worker, as its own process (lease 1 s)."""
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HOTMESH_AGENT")},
        "DATABASE_URL": dsn,
        "HOTMESH_APP": app,
        "HOTMESH_AGENT_LEASE": "1",
        **env,
    }
    return python(str(EXAMPLES / "research_agent.py"), "worker", env=environment, stdout=log)


@pytest.mark.timeout(180)
async def test_worker_killed_while_tools_run(
    app: str, dsn: str, db: SQL, mf: MemFlow, tmp_path: Path
) -> None:
    """The worker dies (SIGKILL) while round 1's tool hooks run: some have written their
    findings, the others are in the middle of their model call. Another worker finishes the
    workflow, and its entity is the one an uninterrupted run ends with."""
    first = spawn_worker(dsn, app, tmp_path / "first.log", HOTMESH_AGENT_OFFLINE_DELAY="0.4")
    try:
        await agent.start(mf, QUESTION, "killed")
        # two of the three tools have written (the queue runs two model calls at once), the
        # third's call runs
        await until_row(
            db,
            "select count(*) between 1 and 2 from jobs, jsonb_object_keys(context -> 'findings')"
            " where id = 'killed' and jsonb_typeof(context -> 'findings') = 'object'"
            " group by id",
            limit=60,
        )
        leased = db.rows(
            "select kind, thread from tasks where state = 'leased' and lease_owner like %s",
            f"%:{first.pid}:%",
        )
        running = db.rows(
            "select thread from threads where job_id = 'killed' and status <> 'completed'"
        )
        kill9(first)
    finally:
        if first.poll() is None:
            kill9(first)
    assert leased, "the first worker held no lease when it was killed"
    assert any(thread.startswith("h") for (thread,) in running), running
    assert "findings" in db.one("select context from jobs where id = 'killed'")

    second = spawn_worker(dsn, app, tmp_path / "second.log")
    try:
        killed_result, killed_entity = await accepted_run(mf, "killed")
        # the uninterrupted run, on the same worker
        await agent.start(mf, QUESTION, "uninterrupted")
        result, entity = await accepted_run(mf, "uninterrupted")
    finally:
        kill9(second)
    assert killed_result == result
    assert killed_entity == entity, json.dumps([killed_entity, entity], indent=1)
    assert db.rows("select id, status from jobs order by id") == [
        ("killed", "completed"),
        ("uninterrupted", "completed"),
    ]
    # nothing recorded ran twice: the same model calls in both
    calls = (
        "select count(*) from (select job_id from steps where name = 'ask_model'"
        " union all select job_id from run_steps where name = 'ask_model') as s"
        " where job_id = %s"
    )
    assert db.one(calls, "killed") == db.one(calls, "uninterrupted") == 16
    sleep_until(lambda: db.one("select count(*) from tasks") == 0, 10)


def test_docs_excerpts_are_the_example() -> None:
    """docs/agents.md quotes the example in illustration blocks: each is verbatim in it."""
    docs = (EXAMPLES.parent.parent / "docs" / "agents.md").read_text()
    source = (EXAMPLES / "research_agent.py").read_text()
    excerpts = re.findall(
        r"```python illustration\n# illustration: an excerpt[^\n]*\n(.*?)```", docs, flags=re.DOTALL
    )
    assert len(excerpts) == 3
    for excerpt in excerpts:
        assert excerpt in source, excerpt


class ModelEndpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat completions endpoint on 127.0.0.1 that answers as the offline
    model would; `fail` holds the statuses to answer first (a 503, a 401)."""

    requests: ClassVar[list[dict[str, Any]]] = []
    fail: ClassVar[list[int]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        if type(self).fail:
            self.send_error(type(self).fail.pop(0))
            return
        system, user = (m["content"] for m in body["messages"])
        content = agent.OfflineModel().complete(system, user)
        answer = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    ModelEndpoint.requests, ModelEndpoint.fail = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ModelEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(120)
async def test_openai_compatible_model(
    app: str, dsn: str, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment selects the HTTP model; a 503 is retried by the activity's policy, a
    401 fails at once; the agent ends as it does with the offline model."""
    monkeypatch.setenv("HOTMESH_AGENT_BASE_URL", endpoint)
    monkeypatch.setenv("HOTMESH_AGENT_API_KEY", "sk-test")
    monkeypatch.setenv("HOTMESH_AGENT_MODEL", "tiny")
    model = agent.configured_model()
    assert model == agent.OpenAICompatible(base_url=endpoint, model="tiny", api_key="sk-test")
    monkeypatch.setattr(agent, "MODEL", model)

    ModelEndpoint.fail = [401]
    with pytest.raises(FatalError, match="refused the request"):
        model.complete(agent.INSTRUCTIONS["planner"], "Question: q")
    with pytest.raises(FatalError, match="http"):
        agent.OpenAICompatible(base_url="file:///etc", model="m").complete("a", "b")

    ModelEndpoint.fail = [503]  # the planner's first attempt
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    try:
        await agent.serve(mf)
        await agent.start(mf, QUESTION, "over-http")
        result, entity = await accepted_run(mf, "over-http")
    finally:
        await mf.close(grace=2.0)
    assert result["rounds"] == 3 and entity["stage"] == "accepted"
    assert entity["tasks"] == ["Find background", "Find evidence for", "Find evidence against"]
    calls = ModelEndpoint.requests[1:]  # after the 401
    assert len(calls) == 1 + 1 + 15  # the planner twice (503, then 200), then 3 x 5 calls
    assert {c["path"] for c in calls} == {"/v1/chat/completions"}
    assert {c["auth"] for c in calls} == {"Bearer sk-test"}
    assert (
        calls[0]["body"]
        == calls[1]["body"]
        == {
            "model": "tiny",
            "temperature": 0,
            "messages": [
                {"role": "system", "content": agent.INSTRUCTIONS["planner"]},
                {"role": "user", "content": f"Question: {QUESTION}"},
            ],
        }
    )


@pytest.mark.timeout(120)
async def test_nobody_accepts(app: str, dsn: str, db: SQL) -> None:
    """Nobody answers in 2 days: the task goes to the director's inbox (escalation); nobody
    there in 2 more days, and the agent ends `unreviewed`. The engine's clock is moved by
    the workers that come later (hotmesh.fake_now), as a worker on a later day would be."""
    mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
    try:
        await agent.serve(mf)
        await agent.start(mf, QUESTION, "unanswered")
        await awaiting_acceptance(mf, "unanswered")
    finally:
        await mf.close(grace=2.0)
    (created,) = db.rows("select created_at from human_tasks")[0]

    async def worker_on(day: float, until_sql: str) -> None:
        at = created + timedelta(days=day)
        clocked = make_conninfo(dsn, options=f"-c hotmesh.fake_now={at.isoformat()}")
        later = await MemFlow.init(app_id=app, dsn=clocked, migrate=False)
        try:
            await agent.serve(later)
            await until_row(db, until_sql)
        finally:
            await later.close(grace=2.0)

    await worker_on(2.01, "select role = 'research-director' from human_tasks")
    assert db.rows("select status, role from list_human_tasks(role => 'research-lead')") == []
    assert db.rows("select status from list_human_tasks(role => 'research-director')") == [
        ("open",)
    ]
    await worker_on(4.02, "select status = 'completed' from jobs where id = 'unanswered'")
    assert db.one("select status from human_tasks") == "expired"
    assert db.one("select result from jobs") == {
        "answer": db.one("select context ->> 'answer' from jobs"),
        "accepted": False,
        "rounds": 3,
    }
    assert db.one("select context ->> 'stage' from jobs") == "unreviewed"
