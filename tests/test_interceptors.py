"""Interceptors (issue 17, docs/interceptors.md), as HotMesh's interceptor tests: the order
around a workflow, errors through interceptors, the context each one is given; and the
durable calls, signals, activities and client calls they wrap, an interceptor that breaks
determinism (caught by the replay check), bad registrations and `hotmesh worker
--interceptor`."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from helpers import SQL, until
from hotmesh import FatalError, InvalidArgument, MemFlow, activity, workflow
from hotmesh._commands import Command, ScheduleActivity, StartTimer
from hotmesh.activity import ActivityInfo
from hotmesh.interceptors import CancelInput, Interceptor, SignalInput, StartInput, keepable
from hotmesh.rows import SignalOutcome
from hotmesh.workflow import WorkflowContext

pytestmark = pytest.mark.timeout(60)


class Recorder(Interceptor):
    """Records what it wraps, before and after, in a list shared with other recorders."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.contexts: list[WorkflowContext] = []
        self.infos: list[ActivityInfo] = []

    async def execute_workflow(
        self, ctx: WorkflowContext, args: list[Any], next: Callable[[list[Any]], Awaitable[Any]]
    ) -> Any:
        self.contexts.append(ctx)
        self.log.append(f"{self.name}>workflow")
        try:
            return await next(args)
        finally:
            self.log.append(f"{self.name}<workflow")

    async def durable_call(
        self,
        ctx: WorkflowContext,
        seq: int,
        command: Command,
        next: Callable[[Command], Awaitable[Any]],
    ) -> Any:
        if not ctx.replaying:
            self.log.append(f"{self.name}>{command.kind}:{command.name}@{seq}")
        return await next(command)

    async def execute_activity(
        self, info: ActivityInfo, args: list[Any], next: Callable[[list[Any]], Awaitable[Any]]
    ) -> Any:
        self.infos.append(info)
        self.log.append(f"{self.name}>activity")
        try:
            return await next(args)
        finally:
            self.log.append(f"{self.name}<activity")


def shout(text: str) -> str:
    return text.upper()


async def greeting(name: str) -> str:
    acts = workflow.proxy_activities(activities=[shout])
    return await acts.shout(f"hello {name}")


@pytest.fixture
async def client(app: str, dsn: str) -> AsyncIterator[Callable[..., Awaitable[MemFlow]]]:
    made: list[MemFlow] = []

    async def make(**kwargs: Any) -> MemFlow:
        mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False, **kwargs)
        made.append(mf)
        return mf

    yield make
    for mf in made:
        await mf.close(grace=2.0)


async def test_order_around_a_workflow_and_context(
    client: Callable[..., Awaitable[MemFlow]],
) -> None:
    log: list[str] = []
    outer, inner, queue_own = Recorder("A", log), Recorder("B", log), Recorder("Q", log)
    mf = await client(interceptors=[outer, inner])
    await mf.worker.create(task_queue="iq", workflow=greeting, interceptors=[queue_own])
    handle = await mf.workflow.start(
        workflow_name="greeting", args=["jan"], task_queue="iq", workflow_id="order-1"
    )
    assert await handle.result(timeout=20) == "HELLO JAN"
    # The client's interceptors first (the first outermost), then the queue's own.
    assert log == [
        "A>workflow",
        "B>workflow",
        "Q>workflow",
        "A>activity:shout@1",
        "B>activity:shout@1",
        "Q>activity:shout@1",
        "A>activity",
        "B>activity",
        "Q>activity",
        "Q<activity",
        "B<activity",
        "A<activity",
        "Q<workflow",
        "B<workflow",
        "A<workflow",
    ]
    ctx = outer.contexts[0]
    assert (ctx.workflow_id, ctx.workflow_name, ctx.task_queue, ctx.thread, ctx.attempt) == (
        "order-1",
        "greeting",
        "iq",
        "main",
        1,
    )
    info = inner.infos[0]
    assert (info.workflow_id, info.activity_name, info.task_queue, info.attempt) == (
        "order-1",
        "shout",
        "iq",
        1,
    )


