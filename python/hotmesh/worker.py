"""The worker: claims tasks of its queue with SKIP LOCKED, runs them, reports the outcome.

One claim loop per task queue per process. It claims as many tasks as it has free slots,
plus up to `prefetch` more ahead into a local buffer that feeds slots as they free (so a busy
worker does not wait a claim's round trip for its next task); sleeps until a NOTIFY for its
queue or the next due task, and keeps the leases of everything it runs alive with one
heartbeat call. A prefetched task holds a short lease until it starts (docs/performance.md).
A stop releases the buffer at once, finishes in-flight work within a grace period and gives
back (releases) the leases of whatever is still running.

A worker serves only an engine that serves its worker protocol (`<app>.engine_version()`,
docs/upgrading.md). It checks at start, before its first claim after a failed one (a
reconnect, or a call the engine refused) and after a run's call failed with a class-42 error
(42883 undefined_function: a function a newer release renamed or re-signatured; 42501: a
revoked grant). When the schema does not match, it logs one `schema_mismatch` error and stops
claiming: `MemFlow.run_until_signal` raises SchemaMismatch and `hotmesh worker` exits with
status 75. What it held is released at the stop or taken over when its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import math
import os
import socket
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from hotmesh import _install, errors
from hotmesh._commands import (
    AskHuman,
    CancelWorkflow,
    Command,
    Emit,
    EntityOp,
    PatchMarker,
    RecordedStep,
    ScheduleActivity,
    SearchOp,
    SendSignal,
    StartChild,
    StartHook,
    StartTimer,
    WaitSignal,
)
from hotmesh._db import LOCK_TIMEOUT_MS, ActivityCall, Claimed, Database, HeldClaim, lock_busy
from hotmesh._log import event, first_line, log_failure, task_fields
from hotmesh._runner import (
    Activation,
    Completed,
    Continued,
    Diverged,
    Failed,
    Suspended,
    encode,
)
from hotmesh.activity import ActivityInfo, run_activity
from hotmesh.codecs import CodecError, Payloads
from hotmesh.interceptors import Interceptor, keepable
from hotmesh.retry import has_timeouts

if TYPE_CHECKING:
    from hotmesh._listener import Listener
    from hotmesh.metrics import WorkerMetrics

log = logging.getLogger("hotmesh.worker")

Workflow = Callable[..., Any]
R = TypeVar("R")
Activity = Callable[..., Any]
_IDLE_POLL = 30.0  # seconds between claims when no notification and no due task arrives
# next_due puts a task that a queue's limits hold back a second ahead (_limited_due).
_HELD_BACK = 1.0
# An activation that met a lock held past lock_timeout gives its task back this long later
# (not at once: it would meet the same open transaction again in a loop).
_GIVE_BACK_AFTER = 1.0
_BUSY_RETRY_MAX = 5.0  # seconds between tries of an outcome's call that met a held lock
# How long a process trusts what it read of the queues' limits (Registry.limited).
_LIMITS_FRESH = 1.0
# The sticky cache (StickyCache): how many suspended activations a worker keeps by default,
# and for how long at most (seconds). A remote step's round trip is milliseconds; a workflow
# woken later than this replays, which costs a few milliseconds once. A worker with more
# workflows awaiting remote activities than it keeps wakes them in about the order they
# suspended, the least recently used first: each was closed just before its wake-up, and all
# replayed (bench's `remote`, 500 in flight, missed 9 in 10 at 256).
STICKY_CACHE = 1024
STICKY_TTL = 10.0
# Tasks a worker claims ahead of its free slots by default (Worker.prefetch). A claim and a
# completion each cost the database about a millisecond whatever their size, so a drain's
# cost per task falls with the batch: the buffer refills at half, so claims take about half
# of this (docs/performance.md#bigger-batches).
PREFETCH = 256
# A prefetched task's lease until it starts: how long a worker that died holds it up.
_PREFETCH_LEASE = 5.0
# A prefetched task that runs is started in the database (start_tasks) this long after, in
# one call with the others due, unless its code has finished by then (its outcome is on its
# way): short tasks cost no call. An activity soon, since its run deadline (start_to_close,
# heartbeat_timeout) begins then; an activation, which has none, once it outlasts what most
# take (a start call locks its task row, and the activation's own step records waited).
_START_AFTER = {"activity": 0.05, "workflow": 1.0}


class Registry:
    """The workflows and activities this process serves, by task queue."""

    def __init__(self) -> None:
        self.workflows: dict[str, dict[str, Workflow]] = {}
        self.activities: dict[str, dict[str, Activity]] = {}
        self.served: set[str] = set()
        # Set when the app's schema turns out not to match this package: every worker of the
        # process stops claiming, and MemFlow.run_until_signal raises it.
        self.mismatch: errors.SchemaMismatch | None = None
        self.halted = asyncio.Event()
        self._limited: frozenset[str] = frozenset()
        self._limits_read_at = -math.inf
        # What wraps the workflows and activities of each queue (docs/interceptors.md): the
        # client's interceptors, then those given to mf.worker.create for the queue.
        self.interceptors: tuple[Interceptor, ...] = ()
        # The payload codecs of MemFlow.init(codec=...): the identity when there are none.
        self.payloads = Payloads(None)
        self.queue_interceptors: dict[str, tuple[Interceptor, ...]] = {}
        # What the workers of this process count, when metrics are on (docs/metrics.md).
        self.metrics: WorkerMetrics | None = None

    def interceptors_for(self, task_queue: str) -> tuple[Interceptor, ...]:
        return self.queue_interceptors.get(task_queue, self.interceptors)

    def register_activities(self, task_queue: str, activities: Mapping[str, Activity]) -> None:
        self.activities.setdefault(task_queue, {}).update(activities)

    def inline_activity(self, task_queue: str, name: str) -> Activity | None:
        if task_queue not in self.served:
            return None
        return self.activities.get(task_queue, {}).get(name)

    async def limited(self, db: Database, task_queue: str) -> bool:
        """Whether `task_queue` has limits (set_queue_limits), as known within the last
        second: an inline call would bypass them, so a call to such a queue goes through it."""
        now = asyncio.get_running_loop().time()
        if now - self._limits_read_at > _LIMITS_FRESH:
            self._limited = frozenset(row.task_queue for row in await db.get_queue_limits())
            self._limits_read_at = now
        return task_queue in self._limited


class StickyCache:
    """A worker's recently suspended activations, by (workflow, thread), kept alive so that
    when the same worker claims the thread again it resumes where the code waits instead of
    replaying its whole history (Temporal's sticky execution). Bounded: at most `size`, the
    least recently used closed first, of which at most a quarter parked (suspended without
    sending an activity call: waiting for a signal, a timer, a child), which may not come back
    soon; and none kept longer than `ttl` seconds, so workflows parked for long hold no worker
    memory. Whether an entry may be used is decided by the claim's history
    (Activation.resume); anything else replays."""

    def __init__(self, size: int, ttl: float = STICKY_TTL) -> None:
        self.size = size
        self.ttl = ttl
        self._kept: OrderedDict[tuple[str, str], tuple[float, Activation]] = OrderedDict()
        self._parked: OrderedDict[tuple[str, str], None] = OrderedDict()  # of _kept
        self.hits = 0  # claims resumed from the cache
        self.misses = 0  # claims replayed though an entry was kept: the history moved on

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._kept

    def take(self, key: tuple[str, str]) -> Activation | None:
        self.expire()
        kept = self._kept.pop(key, None)
        if kept is None:
            return None
        self._parked.pop(key, None)
        return kept[1]

    def put(self, key: tuple[str, str], act: Activation, parked: bool = False) -> None:
        self._kept[key] = (time.monotonic(), act)
        if parked:
            self._parked[key] = None
            while len(self._parked) > (self.size + 3) // 4:
                self._close(next(iter(self._parked)))
        while len(self._kept) > self.size:
            self._close(next(iter(self._kept)))
        self.expire()

    def _close(self, key: tuple[str, str]) -> None:
        self._parked.pop(key, None)
        self._kept.pop(key)[1].close()

    def expire(self) -> None:
        """Close the entries kept longer than the ttl (the oldest are first)."""
        now = time.monotonic()
        while self._kept:
            key, (kept_at, _) = next(iter(self._kept.items()))
            if now - kept_at < self.ttl:
                return
            self._close(key)

    def next_expiry(self) -> float | None:
        """Seconds until the oldest entry expires; None when none is kept."""
        if not self._kept:
            return None
        kept_at, _ = next(iter(self._kept.values()))
        return max(0.0, kept_at + self.ttl - time.monotonic())

    def clear(self) -> None:
        for _, act in self._kept.values():
            act.close()
        self._kept.clear()
        self._parked.clear()


class Worker:
    """Serves one task queue: workflow activations and activities registered on it."""

    def __init__(
        self,
        db: Database,
        listener: Listener,
        registry: Registry,
        task_queue: str,
        *,
        concurrency: int = 8,
        lease: float = 30.0,
        build_id: str | None = None,
        sticky_cache: int = STICKY_CACHE,
        prefetch: int = PREFETCH,
    ) -> None:
        if concurrency < 1:
            raise errors.InvalidArgument(f"concurrency must be >= 1, not {concurrency}")
        if not (isinstance(sticky_cache, int) and 0 <= sticky_cache <= 1_000_000):
            raise errors.InvalidArgument(
                f"sticky_cache must be a whole number from 0 to 1000000, not {sticky_cache!r}"
            )
        if not (isinstance(prefetch, int) and 0 <= prefetch <= 10_000):
            raise errors.InvalidArgument(f"prefetch must be 0 to 10000, not {prefetch!r:.80}")
        if not 0 < lease <= 86400:
            raise errors.InvalidArgument(f"lease must be > 0 and <= 86400 seconds, not {lease}")
        if not (isinstance(task_queue, str) and 0 < len(task_queue) <= 255) or "\0" in task_queue:
            raise errors.InvalidArgument(
                f"task_queue must be 1 to 255 characters without NUL, not {task_queue!r:.80}"
            )
        self.build_id = check_build_id(build_id)
        self.db = db
        self.listener = listener
        self.registry = registry
        self.task_queue = task_queue
        self.concurrency = concurrency
        self.lease = timedelta(seconds=lease)
        self.prefetch = prefetch
        self.prefetch_lease = timedelta(seconds=min(_PREFETCH_LEASE, lease))
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._running: dict[asyncio.Task[None], Claimed] = {}
        # Runners whose code is done and whose last call (complete, suspend, fail) is in
        # flight, usually waiting for a group commit. Their slots are free for new claims;
        # their tasks stay leased (and heartbeaten) until that call commits.
        self._settling: set[asyncio.Task[None]] = set()
        # Prefetched tasks not started yet, with when they were claimed (loop time), in claim
        # order; those kept past half their lease, to release; slots a claim in flight fills.
        self._buffer: deque[tuple[float, Claimed]] = deque()
        self._stale: list[Claimed] = []
        self._claiming = 0
        self._plain = False  # the next claim is not held (_idle)
        # Runners whose activation suspended with nothing due (next_run None): whatever makes
        # it due later sends a NOTIFY, so their end need not wake the claim loop (_finished).
        self._parked: set[asyncio.Task[None]] = set()
        # Runners of prefetched tasks not yet started in the database (start_tasks), and
        # when the last `prefetch` runners started: the buffer holds no more than started in
        # the last quarter of the short lease, so what it holds starts long before that ends.
        self._unstarted: dict[asyncio.Task[None], tuple[Claimed, float]] = {}
        self._start_wake = asyncio.Event()
        self._start_next = math.inf  # when the start loop looks next (loop time)
        self._launched: deque[float] = deque(maxlen=max(prefetch, 1))
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._checking = asyncio.Lock()
        self.sticky = StickyCache(sticky_cache)
        # How long the last give-back of each activation (workflow, thread) that met a held
        # lock waited: the next one waits twice as long, up to _BUSY_RETRY_MAX, so a thread
        # that is claimed again while the row is still held (a hook: the claim skips only
        # main threads of held workflows) costs a slot and a first try ever more rarely.
        self._given_back: dict[tuple[str, str], float] = {}

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        """Serve the queue; SchemaMismatch (and nothing served) when this worker cannot serve
        the app's engine."""
        async with self.db._connection() as conn:
            await _install.check_worker(conn, self.db.app_id)
        self.registry.served.add(self.task_queue)
        self.listener.watch_queue(self.task_queue, self._wake)
        if self.registry.metrics is not None:
            self.registry.metrics.watch_in_flight(self.task_queue, lambda: len(self._running))
        event(
            log,
            logging.INFO,
            "worker_start",
            worker=self.worker_id,
            queue=self.task_queue,
            concurrency=self.concurrency,
            lease=self.lease,
            prefetch=self.prefetch,
        )
        self._loops = [
            asyncio.create_task(self._claim_loop(), name=f"hotmesh-claim-{self.task_queue}"),
            asyncio.create_task(self._heartbeat_loop(), name=f"hotmesh-beat-{self.task_queue}"),
            asyncio.create_task(self._start_loop(), name=f"hotmesh-start-{self.task_queue}"),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; let in-flight tasks finish for up to `grace` seconds, then release
        the leases of the rest so another worker takes them over at once."""
        self._stopping = True
        self._wake.set()
        self._slot_freed.set()
        self.listener.unwatch_queue(self.task_queue, self._wake)
        if self._loops:
            # The claim loop exits at its next check. A claim it is making finishes first, so
            # what it took gets a runner (finished or released below) instead of staying
            # leased by nobody until the lease expires.
            await asyncio.wait(self._loops[:1], timeout=grace)
        # What it claimed ahead and never started is claimable by others at once.
        await self._release_buffer()
        if self._running:
            await asyncio.wait(list(self._running), timeout=grace)
        # Only now: in-flight activations keep running their activities inline until here.
        self.registry.served.discard(self.task_queue)
        leftover = dict(self._running)
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.gather(*leftover, return_exceptions=True)
            with contextlib.suppress(psycopg.Error, errors.HotMeshError):
                released = await self.db.release_tasks(list(leftover.values()))
                event(log, logging.INFO, "release", worker=self.worker_id, tasks=released)
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self.sticky.clear()
        event(log, logging.INFO, "worker_stop", worker=self.worker_id, queue=self.task_queue)

    # -- claiming ------------------------------------------------------------------------
    def _free(self) -> int:
        return self.concurrency - len(self._running) + len(self._settling) - self._claiming

    def _ahead(self) -> int:
        """How many tasks to claim ahead: room in the buffer, but no more than this worker
        started in the last quarter of the prefetch lease (or its concurrency, if more), so
        that what it holds starts long before that lease ends (or is released at half)."""
        if not self.prefetch:
            return 0
        recent = asyncio.get_running_loop().time() - self.prefetch_lease.total_seconds() / 4
        started = 0
        for at in reversed(self._launched):
            if at <= recent:
                break
            started += 1
        return max(0, min(self.prefetch - len(self._buffer), max(started, self.concurrency)))

    def _dispatch(self) -> None:
        """Start buffered tasks in the free slots; set aside those kept past half their
        lease (released by the claim loop: another worker may take them at once)."""
        if self._stopping:
            return
        now = asyncio.get_running_loop().time()
        keep = self.prefetch_lease.total_seconds() / 2
        while self._buffer and self._free() > 0:
            claimed_at, task = self._buffer.popleft()
            if now - claimed_at > keep:
                self._stale.append(task)
                self._slot_freed.set()
                continue
            self._launch(task, prefetched=True)
        while self._buffer and now - self._buffer[0][0] > keep:
            self._stale.append(self._buffer.popleft()[1])
        if self._stale or 2 * len(self._buffer) <= self.prefetch:
            self._slot_freed.set()  # time to release, or to refill

    def _launch(self, task: Claimed, *, prefetched: bool, held: HeldClaim | None = None) -> None:
        runner = asyncio.create_task(self._process(task, held))
        self._running[runner] = task
        runner.add_done_callback(self._finished)
        now = asyncio.get_running_loop().time()
        self._launched.append(now)
        if prefetched:
            due = now + _START_AFTER.get(task.kind, _START_AFTER["activity"])
            self._unstarted[runner] = (task, due)
            if due < self._start_next:
                self._start_wake.set()

    async def _release_buffer(self) -> None:
        """Give back the prefetched tasks not started (all of them when stopping)."""
        if self._stopping:
            self._stale.extend(task for _, task in self._buffer)
            self._buffer.clear()
        stale, self._stale = self._stale, []
        if not stale:
            return
        try:
            released = await self.db.release_tasks(stale)
        except (psycopg.Error, errors.HotMeshError) as error:
            # Their short lease runs out: another worker takes them then.
            event(
                log,
                logging.WARNING,
                "db_error",
                during="release",
                queue=self.task_queue,
                error=first_line(error),
            )
            return
        event(log, logging.INFO, "release", worker=self.worker_id, tasks=released, ahead=True)

    async def _claim_loop(self) -> None:
        delay = 0.1
        failures = 0
        down_since = 0.0
        while not self._stopping:
            await self._release_buffer()
            self._dispatch()
            free = self._free()
            ahead = self._ahead()
            # Claim for free slots; else refill the buffer once it is down to half.
            if free <= 0 and (ahead == 0 or len(self._buffer) > ahead):
                self._slot_freed.clear()
                timeout = None
                if self._buffer:  # wake to set aside what grows stale
                    keep = self.prefetch_lease.total_seconds() / 2
                    age = asyncio.get_running_loop().time() - self._buffer[0][0]
                    timeout = max(0.01, keep - age)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slot_freed.wait(), timeout)
                continue
            free = max(free, 0)
            self._wake.clear()
            self._claiming = free
            held: HeldClaim | None = None
            try:
                # After a failure (the server restarted, maybe upgraded, or refused the call),
                # claim only from an engine that still serves this worker.
                if failures and not await self._engine_serves_us():
                    return
                hold = self._may_hold(free)
                # A held claim takes its tasks ahead (not started): a woken activation's
                # outcome commits with it, so its workflow's move to running would be a
                # write nobody sees; the outcome moves it once (waiting -> completed).
                claimed = await self.db.claim_tasks(
                    [self.task_queue],
                    self.worker_id,
                    0 if hold else free,
                    self.lease,
                    self.build_id,
                    free if hold else ahead,
                    self.prefetch_lease,
                    hold,
                )
                self._plain = False
                held = claimed.held
                if held is not None and not (
                    len(claimed) == 1
                    and claimed[0].kind == "workflow"
                    and (claimed[0].job_id, claimed[0].thread) in self.sticky
                ):
                    await held.end()
                    held = None
            except Exception as error:  # the loop must outlive any failure, it only backs off
                if lock_busy(error):
                    # Cut off by lock_timeout (a migrate holds `tasks`): nothing was claimed;
                    # the database is fine, so no failure is counted.
                    event(
                        log,
                        logging.WARNING,
                        "lock_busy",
                        during="claim",
                        queue=self.task_queue,
                        lock_timeout_ms=LOCK_TIMEOUT_MS,
                        retry_in=0.1,
                    )
                    await asyncio.sleep(0.1)
                    continue
                # The database is unreachable or restarting: back off, 0.1 s doubling to 5 s.
                # (Connections the server ended are replaced: see Database._connection.)
                if failures == 0:
                    down_since = asyncio.get_running_loop().time()
                failures += 1
                event(
                    log,
                    logging.WARNING,
                    "db_error",
                    during="claim",
                    queue=self.task_queue,
                    failures=failures,
                    retry_in=delay,
                    error=first_line(error),
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            finally:
                self._claiming = 0
            if failures:
                event(
                    log,
                    logging.WARNING,
                    "reconnect",
                    queue=self.task_queue,
                    failures=failures,
                    down_for=asyncio.get_running_loop().time() - down_since,
                )
                if self.registry.metrics is not None:
                    self.registry.metrics.reconnects.labels(self.task_queue).inc()
                failures = 0
                delay = 0.1
            if self.registry.metrics is not None:
                for task in claimed:
                    self.registry.metrics.claimed.labels(task.task_queue, task.kind).inc()
                    self.registry.metrics.schedule_to_start.labels(
                        task.task_queue, task.kind
                    ).observe(task.schedule_to_start)
            # The first `free` rows started; the rest were claimed ahead (prefetched).
            now = asyncio.get_running_loop().time()
            logged = log.isEnabledFor(logging.INFO)  # not a dict of fields per task otherwise
            for index, task in enumerate(claimed):
                if logged:
                    event(
                        log,
                        logging.INFO,
                        "claim",
                        **task_fields(task),
                        attempt=task.attempt,
                        ahead=index >= free,
                    )
                if index < free:
                    self._launch(task, prefetched=hold, held=held)
                else:
                    self._buffer.append((now, task))
            if held is not None:
                # Until it commits, the task it holds looks due to every other reader: a
                # claim now would find nothing, and next_due would wake it again at once.
                await held.ended.wait()
            if len(claimed) < free + ahead and not self._stopping:
                await self._idle(missed=hold and not claimed)

    def _may_hold(self, free: int) -> bool:
        """Whether to claim in a transaction left open (HeldClaim): when this worker is idle
        and keeps suspended activations, so that the one a signal or an outcome wakes can end
        in its claim's transaction. (A codec decodes first: not held.)"""
        return (
            free > 0
            and not self._plain
            and not self._running
            and len(self.sticky) > 0
            and not self.registry.payloads.enabled
        )

    async def _idle(self, missed: bool = False) -> None:
        """Sleep until a notification, the next due task or the fallback poll, closing the
        kept activations as they expire meanwhile (an idle worker holds none past the ttl).
        `missed`: a held claim took nothing."""
        self.sticky.expire()
        timeout = _IDLE_POLL
        try:
            due = await self.db.next_due([self.task_queue])
        except (psycopg.Error, OSError):
            # Not knowing when the next task is due (the connection broke, the server is
            # restarting), look again soon: a lease that expires meanwhile sends no NOTIFY.
            timeout = 1.0
        else:
            if due is not None:
                timeout = min(timeout, max(0.0, (due - datetime.now(UTC)).total_seconds()))
                # A queue with limits gives tasks to a claim for free slots only, never
                # ahead: a task due (or held back) that a held claim missed is claimed
                # plainly, at once.
                self._plain = missed and timeout <= _HELD_BACK
                if self._plain:
                    return
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while (left := until - loop.time()) > 0:
            expiry = self.sticky.next_expiry()
            try:
                await asyncio.wait_for(
                    self._wake.wait(), left if expiry is None else min(left, expiry)
                )
                return
            except TimeoutError:
                self.sticky.expire()

    def _settling_now(self) -> None:
        """The calling runner's code is done: free its slot so the next claim need not wait
        for the commit of its outcome (a worker holds at most 2 x concurrency leases)."""
        runner = asyncio.current_task()
        if runner in self._running:
            self._settling.add(runner)
            self._slot_freed.set()
            self._dispatch()

    def _finished(self, runner: asyncio.Task[None]) -> None:
        task = self._running.pop(runner, None)
        self._settling.discard(runner)
        self._unstarted.pop(runner, None)
        self._slot_freed.set()
        self._dispatch()
        # A finished activation may have left its task due later (a timer, a retry): the
        # claim loop looks again, so it sleeps until then and not until the fallback poll.
        # Not after a suspension with nothing due: that look (a claim and next_due, about
        # 2 ms) kept a worker busy just when a signal to the workflow that parked may come.
        if runner in self._parked:
            self._parked.discard(runner)
        else:
            self._wake.set()
        if not runner.cancelled() and runner.exception() is not None:
            event(
                log,
                logging.ERROR,
                "crash",
                exc_info=runner.exception(),
                task=None if task is None else task.task_id,
                workflow=None if task is None else task.job_id,
            )

    async def _start_loop(self) -> None:
        """Start in the database the prefetched tasks this worker runs (start_tasks), each at
        its time (_START_AFTER), in one call for all due, but not those whose code finished."""
        loop = asyncio.get_running_loop()
        while True:
            for runner in [r for r in self._unstarted if r in self._settling or r.done()]:
                del self._unstarted[runner]  # its outcome is on its way
            now = loop.time()
            self._start_next = min((at for _, at in self._unstarted.values()), default=math.inf)
            if self._start_next > now:
                self._start_wake.clear()
                with contextlib.suppress(TimeoutError):
                    wait = None if self._start_next == math.inf else self._start_next - now
                    await asyncio.wait_for(self._start_wake.wait(), wait)
                continue
            due = {r: task for r, (task, at) in self._unstarted.items() if at <= now}
            try:
                held = await self.db.start_tasks(list(due.values()), self.lease)
            except (psycopg.Error, OSError, errors.HotMeshError) as error:
                event(
                    log,
                    logging.WARNING,
                    "db_error",
                    during="start",
                    queue=self.task_queue,
                    error=first_line(error),
                )
                await asyncio.sleep(_START_AFTER["activity"])
                continue  # the runners are still in _unstarted: again
            # One not held was taken over (the heartbeat finds it lost and stops it) or is
            # locked by its own outcome's call right now: either way, not sent again.
            for runner in due:
                self._unstarted.pop(runner, None)
            if len(held) < len(due):
                event(
                    log,
                    logging.DEBUG,
                    "start",
                    queue=self.task_queue,
                    started=len(held),
                    not_held=len(due) - len(held),
                )

    async def _heartbeat_loop(self) -> None:
        interval = self.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            held_tasks = dict(self._running)
            if not held_tasks:
                continue
            try:
                held = await self.db.heartbeat(list(held_tasks.values()), self.lease)
            except (psycopg.Error, OSError) as error:
                event(
                    log,
                    logging.WARNING,
                    "db_error",
                    during="heartbeat",
                    queue=self.task_queue,
                    error=first_line(error),
                )
                if _refused(error):
                    await self._recheck()
                continue
            # A runner whose last call (complete, suspend, fail) committed while the heartbeat
            # ran is not held any more but is not lost either: it ends in a moment. Only one
            # still running after that lost its lease.
            missing = [r for r, t in held_tasks.items() if t.task_id not in held and not r.done()]
            if missing:
                await asyncio.wait(missing, timeout=interval)
            for runner, task in held_tasks.items():
                if task.task_id not in held and not runner.done():
                    event(
                        log,
                        logging.WARNING,
                        "lease_lost",
                        **task_fields(task),
                    )
                    if self.registry.metrics is not None:
                        self.registry.metrics.lease_losses.labels(self.task_queue).inc()
                    runner.cancel()

    # -- running -------------------------------------------------------------------------
    async def _process(self, task: Claimed, held: HeldClaim | None = None) -> None:
        try:
            try:
                if self.registry.payloads.enabled:  # a codec (docs/codecs.md)
                    task = self.registry.payloads.task(task)
                if task.kind == "workflow":
                    await self._activate(task, held=held)
                else:
                    await self._run_activity(task)
            except CodecError as error:
                await self._undecodable(task, error)
            except (psycopg.Error, errors.HotMeshError) as error:
                if not lock_busy(error):
                    raise
                await self._give_back(task, error)
        except (errors.LeaseLost, errors.TaskNotFound) as error:
            event(
                log,
                logging.INFO,
                "drop",
                task=task.task_id,
                workflow=task.job_id,
                queue=task.task_queue,
                reason=error,
            )
        except (psycopg.Error, OSError) as error:
            # The lease expires and the task runs again; nothing unrecorded was lost.
            event(
                log,
                logging.WARNING,
                "db_error",
                during="run",
                **task_fields(task),
                error=first_line(error),
                rerun_after=self.lease,
            )
            if _refused(error):
                await self._recheck()

    # -- the engine's version --------------------------------------------------------------
    async def _engine_serves_us(self) -> bool:
        """Whether the app's engine still serves this worker: False (and the worker halted)
        when it does not; a database error when the database cannot say."""
        async with self._checking, self.db._connection() as conn:
            mismatch = _install.worker_mismatch(
                self.db.app_id, await _install.installed_engine(conn, self.db.app_id)
            )
        if mismatch is None:
            return True
        self._halt(mismatch)
        return False

    async def _recheck(self) -> None:
        """After the engine refused a call: halt if it no longer serves this worker. One
        check at a time; a failing check is left to the claim loop's."""
        if self._checking.locked():
            return
        with contextlib.suppress(psycopg.Error, OSError):
            await self._engine_serves_us()

    def _halt(self, mismatch: errors.SchemaMismatch) -> None:
        """Stop claiming, for good: this worker cannot serve the app's engine. Logged once per
        process; run_until_signal then stops the workers and raises it."""
        if self.registry.mismatch is None:
            self.registry.mismatch = mismatch
            event(
                log,
                logging.ERROR,
                "schema_mismatch",
                worker=self.worker_id,
                queue=self.task_queue,
                error=mismatch.message,
                exit_code=mismatch.exit_code,
            )
        self._stopping = True
        self._wake.set()
        self._slot_freed.set()
        self.registry.halted.set()

    async def _give_back(self, task: Claimed, error: BaseException) -> None:
        """A durable call of this activation met a lock that an open transaction held past
        lock_timeout: free the slot, keep the lease a second (doubling, up to 5 s, for the
        same thread again), then give the task back (not counted as an attempt). Nothing it
        recorded is lost; the next run replays it."""
        self._settling_now()
        key = (task.job_id, task.thread)
        wait = min(2 * self._given_back.get(key, _GIVE_BACK_AFTER / 2), _BUSY_RETRY_MAX)
        if len(self._given_back) >= 10_000:  # threads that never came back: forget them
            self._given_back.clear()
        self._given_back[key] = wait
        _log_busy(task, error, wait)
        await asyncio.sleep(wait)
        try:
            await self.db.release_tasks([task])
        except (psycopg.Error, errors.HotMeshError) as again:
            if not lock_busy(again):
                raise
            # Its task row is held too (a caller's cancel_workflow): the lease runs out.
            event(log, logging.WARNING, "lock_busy", **task_fields(task), rerun_after=self.lease)

    async def _outcome_call(self, task: Claimed, call: Callable[[], Awaitable[R]]) -> R:
        """An outcome's call (complete, suspend, fail): one that meets a held lock is sent
        again, 0.1 s doubling to 5 s, in the patient lane (Database.patient), with the slot
        free and the lease kept by heartbeats, so a run that is done is never run again
        because of somebody's open transaction."""
        delay = 0.1
        busy = False
        while True:
            try:
                with self.db.patient() if busy else contextlib.nullcontext():
                    return await call()
            except (psycopg.Error, errors.HotMeshError) as error:
                if not lock_busy(error):
                    raise
                _log_busy(task, error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BUSY_RETRY_MAX)
            busy = True

    async def _activate(
        self, task: Claimed, defer: bool = True, held: HeldClaim | None = None
    ) -> None:
        try:
            await self._activate_held(task, defer, held)
        finally:
            if held is not None:
                await held.end()  # not ended with an outcome: the claim commits alone

    async def _activate_held(self, task: Claimed, defer: bool, held: HeldClaim | None) -> None:
        """Run an activation. With `held` (its claim's transaction, still open), one resumed
        from the sticky cache sends its completion or suspension in that transaction; a
        replay, a durable call or any other outcome commits the claim first."""
        fn = self.registry.workflows.get(task.task_queue, {}).get(task.name)
        if fn is None:
            if held is not None:
                await held.end()
            # Retryable (599): another worker on the queue may know it.
            await self._unregistered(task, "workflow", self.registry.workflows, 599)
            return
        executor = _Executor(self.db, task, self.registry, defer, held)
        interceptors = self.registry.interceptors_for(task.task_queue)
        key = (task.job_id, task.thread)
        # Kept only when each interceptor that wraps workflow code allows it (sticky).
        keep = self.sticky.size > 0 and keepable(interceptors)
        act = self.sticky.take(key)
        if act is not None and act.fn is fn and act.resume(task, executor):
            self.sticky.hits += 1
        else:
            if held is not None:
                await held.end()  # a replay: no transaction stays open while it runs
            if act is not None:
                self.sticky.misses += 1
                act.close()
            act = Activation(task, fn, self.registry, executor, interceptors=interceptors)
        began = time.perf_counter()
        outcome = await act.run(keep=keep)
        self._given_back.pop(key, None)  # its durable calls went through
        self._settling_now()  # only the outcome's call remains
        if held is not None and not isinstance(outcome, Suspended | Completed):
            await held.end()
        if executor.deferred and not isinstance(outcome, Suspended | Diverged):
            await executor.send_deferred()  # calls it made but did not wait for
        metrics = self.registry.metrics
        if metrics is not None:
            metrics.activation_seconds.labels(task.task_queue, task.name).observe(
                time.perf_counter() - began
            )
            if not isinstance(outcome, Failed):
                metrics.completed.labels(task.task_queue, task.kind).inc()
        fields = {**task_fields(task), "steps": act.seq}
        if isinstance(outcome, Suspended):
            calls = executor.deferred
            try:
                next_run = await self._outcome_call(
                    task, lambda: self.db.suspend_task(task, calls, held)
                )
            except errors.InvalidArgument:
                act.close()
                if not calls:
                    raise
                # The engine refused one of its calls (bad arguments), and nothing was
                # recorded: the activation runs again sending each call alone, so that only
                # the bad call fails, in the code that made it.
                await self._activate_held(task, False, None)
                return
            except BaseException:
                act.close()
                raise
            if keep:  # recorded: the next claim may resume it
                self.sticky.put(key, act, parked=not calls)
            if next_run is None and (runner := asyncio.current_task()) in self._running:
                self._parked.add(runner)
            event(log, logging.INFO, "suspend", **fields, next_run=next_run)
        elif isinstance(outcome, Completed):
            value = self.registry.payloads.encode(outcome.result)
            await self._outcome_call(task, lambda: self.db.complete_task(task, value, held))
            event(log, logging.INFO, "complete", **fields)
        elif isinstance(outcome, Continued):
            await self._continue(task, outcome, fields)
        elif isinstance(outcome, Failed):
            payload = errors.to_payload(outcome.error)
            result = await self._outcome_call(task, lambda: self.db.fail_task(task, payload))
            log_failure(log, task, result, outcome.error)
            if metrics is not None:
                metrics.failure(task.task_queue, task.kind, result.status == "retrying")
        else:  # Diverged: parked as dead, the history untouched, until new code or a retry
            fault = outcome.error
            recorded = task.recorded_build_id or "unknown"
            message = (
                f"{fault.message} (history recorded by build {recorded}, "
                f"replayed by build {self.build_id or 'unknown'})"
            )
            event(log, logging.ERROR, "stuck", **fields, error=message)
            await self.db.bury_task(
                task,
                {
                    "message": message,
                    "type": type(fault).__name__,
                    "code": 500,
                    "sqlstate": fault.sqlstate,
                    "recorded_build_id": task.recorded_build_id,
                    "build_id": self.build_id,
                },
            )

    async def _continue(self, task: Claimed, outcome: Continued, fields: dict[str, Any]) -> None:
        """The main thread continued as new: the next run starts, unless the code decided
        without an outcome that arrived meanwhile; then the run replays first (at once)."""
        if outcome.unseen:
            await self._outcome_call(task, lambda: self.db.release_tasks([task]))
            event(log, logging.INFO, "replay", **fields, reason="an outcome arrived")
            return
        following = self.registry.payloads.encode_args(outcome.args)
        run = await self._outcome_call(task, lambda: self.db.continue_task(task, following))
        if run is None:
            next_run = await self._outcome_call(task, lambda: self.db.suspend_task(task))
            event(log, logging.INFO, "suspend", **fields, next_run=next_run)
        else:
            event(log, logging.INFO, "continue", **fields, run=run)

    async def _undecodable(self, task: Claimed, error: CodecError) -> None:
        """Fail a task whose payloads this process cannot decode: at once, not retried (a
        retry here would fail the same way), naming the codec and key id."""
        payload = errors.to_payload(error)
        outcome = await self._outcome_call(task, lambda: self.db.fail_task(task, payload))
        log_failure(log, task, outcome, error)

    async def _unregistered(
        self, task: Claimed, what: str, table: dict[str, dict[str, Callable[..., Any]]], code: int
    ) -> None:
        """Fail a task whose function this worker does not have, naming what it does serve."""
        known = ", ".join(sorted(table.get(task.task_queue, {}))) or "none"
        await self.db.fail_task(
            task,
            {
                "message": f'{what} "{task.name}" is not registered on task queue '
                f'"{task.task_queue}" by worker {self.worker_id} (it serves: {known})',
                "type": f"Unknown{what.capitalize()}",
                "code": code,
            },
        )

    async def _run_activity(self, task: Claimed) -> None:
        fn = self.registry.activities.get(task.task_queue, {}).get(task.name)
        if fn is None:
            await self._unregistered(task, "activity", self.registry.activities, 598)
            return
        # An activity whose lease expired on its last attempt is never claimed: claim_tasks
        # fails it (LeaseExpired).
        loop = asyncio.get_running_loop()
        beats: set[asyncio.Future[Any]] = set()

        def beat() -> None:
            coro = self.db.activity_heartbeat(task, self.lease)
            if _on_loop(loop):
                beats.add(loop.create_task(coro))
                beats.difference_update({b for b in beats if b.done()})
            else:
                asyncio.run_coroutine_threadsafe(coro, loop)

        info = ActivityInfo(
            task.job_id, task.name, task.task_queue, task.attempt, False, beat, task.traceparent,
            task.seq,
        )  # fmt: skip
        metrics = self.registry.metrics
        began = time.perf_counter()
        try:
            try:
                result = encode(
                    await run_activity(
                        fn,
                        list(task.args or []),
                        info,
                        self.registry.interceptors_for(task.task_queue),
                    ),
                    f"the result of activity {task.name}",
                )
            finally:
                if metrics is not None:
                    metrics.activity_seconds.labels(task.task_queue, task.name).observe(
                        time.perf_counter() - began
                    )
            result = self.registry.payloads.encode(result)
        except Exception as error:
            self._settling_now()
            payload = errors.to_payload(error)
            outcome = await self._outcome_call(task, lambda: self.db.fail_task(task, payload))
            log_failure(log, task, outcome, error)
            if metrics is not None:
                metrics.failure(task.task_queue, task.kind, outcome.status == "retrying")
            return
        self._settling_now()
        if metrics is not None:
            metrics.completed.labels(task.task_queue, task.kind).inc()
        await self._outcome_call(task, lambda: self.db.complete_task(task, result))
        event(
            log,
            logging.INFO,
            "complete",
            **task_fields(task),
        )


class _Executor:
    """Carries out an activation's commands: the one place that maps each command to the
    stored function that records it (and performs it, or schedules it).

    With `defer`, a new call to an activity that runs through its queue is not sent at once:
    the activation goes on as if it were scheduled, and when it suspends the calls go with its
    suspension (suspend_tasks): one round trip and one commit for the activation's outcome."""

    def __init__(
        self,
        db: Database,
        task: Claimed,
        registry: Registry,
        defer: bool,
        held: HeldClaim | None = None,
    ) -> None:
        self.db = db
        self.task = task
        self.registry = registry
        self.defer = defer
        self.deferred: list[ActivityCall] = []
        self.held = held  # the claim's open transaction: committed before any call is sent

    async def send_deferred(self) -> None:
        """Send the deferred calls one by one: the activation ended without suspending
        (nobody awaits them; a bad one fails only itself, as when sent at once)."""
        if self.held is not None:
            await self.held.end()
        for call in self.deferred:
            with contextlib.suppress(errors.InvalidArgument):
                await self.db.schedule_activity(
                    self.task, call["seq"], call["name"], call["args"], call["task_queue"],
                    call["retry_policy"], call["concurrency_key"], call["traceparent"],
                )  # fmt: skip
        self.deferred.clear()

    async def __call__(
        self, seq: int, command: Command, recorded: RecordedStep | None
    ) -> RecordedStep:
        if self.held is not None:
            await self.held.end()  # the call's own transaction must see the claim
        payloads = self.registry.payloads
        if not payloads.enabled:
            return await self._perform(seq, command, recorded)
        # A codec: payloads go out encoded, and what comes back is decoded (docs/codecs.md).
        return payloads.step(await self._perform(seq, payloads.command(command), recorded))

    async def _perform(
        self, seq: int, command: Command, recorded: RecordedStep | None
    ) -> RecordedStep:
        db, task = self.db, self.task
        # One coroutine per command, the hot path first: an inline activity is most steps.
        match command:
            case ScheduleActivity(activity=name, args=args, task_queue=queue):
                fn = self.registry.inline_activity(queue, name)
                # A keyed call, one with timeouts (only a queued task has a deadline the claim
                # enforces), or one to another queue with limits, is sent through its
                # queue, whose claim enforces them (one on this activation's own queue runs
                # inside the activation, which counted against that queue's limits).
                if fn is not None and (
                    command.concurrency_key is not None
                    or has_timeouts(command.retry_policy)
                    or (queue != task.task_queue and await self.registry.limited(db, queue))
                ):
                    fn = None
                if fn is None and recorded is None and self.defer:
                    self.deferred.append(
                        {"seq": seq, "name": name, "args": args, "task_queue": queue,
                         "retry_policy": command.retry_policy,
                         "concurrency_key": command.concurrency_key,
                         "traceparent": command.traceparent}
                    )  # fmt: skip
                    return RecordedStep(seq, "activity", name, "scheduled")
                if fn is None:
                    return await db.schedule_activity(
                        task, seq, name, args, queue, command.retry_policy,
                        command.concurrency_key, command.traceparent,
                    )  # fmt: skip
                # Runs here, in this process, and is recorded with one call.
                attempt = 1 if recorded is None else recorded.attempt + 1
                info = ActivityInfo(
                    task.job_id, name, queue, attempt, True,
                    traceparent=command.traceparent or task.traceparent, step=seq,
                )  # fmt: skip
                layers = self.registry.interceptors_for(queue)
                began = time.perf_counter()
                try:
                    plain = self.registry.payloads.decode(args)  # as the activity takes them
                    try:
                        output = encode(
                            await run_activity(fn, plain, info, layers), f"the result of {name}"
                        )
                    finally:
                        if self.registry.metrics is not None:
                            self.registry.metrics.activity_seconds.labels(queue, name).observe(
                                time.perf_counter() - began
                            )
                    output = self.registry.payloads.encode(output)
                except Exception as error:
                    return await db.record_step(
                        task, seq, "activity", name, args, None,
                        errors.to_payload(error), command.retry_policy,
                    )  # fmt: skip
                return await db.record_step(task, seq, "activity", name, args, output)
            case StartTimer():
                return await db.schedule_sleep(task, seq, command.seconds)
            case WaitSignal():
                return await db.wait_signal(task, seq, command.signal_id, command.timeout)
            case AskHuman():
                return await db.ask_human(task, seq, command.signal_id, command.request)
            case SendSignal():
                return await db.send_signal(
                    task, seq, command.signal_id, command.payload, command.workflow_id
                )
            case StartHook():
                return await db.start_hook(
                    task, seq, command.workflow_name, command.args, command.task_queue,
                    command.workflow_id, command.signal_id, command.options,
                )  # fmt: skip
            case StartChild():
                return await db.start_child(
                    task, seq, command.workflow_name, command.args, command.task_queue,
                    command.workflow_id, command.entity, command.options or {}, command.wait,
                )  # fmt: skip
            case CancelWorkflow():
                return await db.cancel_step(
                    task, seq, command.workflow_id, command.reason, command.descend
                )
            case EntityOp():
                return await db.entity_step(
                    task, seq, command.op, command.path, command.value, command.has_value
                )
            case SearchOp():
                return await db.search_step(task, seq, command.op, command.args)
            case Emit():
                return await db.emit_step(task, seq, command.events)
            case PatchMarker():
                return await db.record_patch(task, seq, command.patch_id, command.deprecated)
            case _:
                raise TypeError(f"no stored function performs {command!r}")


def check_build_id(build_id: str | None) -> str | None:
    if build_id is not None and not (
        isinstance(build_id, str) and 0 < len(build_id) <= 255 and "\0" not in build_id
    ):
        raise errors.InvalidArgument(
            f"build_id must be 1 to 255 characters without NUL, not {build_id!r:.80}"
        )
    return build_id


def default_build_id(workflows: Iterable[Workflow]) -> str:
    """The build id of a worker that names none: a digest of its workflow functions' source
    (their bytecode when the source is not at hand), so changed code gets another id."""
    digest = hashlib.sha256()
    for fn in sorted(workflows, key=lambda f: str(getattr(f, "__name__", ""))):
        try:
            code = inspect.getsource(fn).encode()
        except (OSError, TypeError):
            code = getattr(getattr(fn, "__code__", None), "co_code", repr(fn).encode())
        digest.update(str(getattr(fn, "__name__", "")).encode() + b"\0" + code + b"\0")
    return digest.hexdigest()[:12]


def _refused(error: BaseException) -> bool:
    """A call the engine refused as written (SQLSTATE class 42: an undefined function or
    column, a changed signature, a revoked privilege): maybe an upgrade changed it."""
    return isinstance(error, psycopg.Error) and (error.sqlstate or "").startswith("42")


def _log_busy(task: Claimed, error: BaseException, retry_in: float) -> None:
    """A call of this task met a lock held past lock_timeout; it is tried again later."""
    event(
        log,
        logging.WARNING,
        "lock_busy",
        **task_fields(task),
        lock_timeout_ms=LOCK_TIMEOUT_MS,
        retry_in=retry_in,
        error=first_line(error),
    )


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
