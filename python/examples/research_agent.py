"""`make demo-agent`: the seed's durable AI agent, a research agent with permanent memory.

One workflow, `research_agent`, is the **planner** and the **supervisor**; the other roles are
hooks, threads of the same workflow that share its entity (my_app.jobs.context):

1. the planner asks the model for a task list and seeds the entity with it;
2. three **tool hooks** run in parallel: an `optimist`, a `skeptic` and a source `verifier`;
   each asks the model about every task and writes its findings into the entity
   (`findings.<role>`);
3. a **reflector** hook condenses the round's findings into a summary (`summary`, and one line
   per round in `memory`) and clears the raw findings;
4. the supervisor asks the model whether another round is needed; a long loop goes on in a new
   run (`workflow.continue_as_new`: same workflow id and entity, empty history);
5. a person is asked to accept the final answer: a human task (`workflow.ask_human`) in the
   inbox of role `research-lead`, answered from SQL with `resolve_human_task`.

Every model call is the activity `ask_model` on queue `llm`, with a retry policy, a
`start_to_close` timeout and the queue's rate limit (`mf.queue.set_limits`), so the model's
API sees at most 2 calls at once and 10 a second however many workers run. The model is
pluggable: with `HOTMESH_AGENT_BASE_URL` set, an OpenAI-compatible chat completions endpoint
(`HOTMESH_AGENT_API_KEY`, `HOTMESH_AGENT_MODEL`); otherwise `OfflineModel`, a deterministic
stand-in shipped here, which is what the tests use. Only hotmesh's public API is used.

    python python/examples/research_agent.py ["question"]   the demo (make demo-agent)
    python python/examples/research_agent.py worker         a worker for both queues

DATABASE_URL (else the libpq variables) names the database; HOTMESH_APP the app (my_app).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

# python/examples/demo.py: printing SQL and its rows as psql does
from demo import _AS_TEXT, psql
from psycopg import sql

from hotmesh import FatalError, MemFlow, RetryPolicy, TimeoutFailure, workflow

APP = os.environ.get("HOTMESH_APP", "my_app")
QUEUE = "research"  # the workflow and its hooks
MODEL_QUEUE = "llm"  # every model call: limited to what the model's API allows
ROLES = ("optimist", "skeptic", "verifier")  # the tool hooks, run in parallel
ROUNDS_PER_RUN = 2  # rounds in one run of the workflow; then continue_as_new
MAX_ROUNDS = 6  # the supervisor's hard stop, whatever the model says
REVIEWER = "research-lead"  # the role whose inbox gets the answer to accept
ESCALATE_TO = "research-director"
# The answer a reviewer gives (resolve_human_task checks it against this JSON schema).
ACCEPT_FORM = {
    "type": "object",
    "required": ["accepted"],
    "properties": {"accepted": {"type": "boolean"}, "comment": {"type": "string"}},
}

# -- the model: pluggable ---------------------------------------------------------------------

INSTRUCTIONS = {
    "planner": "You plan research. Answer with 3 short research tasks, one per line.",
    "optimist": "You argue for the question's most favourable reading. For each task, one line: "
    "'<task>: <finding>'.",
    "skeptic": "You look for what could be wrong. For each task, one line: '<task>: <finding>'.",
    "verifier": "You check sources. For each task, one line: '<task>: <source and whether it "
    "holds>'.",
    "reflector": "Condense the findings and the summary so far into one short paragraph.",
    "supervisor": "Decide whether the research is done. Answer 'DONE: <the final answer, in "
    "two sentences>' or 'CONTINUE: <what is missing>'.",
}


class Model(Protocol):
    """What the agent needs of a language model: an answer to one prompt."""

    @property
    def name(self) -> str: ...

    def complete(self, instructions: str, prompt: str) -> str: ...


@dataclass(frozen=True)
class OpenAICompatible:
    """A chat completions endpoint: OpenAI, or any server that speaks its API (vLLM, Ollama,
    llama.cpp, LiteLLM, ...). `base_url` ends before /chat/completions."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0

    @property
    def name(self) -> str:
        return f"{self.model} at {self.base_url}"

    def complete(self, instructions: str, prompt: str) -> str:
        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": instructions},
                {"role": "user", "content": prompt},
            ],
        }
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if not self.base_url.startswith(("http://", "https://")):
            raise FatalError(
                f"HOTMESH_AGENT_BASE_URL must be an http(s) URL, not {self.base_url!r}"
            )
        request = urllib.request.Request(  # noqa: S310 (the scheme is checked above)
            self.base_url.rstrip("/") + "/chat/completions",
            data=json.dumps(body).encode(),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                answer = json.load(response)
        except urllib.error.HTTPError as error:
            # A request the endpoint refuses (bad key, unknown model) fails at once; a 429 or a
            # 5xx is retried by the activity's retry policy.
            if 400 <= error.code < 500 and error.code not in (408, 409, 429):
                raise FatalError(f"model endpoint refused the request: {error}") from error
            raise
        return str(answer["choices"][0]["message"]["content"]).strip()


class OfflineModel:
    """A deterministic stand-in for a model: the same prompt always gets the same answer, so
    runs can be compared. It plans three tasks and asks for three rounds of research.
    `delay` seconds per answer stand in for a real model's latency."""

    name = "offline"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def complete(self, instructions: str, prompt: str) -> str:
        if self.delay:
            time.sleep(self.delay)
        role = next(r for r, text in INSTRUCTIONS.items() if text == instructions)
        fields = _fields(prompt)
        question = fields.get("Question", "").rstrip("?")
        tasks = [line[2:] for line in prompt.splitlines() if line.startswith("- ")]
        round_ = int(fields.get("Round", "1"))
        if role == "planner":
            return "1. Find background\n2. Find evidence for\n3. Find evidence against"
        if role in ROLES:
            stance = {
                "optimist": "supports it",
                "skeptic": "leaves a doubt",
                "verifier": "is backed by a source",
            }[role]
            return "\n".join(f"{task}: round {round_} {stance}" for task in tasks)
        if role == "reflector":
            counts = {r: prompt.count(f"[{r}]") for r in ROLES}
            return (
                f"After round {round_}: {counts['optimist']} findings for, "
                f"{counts['skeptic']} doubts, {counts['verifier']} checked sources."
            )
        if round_ < 3:
            return f"CONTINUE: round {round_} left doubts; look again."
        return f"DONE: {question}: yes, on balance. {fields.get('Summary', '')}".strip()


def _fields(prompt: str) -> dict[str, str]:
    """The `Name: value` lines of a prompt."""
    found = re.findall(r"^([A-Z][a-z]+): (.*)$", prompt, flags=re.MULTILINE)
    return {name: value for name, value in found}


def configured_model() -> Model:
    """The model the environment names (HOTMESH_AGENT_BASE_URL, HOTMESH_AGENT_API_KEY,
    HOTMESH_AGENT_MODEL), else the offline one (HOTMESH_AGENT_OFFLINE_DELAY: its latency)."""
    base_url = os.environ.get("HOTMESH_AGENT_BASE_URL")
    if base_url:
        return OpenAICompatible(
            base_url=base_url,
            model=os.environ.get("HOTMESH_AGENT_MODEL", "gpt-4o-mini"),
            api_key=os.environ.get("HOTMESH_AGENT_API_KEY"),
        )
    return OfflineModel(delay=float(os.environ.get("HOTMESH_AGENT_OFFLINE_DELAY", "0")))


MODEL: Model = configured_model()


# -- the activity: every model call -------------------------------------------------------------


def ask_model(role: str, prompt: str) -> str:
    """One model call (a plain `def`: it runs in a thread of the worker)."""
    return MODEL.complete(INSTRUCTIONS[role], prompt)


# Model calls fail (rate limits, timeouts, a 503): retry with backoff, and give each attempt at
# most 2 minutes (a call that hangs is failed by the database and retried, whatever its worker).
MODEL_RETRIES = RetryPolicy(maximum_attempts=5, initial_interval=1, backoff_coefficient=2,
                            maximum_interval=30)  # fmt: skip
MODEL_TIMEOUT = "2 minutes"


def model() -> Any:
    """The durable handle to `ask_model` on the model's queue."""
    return workflow.proxy_activities(
        activities=[ask_model],
        task_queue=MODEL_QUEUE,
        retry_policy=MODEL_RETRIES,
        start_to_close=MODEL_TIMEOUT,
    )


def prompt(**fields: Any) -> str:
    """A prompt: `Name: value` lines; a list becomes `- item` lines under its name."""
    lines = []
    for name, value in fields.items():
        if isinstance(value, list):
            lines.append(f"{name.capitalize()}:")
            lines.extend(f"- {item}" for item in value)
        else:
            lines.append(f"{name.capitalize()}: {value}")
    return "\n".join(lines)


def items(answer: str) -> list[str]:
    """The non-empty lines of a model's answer, list markers (1. - *) removed."""
    lines = (re.sub(r"^\s*(\d+[.)]|[-*])\s*", "", line).strip() for line in answer.splitlines())
    return [line for line in lines if line]


# -- the tool hooks: they share the workflow's entity --------------------------------------------


async def perspective(role: str, round_: int) -> int:
    """A tool: asks the model about every task, from its role's point of view, and writes its
    findings under `findings.<role>` (its own key, so parallel tools never clash)."""
    entity = await workflow.entity()
    memory = await entity.get()
    answer = await model().ask_model(
        role,
        prompt(
            question=memory["question"],
            round=round_,
            tasks=memory["tasks"],
            summary=memory.get("summary", "none yet"),
        ),
    )
    findings = items(answer)
    await entity.set(findings, path=["findings", role])
    return len(findings)


async def optimist(round_: int) -> int:
    return await perspective("optimist", round_)


async def skeptic(round_: int) -> int:
    return await perspective("skeptic", round_)


async def verifier(round_: int) -> int:
    return await perspective("verifier", round_)


async def reflector(round_: int) -> str:
    """Condenses the round's findings and the summary so far into a new summary: the raw
    findings are removed, one line per round stays in `memory`."""
    entity = await workflow.entity()
    memory = await entity.get()
    notes = [
        f"[{role}] {note}" for role in ROLES for note in memory.get("findings", {}).get(role, [])
    ]
    summary = await model().ask_model(
        "reflector",
        prompt(
            question=memory["question"],
            round=round_,
            summary=memory.get("summary", "none yet"),
            findings=notes,
        ),
    )
    await entity.merge({"summary": summary, "stage": "supervising"})
    await entity.append("memory", {"round": round_, "summary": summary})
    await entity.delete("findings")
    return str(summary)


# -- the planner and supervisor: the workflow -------------------------------------------------


async def research_agent(question: str, round_: int = 1) -> dict[str, Any]:
    """Researches `question` round after round until the supervisor is satisfied, then asks
    a person to accept the answer. `round_` is where this run starts (continue_as_new)."""
    entity = await workflow.entity()
    if round_ == 1:  # the planner: seed the entity with a task list
        await entity.set({"question": question, "stage": "planning", "round": 0})
        tasks = items(await model().ask_model("planner", prompt(question=question)))
        await entity.merge({"tasks": tasks[:5], "memory": [], "decisions": []})

    first = round_
    while True:
        await entity.merge({"round": round_, "stage": "researching"})
        await workflow.exec_hook_batch(
            [{"key": role, "options": {"workflow_name": role, "args": [round_]}} for role in ROLES]
        )
        await workflow.exec_hook(workflow_name="reflector", args=[round_])

        # The supervisor reads the condensed memory and decides: done, or another round?
        summary = await entity.get("summary")
        reply = await model().ask_model(
            "supervisor", prompt(question=question, round=round_, summary=summary)
        )
        done = not reply.upper().startswith("CONTINUE") or round_ >= MAX_ROUNDS
        answer = reply.split(":", 1)[-1].strip()
        await entity.append(
            "decisions", {"round": round_, "decision": "done" if done else "continue"}
        )
        if done:
            break
        round_ += 1
        if round_ - first >= ROUNDS_PER_RUN:  # a long loop: go on in a fresh run
            workflow.continue_as_new(question, round_)

    # A person accepts (or rejects) the answer: a human task in the inbox of the research
    # leads, written with the wait. The workflow holds no worker meanwhile, for days if need be.
    await entity.merge({"answer": answer, "stage": "awaiting acceptance"})
    try:
        review = await workflow.ask_human(
            "Accept the research agent's answer",
            role=REVIEWER,
            description=f"{question}\n\n{answer}",
            type="acceptance",
            metadata={"question": question, "rounds": round_},
            form=ACCEPT_FORM,
            due="2 days",
            escalate_to=ESCALATE_TO,  # nobody in 2 days: the director's inbox, 2 days more
        )
    except TimeoutFailure:  # nobody answered, even after the escalation
        await entity.merge({"stage": "unreviewed"})
        return {"answer": answer, "accepted": False, "rounds": round_}
    accepted = review["accepted"] is True
    await entity.merge({"review": review, "stage": "accepted" if accepted else "rejected"})
    return {"answer": answer, "accepted": accepted, "rounds": round_}


WORKFLOWS: list[Callable[..., Any]] = [research_agent, optimist, skeptic, verifier, reflector]


async def serve(mf: MemFlow, lease: float = 30.0) -> None:
    """Serve the agent from this process: the workflow and its hooks on `research`, the model
    calls on `llm`, limited to 2 at once and 10 a second across every worker."""
    await mf.queue.set_limits(MODEL_QUEUE, max_running=2, rate=10, per="1 second")
    await mf.worker.create(task_queue=QUEUE, workflow=WORKFLOWS, lease=lease)
    await mf.worker.register_activities(task_queue=MODEL_QUEUE, activities=[ask_model], lease=lease)


async def start(mf: MemFlow, question: str, workflow_id: str | None = None) -> str:
    """Start researching `question`; returns the workflow id."""
    handle = await mf.workflow.start(
        workflow_name="research_agent",
        args=[question],
        task_queue=QUEUE,
        entity="research",
        workflow_id=workflow_id or f"research-{uuid.uuid4().hex[:8]}",
    )
    return handle.workflow_id


# -- the demo ---------------------------------------------------------------------------------


REVIEW = {"accepted": True, "comment": "well sourced"}  # what the demo's lead answers
RUNS = sql.SQL("select run, status, steps, args from {}.workflow_runs(%s) order by run").format(
    sql.Identifier(APP)
)


def _shown(value: Any, width: int = 70) -> str:
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


async def demo(question: str) -> None:
    mf = await MemFlow.init(app_id=APP)
    try:
        await serve(mf)
        workflow_id = await start(mf, question)
        print(f"started {workflow_id} (model: {MODEL.name})\n")
        print("the entity's evolution (version, thread, op, path, value):")
        shown = 0
        handle = mf.workflow.get_handle(workflow_id)
        deadline = time.monotonic() + 300
        while True:
            for change in (await mf.entity.history(workflow_id))[shown:]:
                path = ".".join(change["path"] or []) or "-"
                print(f"  v{change['version']:<3} {change['thread']:<5} {change['op']:<7} "
                      f"{path:<18} {_shown(change['value'])}")  # fmt: skip
                shown += 1
            doc = await handle.describe()
            if doc["context"].get("stage") == "awaiting acceptance" and doc["waiting_on"]:
                break
            if doc["status"] in ("completed", "failed", "cancelled"):
                raise RuntimeError(f"{workflow_id} ended {doc['status']}: {doc.get('error')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workflow_id} did not reach its answer")
            await asyncio.sleep(0.2)

        print(f"\nthe answer waits for a person:\n  {doc['context']['answer']}")
        with psycopg.connect(mf.dsn, autocommit=True, context=_AS_TEXT) as conn:

            def show(title: str, query: str, *params: str) -> None:
                # APP is a valid app id (MemFlow.init checked it): shown bare, as a user types it
                psql(conn, title, sql.SQL(query).format(app=sql.SQL(APP)).as_string(conn), *params)

            show(
                "the research leads' inbox",
                "select id, type, title, priority, status, due_at, escalate_to"
                " from {app}.list_human_tasks(role => %s)",
                REVIEWER,
            )
            show(
                "a lead takes the next task (two leads never get the same one)",
                "select id, status, claimed_by from {app}.claim_next_human_task(%s, %s)",
                REVIEWER,
                "lead@example.com",
            )
            tasks = await mf.human_tasks.list(role=REVIEWER, status="claimed")
            task_id = next(task.id for task in tasks if task.job_id == workflow_id)
            show(
                "and accepts the answer (checked against the task's form)",
                "select id, status, resolved_by, answer from {app}.resolve_human_task(%s, %s, %s)",
                str(task_id),
                "lead@example.com",
                json.dumps(REVIEW),
            )
            show(
                "the inbox again",
                "select id, title, status from {app}.list_human_tasks(role => %s)",
                REVIEWER,
            )
        result = await handle.result(timeout=60)
        print(f"result: {json.dumps(result)}")
        entity = await mf.entity(workflow_id).get()
        print(f"\nthe entity at the end:\n{json.dumps(entity, indent=2, sort_keys=True)}")
        print(f"\nits runs (continue_as_new after {ROUNDS_PER_RUN} rounds), from SQL:")
        with psycopg.connect(mf.dsn, autocommit=True) as conn:
            runs = conn.execute(RUNS, (workflow_id,)).fetchall()
        for run, status, steps, args in runs:
            print(f"  run {run}: {status}, {steps} steps, args {json.dumps(args)}")
    finally:
        await mf.close()


async def worker(lease: float) -> None:
    mf = await MemFlow.init(app_id=APP)
    await serve(mf, lease=lease)
    print("ready", flush=True)
    await mf.run_until_signal(grace=1.0)


def main(argv: list[str]) -> None:
    if argv[:1] == ["worker"]:
        asyncio.run(worker(float(os.environ.get("HOTMESH_AGENT_LEASE", "30"))))
    else:
        asyncio.run(demo(" ".join(argv) or "Is PostgreSQL a good fit for durable workflows?"))


if __name__ == "__main__":
    main(sys.argv[1:])