class Changes(Interceptor):
    """Changes what it wraps: arguments, results, a signal's payload, the start's options."""

    def __init__(self) -> None:
        self.started: list[StartInput] = []
        self.signalled: list[SignalInput] = []
        self.cancelled: list[CancelInput] = []

    async def execute_workflow(
        self, ctx: WorkflowContext, args: list[Any], next: Callable[[list[Any]], Awaitable[Any]]
    ) -> Any:
        return {"wrapped": await next([a * 2 for a in args])}

    async def durable_call(
        self,
        ctx: WorkflowContext,
        seq: int,
        command: Command,
        next: Callable[[Command], Awaitable[Any]],
    ) -> Any:
        if isinstance(command, ScheduleActivity):
            command = dataclasses.replace(command, args=[*command.args, "!"])
        return await next(command)

    async def handle_signal(
        self,
        ctx: WorkflowContext,
        signal_id: str,
        payload: Any,
        next: Callable[[Any], Awaitable[Any]],
    ) -> Any:
        return await next({"signal": signal_id, "seen": payload})

    async def execute_activity(
        self, info: ActivityInfo, args: list[Any], next: Callable[[list[Any]], Awaitable[Any]]
    ) -> Any:
        return f"<{await next(args)}>"

    async def start_workflow(
        self, input: StartInput, next: Callable[[StartInput], Awaitable[str]]
    ) -> str:
        self.started.append(input)
        options = {**input.options, "search": {"tenant": "acme"}}
        return await next(dataclasses.replace(input, options=options))

    async def signal_workflow(
        self, input: SignalInput, next: Callable[[SignalInput], Awaitable[SignalOutcome]]
    ) -> SignalOutcome:
        self.signalled.append(input)
        return await next(input)

    async def cancel_workflow(
        self, input: CancelInput, next: Callable[[CancelInput], Awaitable[list[str]]]
    ) -> list[str]:
        self.cancelled.append(input)
        return await next(dataclasses.replace(input, reason=f"intercepted: {input.reason}"))


def joined(*parts: str) -> str:
    return "".join(parts)


async def changed(n: int) -> Any:
    acts = workflow.proxy_activities(activities=[joined])
    got = await workflow.wait_for("go")
    return [n, await acts.joined("a", "b"), got]


async def parked() -> None:
    await workflow.wait_for("never")


async def test_interceptors_change_calls_and_see_client_calls(
    client: Callable[..., Awaitable[MemFlow]], db: SQL
) -> None:
    changes = Changes()
    mf = await client(interceptors=[changes])
    await mf.worker.create(task_queue="cq", workflow=[changed, parked])
    handle = await mf.workflow.start(
        workflow_name="changed", args=[21], task_queue="cq", workflow_id="chg"
    )
    assert changes.started[0].workflow_name == "changed"
    assert changes.started[0].args == [21]
    assert db.one("select search from jobs where id = 'chg'") == {"tenant": "acme"}
    await until(lambda: db.one("select status from jobs where id = 'chg'") == "waiting")
    outcome = await handle.signal("go", {"x": 1})
    assert outcome["status"] == "delivered"
    assert changes.signalled == [SignalInput("go", {"x": 1}, "chg", None)]
    assert await handle.result(timeout=20) == {
        "wrapped": [42, "<ab!>", {"signal": "go", "seen": {"x": 1}}]
    }
    # The step records what the interceptor made of the call.
    assert db.one("select input from steps where job_id = 'chg' and kind = 'activity'") == [
        "a",
        "b",
        "!",
    ]

    other = await mf.workflow.start(workflow_name="parked", task_queue="cq", workflow_id="pk")
    await until(lambda: db.one("select status from jobs where id = 'pk'") == "waiting")
    assert await other.interrupt("bye") == ["pk"]
    assert changes.cancelled == [CancelInput("pk", "bye", True)]
    assert "intercepted: bye" in db.one("select error->>'message' from jobs where id = 'pk'")


