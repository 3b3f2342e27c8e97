"""The sticky cache (worker.StickyCache, docs/performance.md): a worker keeps a suspended
activation alive and, when it claims the same thread again, resumes it instead of replaying
the history. Resumed and replayed, a workflow makes the same calls; an entry is bypassed when
the history moved on without it (another worker ran the thread)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psycopg import sql

from helpers import Workers, kill9, until, until_row, workers_fixture
from hotmesh import MemFlow, _db, workflow
from hotmesh._commands import Command, RecordedStep, ScheduleActivity
from hotmesh._db import Database, HeldClaim
from hotmesh._runner import Activation, Completed, Outcome, RecordedThread, Suspended
from hotmesh.otel import TracingInterceptor
from hotmesh.worker import Registry, StickyCache, Worker

pytestmark = pytest.mark.timeout(60)


async def mixed(prefix: str) -> list[Any]:
    acts = workflow.proxy_activities(task_queue="elsewhere")
    first = await acts.lookup(prefix + "a")
    await workflow.sleep_for(1)  # a real timer: the wake-up after it is resumed too
    pair = await asyncio.gather(acts.lookup(prefix + "b"), acts.lookup(prefix + "c"))
    if workflow.patched("p1"):
        pair.append(await workflow.wait_for("go"))
    return [first, *pair]


class Recorder:
    """The runner's `perform`: notes each command and answers it `scheduled`, as an activity
    through its queue, a timer or a signal wait is answered until its outcome is recorded."""

    def __init__(self) -> None:
        self.commands: list[tuple[int, Command]] = []

    async def __call__(self, seq: int, command: Command, recorded: Any) -> RecordedStep:
        self.commands.append((seq, command))
        status = "completed" if command.kind == "patch" else "scheduled"
        return RecordedStep(seq, command.kind, command.name, status)


def thread(steps: dict[int, RecordedStep]) -> RecordedThread:
    return RecordedThread(
        job_id="w1", steps=list(steps.values()), args=["x"], name="mixed", workflow_name="mixed"
    )


def same(one: Outcome, other: Outcome) -> bool:
    if isinstance(one, Completed) and isinstance(other, Completed):
        return bool(one.result == other.result)
    return type(one) is type(other)


def wake_next(history: dict[int, RecordedStep], recorder: Recorder) -> None:
    """Record the calls the activation just made, then the next outcome arrives: the oldest
    call still waiting completes."""
    for seq, command in recorder.commands:
        status = "completed" if command.kind == "patch" else "scheduled"
        history[seq] = RecordedStep(seq, command.kind, command.name, status)
    seq = min(s for s, step in history.items() if step.status == "scheduled")
    history[seq] = history[seq]._replace(status="completed", output=f"out{seq}")


async def test_resumed_and_replayed_activations_make_the_same_calls() -> None:
    """At every wake-up of one run (each recorded outcome in turn), the activation kept
    since the last one and a fresh one replaying the same history make the same new calls
    and end the same way."""
    history: dict[int, RecordedStep] = {}
    recorder = Recorder()
    kept = Activation(thread(history), mixed, Registry(), recorder)
    outcome = await kept.run(keep=True)
    wakes = 0
    while isinstance(outcome, Suspended):
        wake_next(history, recorder)
        wakes += 1

        cold_recorder = Recorder()
        cold = await Activation(thread(history), mixed, Registry(), cold_recorder).run()
        recorder = Recorder()
        assert kept.resume(thread(history), recorder)
        outcome = await kept.run(keep=True)
        assert recorder.commands == cold_recorder.commands, f"wake-up {wakes}"
        assert same(outcome, cold), f"wake-up {wakes}"
    assert outcome == Completed(["out1", "out3", "out4", "out6"])
    assert wakes == 5  # a, the timer, b, c, the signal


async def test_resume_refuses_a_history_that_moved_on() -> None:
    """A step the kept activation never made, a settled step that changed, or another run or
    attempt: resume() says no and changes nothing (the worker then replays)."""
    recorder = Recorder()
    kept = Activation(thread({}), mixed, Registry(), recorder)
    assert isinstance(await kept.run(keep=True), Suspended)
    one = RecordedStep(1, "activity", "lookup", "completed", "A")
    ahead = {1: one, 2: RecordedStep(2, "sleep", "", "scheduled")}
    assert not kept.resume(thread(ahead), Recorder())  # another worker went on
    other_run = RecordedThread(
        job_id="w1", steps=[one], args=["x"], name="mixed", workflow_name="mixed", run=2
    )
    assert not kept.resume(other_run, Recorder())
    renamed = {1: RecordedStep(1, "activity", "other", "completed", "A")}
    assert not kept.resume(thread(renamed), Recorder())  # not the call it made
    assert kept.resume(thread({1: one}), Recorder())
    kept.close()


class Traced:
    """A TracingInterceptor with its own in-memory exporter: the spans it made so far, each
    as (name, its parent's name, attributes, status), and the span a traceparent names."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.interceptor = TracingInterceptor(provider)
        self.taken = 0

    def new_spans(self) -> list[tuple[Any, ...]]:
        spans: tuple[ReadableSpan, ...] = self.exporter.get_finished_spans()
        names = {s.context.span_id: s.name for s in spans if s.context is not None}
        made = [
            (s.name, s.parent and names.get(s.parent.span_id), dict(s.attributes or {}),
             s.status.status_code.name)
            for s in spans[self.taken :]
        ]  # fmt: skip
        self.taken = len(spans)
        return sorted(made, key=repr)

    def named(self, commands: list[tuple[int, Command]]) -> list[tuple[int, Command]]:
        """The commands with each traceparent replaced by the name of the span it names."""
        names = {
            f"{s.context.span_id:016x}": s.name
            for s in self.exporter.get_finished_spans()
            if s.context is not None
        }
        return [
            (seq, command)
            if not isinstance(command, ScheduleActivity) or command.traceparent is None
            else (seq, dataclasses.replace(
                command, traceparent=names[command.traceparent.split("-")[2]]))
            for seq, command in commands
        ]  # fmt: skip


async def test_traced_resumed_and_replayed_activations_make_the_same_spans() -> None:
    """With the tracing interceptor (sticky), at every wake-up the kept activation and a
    fresh one replaying the history make the same commands (an activity call carries the
    context of the activation that made it) and the same spans: one RunWorkflow per
    activation, none for what a replay answers."""
    history: dict[int, RecordedStep] = {}
    kept_trace, cold_trace = Traced(), Traced()
    recorder = Recorder()
    kept = Activation(
        thread(history), mixed, Registry(), recorder, interceptors=[kept_trace.interceptor]
    )
    outcome = await kept.run(keep=True)
    cold_trace.new_spans()
    assert kept_trace.new_spans() == [
        ("RunWorkflow:mixed", None, {
            "hotmesh.workflow_id": "w1", "hotmesh.workflow_name": "mixed",
            "hotmesh.function": "mixed", "hotmesh.task_queue": "", "hotmesh.thread": "main",
            "hotmesh.attempt": 1, "hotmesh.run": 1, "hotmesh.outcome": "suspended"}, "UNSET")
    ]  # fmt: skip
    # Its activity call, not wrapped by the interceptor, carries that activation's context.
    assert [(seq, command.traceparent) for seq, command in kept_trace.named(recorder.commands)
            if isinstance(command, ScheduleActivity)] == [(1, "RunWorkflow:mixed")]  # fmt: skip
    wakes = 0
    while isinstance(outcome, Suspended):
        wake_next(history, recorder)
        wakes += 1

        cold_recorder = Recorder()
        cold = await Activation(
            thread(history), mixed, Registry(), cold_recorder,
            interceptors=[cold_trace.interceptor],
        ).run()  # fmt: skip
        recorder = Recorder()
        assert kept.resume(thread(history), recorder)
        outcome = await kept.run(keep=True)
        assert kept_trace.named(recorder.commands) == cold_trace.named(cold_recorder.commands)
        assert same(outcome, cold), f"wake-up {wakes}"
        spans = kept_trace.new_spans()
        assert spans == cold_trace.new_spans(), f"wake-up {wakes}"
        assert [name for name, *_ in spans].count("RunWorkflow:mixed") == 1
    assert outcome == Completed(["out1", "out3", "out4", "out6"])
    assert wakes == 5
    assert kept_trace.interceptor._activations == {}  # nothing of the activations is left


PARKED = (
    "select j.status = 'waiting' and exists (select from steps as s where s.job_id = j.id"
    " and s.kind = 'signal') from jobs as j where j.id = %s"
)


def history_of(db: Any, job_id: str) -> list[tuple[Any, ...]]:
    return db.rows(
        "select seq, kind, name, status, input, output from steps where job_id = %s order by seq",
        job_id,
    )


@pytest.mark.parametrize("traced", [False, True], ids=["plain", "traced"])
async def test_a_worker_resumes_its_workflows_from_the_cache(
    mf: MemFlow, remote: MemFlow, db: Any, traced: bool
) -> None:
    """Run by a worker with the cache and by one without, the same workflow records the same
    history; with it, every wake-up was resumed from the cache. Traced (a sticky
    interceptor), the workflow is kept too, and makes the same spans: one per activation."""

    def lookup(key: str) -> str:
        return key.upper()

    kept_trace, cold_trace = Traced(), Traced()
    wrap: dict[str, Any] = {"interceptors": [kept_trace.interceptor]} if traced else {}
    await remote.worker.register_activities(task_queue="elsewhere", activities=[lookup])
    cached = await mf.worker.create(task_queue="q", workflow=mixed, **wrap)
    handle = await mf.workflow.start(
        workflow_name="mixed", task_queue="q", workflow_id="kept", args=["k"]
    )
    # Suspended at the signal wait (committed), so the signal wakes a kept activation.
    await until_row(db, PARKED, "kept")
    await mf.workflow.signal("go", {"ok": 1}, workflow_id="kept")
    assert await handle.result(timeout=30) == ["KA", "KB", "KC", {"ok": 1}]
    # Every wake-up resumed: a, the timer, b and c (one wake-up or two), the signal.
    assert cached.sticky.hits in (4, 5) and cached.sticky.misses == 0
    await cached.stop()

    wrap = {"interceptors": [cold_trace.interceptor]} if traced else {}
    cold = await mf.worker.create(task_queue="q", workflow=mixed, sticky_cache=0, **wrap)
    again = await mf.workflow.start(
        workflow_name="mixed", task_queue="q", workflow_id="cold", args=["k"]
    )
    await until_row(db, PARKED, "cold")
    await mf.workflow.signal("go", {"ok": 1}, workflow_id="cold")
    assert await again.result(timeout=30) == ["KA", "KB", "KC", {"ok": 1}]
    assert (cold.sticky.hits, len(cold.sticky)) == (0, 0)
    assert history_of(db, "kept") == history_of(db, "cold")
    if traced:
        spans = kept_trace.new_spans()
        runs = [span for span in spans if span[0] == "RunWorkflow:mixed"]
        assert len(runs) == cached.sticky.hits + 1  # each activation, resumed or not
        assert [run[2]["hotmesh.outcome"] for run in runs].count("completed") == 1
        steps = [span for span in spans if span not in runs]
        cold_steps = [span for span in cold_trace.new_spans() if span[0] != "RunWorkflow:mixed"]
        assert [(n, p, {**a, "hotmesh.workflow_id": "?"}, s) for n, p, a, s in steps] == [
            (n, p, {**a, "hotmesh.workflow_id": "?"}, s) for n, p, a, s in cold_steps
        ]
        assert [(name, parent) for name, parent, *_ in steps] == [
            ("HandleSignal:go", "RunWorkflow:mixed")
        ]


async def waits() -> list[Any]:
    return [await workflow.wait_for("s1"), await workflow.wait_for("s2")]


async def test_the_cache_is_bypassed_when_another_worker_ran_the_workflow(
    mf: MemFlow, remote: MemFlow, db: Any
) -> None:
    """Worker A suspends the workflow (kept), worker B runs its next activation, then A is
    woken again: A's entry is stale (B recorded a step A never made), so A replays."""
    a, b = (
        Worker(client._db, client._listener, client.registry, "q", sticky_cache=8)
        for client in (mf, remote)
    )
    for client in (mf, remote):
        client.registry.workflows["q"] = {"waits": waits}

    async def run_next(worker: Worker) -> None:
        claimed = await worker.db.claim_tasks(["q"], worker.worker_id, 1, timedelta(seconds=30))
        assert len(claimed) == 1
        await worker._process(claimed[0])

    await mf.workflow.start(workflow_name="waits", task_queue="q", workflow_id="moved")
    await run_next(a)
    assert len(a.sticky) == 1
    await mf.workflow.signal("s1", 1, workflow_id="moved")
    await run_next(b)
    await mf.workflow.signal("s2", 2, workflow_id="moved")
    await run_next(a)
    assert (a.sticky.hits, a.sticky.misses, len(a.sticky)) == (0, 1, 0)
    assert db.one("select status from jobs where id = 'moved'") == "completed"
    assert db.one("select result from jobs where id = 'moved'") == [1, 2]
    b.sticky.clear()


workers = workers_fixture("crashy")


async def test_after_a_kill_another_worker_replays_what_the_dead_one_kept(
    remote: MemFlow, db: Any, workers: Workers
) -> None:
    """The workflow worker that keeps the suspended workflow is killed while activity c
    runs; c's completion wakes the workflow, another worker replays it from the history and
    finishes it: the same history as a run without a kill."""
    release = asyncio.Event()

    async def effect(name: str) -> str:
        if name == "c":
            await release.wait()
        return f"{name} done"

    await remote.worker.register_activities(task_queue="aq", activities=[effect])
    handle = await remote.workflow.start(
        workflow_name="crashy_remote", task_queue="wq", workflow_id="kept-kill"
    )
    first = workers.spawn("remote")
    await until_row(db, "select count(*) from tasks where kind = 'activity' and seq = 3")
    kill9(first)
    release.set()
    await until_row(db, "select count(*) from steps where seq = 3 and status = 'completed'")
    workers.spawn("remote")
    assert await handle.result(timeout=40) == ["a done", "b done", "c done", "d done"]
    assert history_of(db, "kept-kill") == [
        (seq, "activity", "effect", "completed", [name], f"{name} done")
        for seq, name in enumerate("abcd", start=1)
    ]


def held_outcomes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The outcomes sent in their claim's transaction (HeldClaim.finish), by statement."""
    sent: list[str] = []
    real = HeldClaim.finish

    async def finish(self: HeldClaim, name: str, item: Any) -> Any:
        answers = await real(self, name, item)
        if answers is not None:
            sent.append(name)
        return answers

    monkeypatch.setattr(HeldClaim, "finish", finish)
    return sent


def claims_of(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """Each claim_tasks the workers make: [held, tasks claimed (None until it answered)]."""
    claims: list[list[Any]] = []
    real = Database.claim_tasks

    async def claim_tasks(self: Database, *args: Any, **kwargs: Any) -> Any:
        claims.append([kwargs.get("hold", args[7] if len(args) > 7 else False), None])
        claims[-1][1] = len(claimed := await real(self, *args, **kwargs))
        return claimed

    monkeypatch.setattr(Database, "claim_tasks", claim_tasks)
    return claims


async def parked_in(worker: Worker, db: Any, workflow_id: str) -> None:
    """Until the workflow waits for a signal and the idle worker keeps its activation."""
    await until_row(db, PARKED, workflow_id)
    await until(lambda: len(worker.sticky) == 1 and not worker.in_flight, "kept and idle")


async def both() -> list[Any]:
    return list(await asyncio.gather(workflow.wait_for("s1"), workflow.wait_for("s2")))


async def test_a_woken_kept_activation_ends_in_its_claims_transaction(
    mf: MemFlow, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle worker claims the activation a signal wakes in a transaction it keeps open,
    resumes it from the cache and sends its suspension (still waiting for s2), then its
    completion, in that same transaction: one commit per wake-up; the history is the same."""
    sent = held_outcomes(monkeypatch)
    worker = await mf.worker.create(task_queue="q", workflow=both)
    handle = await mf.workflow.start(workflow_name="both", task_queue="q", workflow_id="one")
    await parked_in(worker, db, "one")
    await mf.workflow.signal("s1", 1, workflow_id="one")
    await until(lambda: sent == ["suspend_tasks"], "the held suspension")
    await parked_in(worker, db, "one")
    await mf.workflow.signal("s2", 2, workflow_id="one")
    assert await handle.result(timeout=20) == [1, 2]
    # Noted once finish() returns, which is after the commit that result() may see first.
    await until(lambda: sent == ["suspend_tasks", "complete_tasks"], "the held completion")
    assert (worker.sticky.hits, worker.sticky.misses) == (2, 0)
    assert db.one("select count(*) from tasks") == 0
    assert history_of(db, "one") == [
        (1, "signal", "s1", "completed", {"timeout": None}, 1),
        (2, "signal", "s2", "completed", {"timeout": None}, 2),
    ]


async def parks() -> Any:
    return await workflow.wait_for("go")


async def test_a_worker_claims_nothing_after_a_suspension_with_nothing_due(
    mf: MemFlow, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A workflow parked on a signal leaves nothing due (its task is deleted; what wakes it
    sends a NOTIFY): the worker does not claim again after the suspension, so it is idle,
    not in a claim or next_due, when the signal comes, and the claim the signal wakes is the
    held one that resumes the kept activation."""
    sent = held_outcomes(monkeypatch)
    claims = claims_of(monkeypatch)
    worker = await mf.worker.create(task_queue="q", workflow=parks)
    handle = await mf.workflow.start(workflow_name="parks", task_queue="q", workflow_id="p")
    await parked_in(worker, db, "p")
    before = len(claims)
    # The start's claim (and any empty one its NOTIFY woke) held nothing: nothing was kept
    # yet. A claim after the suspension would have been held (one kept activation).
    assert [False, 1] in claims and not any(held for held, _ in claims)
    await mf.workflow.signal("go", 7, workflow_id="p")
    assert await handle.result(timeout=20) == 7
    await until(lambda: sent == ["complete_tasks"], "the held completion")
    assert claims[before] == [True, 1] and worker.sticky.hits == 1


async def test_a_held_wake_up_moves_its_workflow_once(
    mf: MemFlow, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held claim takes its activation ahead (not started): claim and outcome commit
    together, so the workflow goes from waiting to completed in one write, never through a
    running that no other transaction could see."""
    sent = held_outcomes(monkeypatch)
    moves = sql.Identifier(db.app, "moves")
    db.conn.execute(sql.SQL("create table {} (job_id text, from_to text[])").format(moves))
    db.conn.execute(
        sql.SQL(
            "create function note_move() returns trigger language plpgsql as $$ begin"
            " insert into {} values (new.id, array[old.status, new.status]); return new; end $$"
        ).format(moves)
    )
    db.conn.execute(
        "create trigger note_move after update of status on jobs for each row"
        " when (old.status is distinct from new.status) execute function note_move()"
    )
    worker = await mf.worker.create(task_queue="q", workflow=parks)
    handle = await mf.workflow.start(workflow_name="parks", task_queue="q", workflow_id="m")
    await parked_in(worker, db, "m")
    db.conn.execute(sql.SQL("delete from {}").format(moves))
    await mf.workflow.signal("go", 3, workflow_id="m")
    assert await handle.result(timeout=20) == 3
    await until(lambda: sent == ["complete_tasks"], "the held completion")
    assert db.rows("select from_to from moves where job_id = 'm'") == [(["waiting", "completed"],)]


async def test_a_held_claim_that_a_limited_queue_refused_is_made_plainly(
    mf: MemFlow, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue with limits gives tasks to a claim for free slots only, never ahead: the held
    claim (ahead) of the woken activation takes nothing, and the worker claims it plainly at
    once, still resuming it from the cache (not after the cache let it go)."""
    claims = claims_of(monkeypatch)
    worker = await mf.worker.create(task_queue="q", workflow=parks)
    handle = await mf.workflow.start(workflow_name="parks", task_queue="q", workflow_id="l")
    await parked_in(worker, db, "l")
    await mf.queue.set_limits("q", max_running=100)
    before = len(claims)
    await mf.workflow.signal("go", 5, workflow_id="l")
    assert await handle.result(timeout=20) == 5
    woken = claims[before:]
    assert woken[0] == [True, 0] and [False, 1] in woken
    assert (worker.sticky.hits, worker.sticky.misses) == (1, 0)


async def stalls_after_signal() -> Any:
    got = await workflow.wait_for("go")
    time.sleep(0.5)  # noqa: ASYNC251 - a synchronous stretch of workflow code, on purpose
    return got


async def test_a_held_claim_left_idle_too_long_is_ended_by_the_server(
    mf: MemFlow, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumed code that runs longer than HELD_IDLE_MS leaves its claim's transaction idle:
    the server ends it (idle_in_transaction_session_timeout), claim and outcome roll back,
    the task is claimable again at once and a replay completes the workflow. What bounds
    how long a held claim keeps the workflow's rows locked."""
    monkeypatch.setattr(_db, "HELD_IDLE_MS", 100)
    sent = held_outcomes(monkeypatch)
    worker = await mf.worker.create(task_queue="q", workflow=stalls_after_signal)
    handle = await mf.workflow.start(
        workflow_name="stalls_after_signal", task_queue="q", workflow_id="stalls"
    )
    await parked_in(worker, db, "stalls")
    await mf.workflow.signal("go", 5, workflow_id="stalls")
    assert await handle.result(timeout=20) == 5
    assert sent == []  # the held completion never committed
    assert (worker.sticky.hits, worker.sticky.misses) == (1, 0)


async def then_records(x: str) -> Any:
    """After its signal, an inline activity and an entity change: calls of their own."""
    got = await workflow.wait_for("go")
    acts = workflow.proxy_activities(activities=[shout])
    entity = await workflow.entity()
    await entity.set({"seen": got})
    return [await acts.shout(x), await entity.get("seen")]


def shout(x: str) -> str:
    return x.upper()


async def test_a_resumed_activation_that_calls_commits_its_claim_first(
    mf: MemFlow, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resumed code that makes durable calls (each in its own transaction, which must see the
    claim's lease) commits the claim before the first one: the workflow completes at once,
    its outcome sent on its own (no lease is lost, nothing waits for an expiry)."""
    sent = held_outcomes(monkeypatch)
    worker = await mf.worker.create(task_queue="q", workflow=then_records)
    handle = await mf.workflow.start(
        workflow_name="then_records", task_queue="q", workflow_id="calls", args=["x"]
    )
    await parked_in(worker, db, "calls")
    await mf.workflow.signal("go", "yes", workflow_id="calls")
    assert await handle.result(timeout=20) == ["X", "yes"]
    assert sent == [] and worker.sticky.hits == 1


async def refused_after_signal() -> str:
    """After its signal, a call the engine refuses as it suspends (a queue name too long)."""
    await workflow.wait_for("go")
    acts = workflow.proxy_activities(task_queue="q" * 256)
    try:
        await acts.anything()
    except Exception as error:
        return type(error).__name__
    return "not refused"


async def test_an_outcome_that_fails_in_the_claims_transaction_rolls_both_back(
    mf: MemFlow, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The suspension sent in the claim's transaction fails (the engine refuses a call it
    carries): claim and suspension roll back together, the task is claimable again at once,
    and the replay that claims it sends the call alone, so only that call fails."""
    sent = held_outcomes(monkeypatch)
    worker = await mf.worker.create(task_queue="q", workflow=refused_after_signal)
    handle = await mf.workflow.start(
        workflow_name="refused_after_signal", task_queue="q", workflow_id="refused"
    )
    await parked_in(worker, db, "refused")
    await mf.workflow.signal("go", None, workflow_id="refused")
    assert await handle.result(timeout=20) == "InvalidArgument"
    assert sent == []  # the held suspension never answered
    assert (worker.sticky.hits, worker.sticky.misses) == (1, 0)


@pytest.mark.parametrize("traced", [False, True], ids=["plain", "traced"])
async def test_an_ended_activation_is_freed_at_once(traced: bool) -> None:
    """A finished activation, and a kept one once closed (the cache's ttl, its bound), leave
    no reference cycle: reference counting frees them at once, so a worker's memory does not
    grow with the workflows it ran until the cycle collector's next full pass (traced too: a
    kept activation then ran and suspended twice, each inside its own span)."""
    history: dict[int, RecordedStep] = {}
    wrap = [Traced().interceptor] if traced else []
    finished = Activation(thread(history), waits_nothing, Registry(), Recorder(), interceptors=wrap)
    kept = Activation(thread(history), mixed, Registry(), Recorder(), interceptors=wrap)
    assert isinstance(await finished.run(), Completed)
    assert isinstance(await kept.run(keep=True), Suspended)
    if traced:
        one = RecordedStep(1, "activity", "lookup", "completed", "A")
        assert kept.resume(thread({1: one}), Recorder())
        assert isinstance(await kept.run(keep=True), Suspended)
    gc.collect()
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        kept.close()
        del finished, kept
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, Activation | asyncio.Task)]
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()
    assert left == []


async def waits_nothing(prefix: str) -> str:
    return "done"


async def test_the_cache_keeps_at_most_a_quarter_parked() -> None:
    """At most `size` kept, the least recently used closed first; of them at most a quarter
    parked (suspended without sending an activity call), the oldest parked closed first, so
    workflows parked on signals never push out those whose activities come back soon."""
    cache = StickyCache(8)

    async def put(name: str, parked: bool = False) -> None:
        act = Activation(thread({}), mixed, Registry(), Recorder())
        assert isinstance(await act.run(keep=True), Suspended)
        cache.put((name, "main"), act, parked=parked)

    def kept() -> list[str]:
        return [n for n in (f"w{i}" for i in range(13)) if (n, "main") in cache]

    for i in range(6):
        await put(f"w{i}")
    for i in range(6, 10):
        await put(f"w{i}", parked=True)
    assert kept() == ["w0", "w1", "w2", "w3", "w4", "w5", "w8", "w9"]
    await put("w10")
    await put("w11")
    assert kept() == ["w2", "w3", "w4", "w5", "w8", "w9", "w10", "w11"]
    taken = cache.take(("w8", "main"))
    assert taken is not None
    taken.close()
    await put("w12", parked=True)  # w8's place: no other parked one closes
    assert kept() == ["w2", "w3", "w4", "w5", "w9", "w10", "w11", "w12"]
    cache.clear()
    assert len(cache) == 0