class Refuses(Interceptor):
    """Raises before the workflow of a given name runs (or an activity named `boom`)."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def execute_workflow(
        self, ctx: WorkflowContext, args: list[Any], next: Callable[[list[Any]], Awaitable[Any]]
    ) -> Any:
        if ctx.workflow_name == "greeting" and args == ["refused"]:
            raise FatalError("refused by interceptor", type="Refused")
        return await next(args)

    async def execute_activity(
        self, info: ActivityInfo, args: list[Any], next: Callable[[list[Any]], Awaitable[Any]]
    ) -> Any:
        if info.activity_name == "shout" and args == ["hello boom"]:
            raise FatalError(f"activity refused on attempt {info.attempt}")
        return await next(args)


class Catches(Interceptor):
    """Outside Refuses: sees the errors that come through it."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def execute_workflow(
        self, ctx: WorkflowContext, args: list[Any], next: Callable[[list[Any]], Awaitable[Any]]
    ) -> Any:
        try:
            return await next(args)
        except Exception as error:
            self.log.append(f"workflow {ctx.workflow_id}: {type(error).__name__}: {error}")
            raise

    async def execute_activity(
        self, info: ActivityInfo, args: list[Any], next: Callable[[list[Any]], Awaitable[Any]]
    ) -> Any:
        try:
            return await next(args)
        except Exception as error:
            self.log.append(f"activity {info.activity_name}: {error}")
            raise


async def test_errors_through_interceptors(
    client: Callable[..., Awaitable[MemFlow]], db: SQL
) -> None:
    log: list[str] = []
    mf = await client(interceptors=[Catches(log), Refuses(log)])
    await mf.worker.create(task_queue="eq", workflow=greeting)
    refused = await mf.workflow.start(
        workflow_name="greeting", args=["refused"], task_queue="eq", workflow_id="ref"
    )
    with pytest.raises(FatalError, match="refused by interceptor"):
        await refused.result(timeout=20)
    error = db.one("select error from jobs where id = 'ref'")
    assert (error["message"], error["type"]) == ("refused by interceptor", "Refused")
    assert log == ["workflow ref: FatalError: refused by interceptor"]

    # An activity's interceptor that raises fails that run (as its policy says: a FatalError
    # is not retried), and through it the workflow.
    boom = await mf.workflow.start(
        workflow_name="greeting", args=["boom"], task_queue="eq", workflow_id="boom"
    )
    with pytest.raises(FatalError, match="activity refused on attempt 1"):
        await boom.result(timeout=30)
    assert "activity shout: activity refused on attempt 1" in log

    # The worker keeps serving.
    fine = await mf.workflow.start(workflow_name="greeting", args=["ok"], task_queue="eq")
    assert await fine.result(timeout=20) == "HELLO OK"


class NotDeterministic(Interceptor):
    """Emits an event only the first time it runs: a durable call that replay does not repeat."""

    def __init__(self) -> None:
        self.runs = 0

    async def execute_workflow(
        self, ctx: WorkflowContext, args: list[Any], next: Callable[[list[Any]], Awaitable[Any]]
    ) -> Any:
        self.runs += 1
        if self.runs == 1:
            await workflow.emit({"first": True})
        return await next(args)


async def napper() -> str:
    await workflow.sleep_for(0.05)
    return "rested"


async def test_an_interceptor_that_breaks_determinism_is_caught(
    client: Callable[..., Awaitable[MemFlow]], db: SQL
) -> None:
    mf = await client()
    await mf.worker.create(task_queue="nq", workflow=napper, interceptors=[NotDeterministic()])
    await mf.workflow.start(workflow_name="napper", task_queue="nq", workflow_id="nd-i")
    await until(
        lambda: db.one("select state from tasks where job_id = 'nd-i'") == "dead",
        "the activation parked as dead",
    )
    message = db.one("select error->>'message' from tasks where job_id = 'nd-i'")
    assert "non-determinism" in message
    assert 'recorded as emit "" but the code now calls sleep' in message


class Replays(Interceptor):
    """Sees each durable call with whether history answers it."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, bool]] = []

    async def durable_call(
        self,
        ctx: WorkflowContext,
        seq: int,
        command: Command,
        next: Callable[[Command], Awaitable[Any]],
    ) -> Any:
        self.calls.append((seq, command.kind, ctx.replaying))
        return await next(command)


class OnlySleeps(Replays):
    durable_kinds = frozenset({"sleep"})


async def two_naps() -> int:
    first, second = await asyncio.gather(workflow.sleep_for(0.01), workflow.sleep_for(0.02))
    acts = workflow.proxy_activities(activities=[shout])
    await acts.shout("x")
    return int(first + second >= 0)


async def test_durable_calls_keep_their_numbers_and_know_replay(
    client: Callable[..., Awaitable[MemFlow]], db: SQL
) -> None:
    seen, sleeps = Replays(), OnlySleeps()
    mf = await client(interceptors=[seen, sleeps])
    await mf.worker.create(task_queue="rq", workflow=two_naps)
    handle = await mf.workflow.start(workflow_name="two_naps", task_queue="rq", workflow_id="tn")
    assert await handle.result(timeout=20) == 1
    assert db.rows("select seq, kind from steps where job_id = 'tn' order by seq") == [
        (1, "sleep"),
        (2, "sleep"),
        (3, "activity"),
    ]
    assert (1, "sleep", False) in seen.calls
    assert (2, "sleep", False) in seen.calls
    assert (1, "sleep", True) in seen.calls  # a later activation replays it
    assert [c for c in seen.calls if c[1] == "activity"] == [(3, "activity", False)]
    assert all(isinstance(c[0], int) for c in seen.calls)
    # durable_kinds: only the calls of those kinds.
    assert {kind for _, kind, _ in sleeps.calls} == {"sleep"}
    assert [c for c in seen.calls if c[1] == "sleep"] == sleeps.calls


class TwiceOrRenamed(Interceptor):
    async def durable_call(
        self,
        ctx: WorkflowContext,
        seq: int,
        command: Command,
        next: Callable[[Command], Awaitable[Any]],
    ) -> Any:
        if isinstance(command, StartTimer):
            return await next(ScheduleActivity("shout", ["x"], ctx.task_queue))
        return await next(command)


async def test_an_interceptor_cannot_change_a_calls_kind(
    client: Callable[..., Awaitable[MemFlow]], db: SQL
) -> None:
    mf = await client(interceptors=[TwiceOrRenamed()])
    await mf.worker.create(task_queue="kq", workflow=napper)
    handle = await mf.workflow.start(
        workflow_name="napper", task_queue="kq", retry_policy={"maximum_attempts": 1}
    )
    with pytest.raises(Exception, match="it may change a call's arguments, not its kind"):
        await handle.result(timeout=20)


async def test_bad_interceptors_are_refused(
    client: Callable[..., Awaitable[MemFlow]], app: str, dsn: str
) -> None:
    mixed: Any = [Interceptor(), object()]
    with pytest.raises(InvalidArgument, match=r"interceptors\[1\] is a object"):
        await MemFlow.init(app_id=app, dsn=dsn, migrate=False, interceptors=mixed)
    one: Any = Interceptor()
    with pytest.raises(InvalidArgument, match="must be a list"):
        await MemFlow.init(app_id=app, dsn=dsn, migrate=False, interceptors=one)
    mf = await client()
    text: Any = "nope"
    with pytest.raises(InvalidArgument, match="must be a list"):
        await mf.worker.create(task_queue="bq", workflow=napper, interceptors=text)


def test_activity_info_inside_interceptor_is_the_activity() -> None:
    seen: list[str] = []

    class Peek(Interceptor):
        async def execute_activity(
            self,
            info: ActivityInfo,
            args: list[Any],
            next: Callable[[list[Any]], Awaitable[Any]],
        ) -> Any:
            seen.append(activity.info().activity_name)
            return await next(args)

    from hotmesh.activity import run_activity

    info = ActivityInfo("w", "shout", "q", 1, True)
    assert asyncio.run(run_activity(shout, ["a"], info, [Peek()])) == "A"
    assert seen == ["shout"]


async def test_worker_command_takes_interceptors(
    app: str, dsn: str, db: SQL, tmp_path: Any
) -> None:
    (tmp_path / "icpt_mod.py").write_text(
        "from hotmesh import workflow\n"
        "from hotmesh.interceptors import Interceptor\n"
        "class Tag(Interceptor):\n"
        "    async def execute_workflow(self, ctx, args, next):\n"
        "        return {'tagged': await next(args)}\n"
        "def make():\n"
        "    return Tag()\n"
        "async def plain():\n"
        "    return 1\n"
        "not_one = 3\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hotmesh.cli", "worker", "--app", app, "--dsn", dsn,
        "--queue", "wq", "--interceptor", "icpt_mod:make", "icpt_mod:plain",
        cwd=tmp_path,
    )  # fmt: skip
    try:
        mf = await MemFlow.init(app_id=app, dsn=dsn, migrate=False)
        try:
            handle = await mf.workflow.start(workflow_name="plain", task_queue="wq")
            assert await handle.result(timeout=30) == {"tagged": 1}
        finally:
            await mf.close()
    finally:
        proc.terminate()
        await proc.wait()
    bad = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hotmesh.cli", "worker", "--app", app, "--dsn", dsn,
        "--queue", "wq", "--interceptor", "icpt_mod:not_one", "icpt_mod:plain",
        cwd=tmp_path, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await bad.communicate()
    assert bad.returncode != 0
    assert b"expected an Interceptor or a factory returning one, got int" in err


class Observer(Recorder):
    sticky = True


class ActivitiesOnly(Interceptor):
    async def execute_activity(
        self, info: ActivityInfo, args: list[Any], next: Callable[[list[Any]], Awaitable[Any]]
    ) -> Any:
        return await next(args)


def test_which_interceptors_let_a_worker_keep_a_workflow() -> None:
    """The sticky cache keeps a workflow when each interceptor that wraps workflow code says
    it may (`sticky`); one that wraps only activities or the client has no say."""
    assert keepable(()) and keepable([Interceptor(), ActivitiesOnly()])
    assert keepable([Observer("S", []), ActivitiesOnly()])
    assert not keepable([Recorder("A", [])])
    assert not keepable([Observer("S", []), Recorder("A", [])])


async def test_a_sticky_interceptor_wraps_each_activation_kept_or_not(
    client: Callable[..., Awaitable[MemFlow]], db: SQL
) -> None:
    """A sticky interceptor's execute_workflow is around each activation, whether the worker
    resumed it from its cache or replayed it: the same log with the cache and without; a
    workflow under an interceptor that is not sticky is never kept."""
    logs: dict[str, list[str]] = {}
    for cache in (8, 0):
        log = logs.setdefault(f"cache {cache}", [])
        mf = await client(interceptors=[Observer("S", log)])
        worker = await mf.worker.create(
            task_queue=f"sq{cache}", workflow=sleepy, sticky_cache=cache
        )
        handle = await mf.workflow.start(workflow_name="sleepy", task_queue=f"sq{cache}")
        assert await handle.result(timeout=20) == 2
        assert worker.sticky.hits == (2 if cache else 0)
    assert logs["cache 8"] == logs["cache 0"] == [
        "S>workflow", "S>sleep:@1", "S<workflow",
        "S>workflow", "S>sleep:@2", "S<workflow",
        "S>workflow", "S<workflow",
    ]  # fmt: skip
    mf = await client(interceptors=[Recorder("A", [])])
    worker = await mf.worker.create(task_queue="nq", workflow=sleepy)
    handle = await mf.workflow.start(workflow_name="sleepy", task_queue="nq")
    assert await handle.result(timeout=20) == 2
    assert (worker.sticky.hits, len(worker.sticky)) == (0, 0)


async def sleepy() -> int:
    await workflow.sleep_for(0.01)
    await workflow.sleep_for(0.01)
    return 2
