"""Property tests (hypothesis) of the engine's SQL, against a real Postgres.

1. Retry schedules: retry_delay, _retry_at and _final_error against a Python model of the
   documented policy (DESIGN section 9): the delay before run n+1 is
   min(initial_interval * backoff_coefficient ** (n - 1), maximum_interval); an invalid policy
   or attempt is 22023.
2. The job/task state machine, driven by random valid and invalid calls (start, claim,
   complete, fail, suspend, bury, heartbeat, release, cancel, retry, signal, wait, sleep,
   activity, hook, wake, and fake clock moves): after every call each error is one of the
   documented SQLSTATEs, and the invariants below hold; every status change is a legal one.

Entity operation sequences have their own property test: tests/test_entity_property.py.
"""

from __future__ import annotations

import itertools
import math
import uuid
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import event
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from helpers import fast_and_slow

pytestmark = pytest.mark.timeout(180)

DOCUMENTED = {f"HM00{i}" for i in range(1, 9)} | {"22023", "22P02"}
FINAL_CODES = {410, 596, 597, 598}

# ------------------------------------------------------------------------ 1. retry schedules

POLICY_FIELDS = (
    "maximum_attempts",
    "initial_interval",
    "backoff_coefficient",
    "maximum_interval",
    "non_retryable_errors",
)
DEFAULTS: dict[str, Any] = {
    "maximum_attempts": 3,
    "initial_interval": 1,
    "backoff_coefficient": 10,
    "maximum_interval": 120,
    "non_retryable_errors": [],
}


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def model_policy(policy: Any) -> dict[str, Any] | None:
    """The policy with defaults filled in, or None when it is invalid (docs/python-api.md)."""
    if policy is None:
        policy = {}
    if not isinstance(policy, dict) or set(policy) - set(POLICY_FIELDS):
        return None
    full = {k: DEFAULTS[k] if policy.get(k) is None else policy[k] for k in POLICY_FIELDS}
    attempts, initial = full["maximum_attempts"], full["initial_interval"]
    coefficient, maximum = full["backoff_coefficient"], full["maximum_interval"]
    if not (is_number(attempts) and attempts == int(attempts) and 1 <= attempts <= 2**31 - 1):
        return None
    if not (is_number(initial) and initial > 0):
        return None
    if not (is_number(coefficient) and coefficient >= 1):
        return None
    if not (is_number(maximum) and initial <= maximum <= 1e10):
        return None
    errors = full["non_retryable_errors"]
    if not (isinstance(errors, list) and all(isinstance(e, str) for e in errors)):
        return None
    return full


def model_delay(policy: dict[str, Any], attempt: int) -> float:
    """min(initial * coefficient ** (attempt - 1), maximum), in seconds."""
    initial = float(policy["initial_interval"])
    coefficient = float(policy["backoff_coefficient"])
    try:
        raw = initial * coefficient ** (attempt - 1)
    except OverflowError:
        raw = math.inf
    return min(raw, float(policy["maximum_interval"]))


numbers = (
    st.integers(-5, 10**11)
    | st.floats(min_value=-10.0, max_value=1e11, allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, 1, 1e-6, 0.5, 1e10, 1e10 + 1, 2**31 - 1, 2**31])
)
valid_policies = st.fixed_dictionaries(
    {},
    optional={
        "maximum_attempts": st.integers(1, 2**31 - 1) | st.none(),
        "initial_interval": st.floats(1e-6, 1e4) | st.integers(1, 10**4),
        "backoff_coefficient": st.floats(1, 100) | st.sampled_from([1, 2, 10]),
        "non_retryable_errors": st.lists(st.sampled_from(["ValueError", "KeyError"]), max_size=2),
    },
).flatmap(
    lambda p: st.builds(
        lambda ratio: {
            **p,
            "maximum_interval": min(1e10, (p.get("initial_interval") or 1) * ratio),
        },
        st.floats(1, 1e6) | st.just(1),
    )
)
any_policies = (
    valid_policies
    | st.none()
    | st.dictionaries(
        st.sampled_from([*POLICY_FIELDS, "max_attempts"]),
        # No NUL and no lone surrogate: jsonb cannot hold \u0000 or \ud800, so Postgres
        # refuses such a value (22P05, 22P02) before the engine sees it.
        numbers
        | st.none()
        | st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=3)
        | st.lists(st.integers(), max_size=2),
        max_size=5,
    )
    | st.sampled_from([[], "3", 3, True])
)
attempts = st.integers(1, 12) | st.integers(-3, 2**31 - 1) | st.sampled_from([2**31 - 1, 0, -1])


def sql_error(conn: psycopg.Connection[Any], query: str, *params: Any) -> tuple[Any, str | None]:
    """(first column, None) or (None, SQLSTATE)."""
    try:
        with conn.transaction():
            row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    except psycopg.Error as error:
        return None, error.sqlstate
    return (row[0] if row else None), None


def _retry_delay_matches_the_policy(db: Any, policy: Any, attempt: int) -> None:
    value, sqlstate = sql_error(
        db.conn, "select extract(epoch from retry_delay(%s, %s))", Jsonb(policy), attempt
    )
    full = model_policy(policy)
    if full is None or attempt < 1:
        event("invalid policy or attempt")
        assert sqlstate == "22023"
        return
    event("valid")
    assert sqlstate is None
    expected = model_delay(full, attempt)
    if expected == float(full["maximum_interval"]):
        event("capped")
    # intervals have microsecond resolution
    assert math.isclose(float(value), expected, rel_tol=1e-12, abs_tol=1.5e-6)


test_retry_delay_matches_the_policy, test_retry_delay_matches_the_policy_thoroughly = fast_and_slow(
    _retry_delay_matches_the_policy, 75, 300, policy=any_policies, attempt=attempts
)


def test_retry_delay_edge_values(db: Any) -> None:
    """The edges the random test may not hit: the last attempt an integer holds, a
    coefficient of 1, a cap equal to the first delay, the largest cap."""
    cases = [
        ({}, 1, 1.0),
        ({}, 2, 10.0),
        ({}, 3, 100.0),
        ({}, 4, 120.0),
        ({}, 2**31 - 1, 120.0),
        ({"backoff_coefficient": 1, "initial_interval": 7, "maximum_interval": 9}, 2**31 - 1, 7.0),
        ({"initial_interval": 5, "maximum_interval": 5}, 1, 5.0),
        ({"initial_interval": 1e-6, "maximum_interval": 1e-6}, 9, 1e-6),
        ({"maximum_interval": 1e10, "backoff_coefficient": 100}, 2**31 - 1, 1e10),
        ({"maximum_interval": 1e10, "backoff_coefficient": 100}, 6, 1e10),
        ({"maximum_interval": 1e10, "backoff_coefficient": 100}, 5, 1e8),
    ]
    for policy, attempt, expected in cases:
        value = db.one("select extract(epoch from retry_delay(%s, %s))", Jsonb(policy), attempt)
        assert math.isclose(float(value), expected, rel_tol=1e-12, abs_tol=1.5e-6), policy
        assert math.isclose(model_delay(model_policy(policy) or {}, attempt), expected)


def _retry_at_and_final_error_follow_the_policy(
    db: Any, policy: dict[str, Any], attempt: int, code: Any, error_type: str | None
) -> None:
    full = model_policy(policy)
    assert full is not None
    error = {"message": "boom", **({"code": code} if code is not None else {})}
    if error_type:
        error["type"] = error_type
    db.one("select set_config('hotmesh.fake_now', '2030-01-01 00:00:00+00', false)")
    retry_at = db.one("select _retry_at(%s, %s, %s)", Jsonb(policy), attempt, Jsonb(error))
    final = db.one("select _final_error(%s, %s, %s)", Jsonb(policy), attempt, Jsonb(error))
    db.one("select set_config('hotmesh.fake_now', '', false)")
    code_final = code is not None and int(code) in FINAL_CODES
    non_retryable = (error_type or "") in full["non_retryable_errors"]
    used_up = attempt >= full["maximum_attempts"]
    if code_final or non_retryable or used_up:
        event("final")
        assert retry_at is None
        expected_code = int(code) if code_final else 597 if used_up else 598
        assert final["code"] == expected_code and final["attempts"] == attempt
        assert final["message"] == "boom"
    else:
        event("retried")
        start = datetime.fromisoformat("2030-01-01T00:00:00+00:00")
        delay = (retry_at - start).total_seconds()
        assert math.isclose(delay, model_delay(full, attempt), rel_tol=1e-12, abs_tol=1.5e-6)


(
    test_retry_at_and_final_error_follow_the_policy,
    test_retry_at_and_final_error_follow_the_policy_thoroughly,
) = fast_and_slow(
    _retry_at_and_final_error_follow_the_policy,
    50,
    200,
    policy=valid_policies,
    attempt=st.integers(1, 6),
    code=st.sampled_from([None, 410, 500, 596, 597, 598, 599, "598"]),
    error_type=st.sampled_from([None, "ValueError", "KeyError", "OSError"]),
)


# ------------------------------------------------------------------------ 2. the state machine

STATUSES = {"pending", "running", "waiting", "completed", "failed", "cancelled"}
TERMINAL = {"completed", "failed", "cancelled"}
LEGAL = {
    ("pending", "running"),
    ("waiting", "running"),
    ("running", "waiting"),
    ("pending", "waiting"),  # an activation claimed ahead that suspends before it starts
    ("running", "completed"),
    ("running", "failed"),
    ("waiting", "failed"),
    ("pending", "cancelled"),
    ("running", "cancelled"),
    ("waiting", "cancelled"),
    ("failed", "pending"),  # retry_workflow, the one way back
}

# One query: every invariant, as a list of violations (empty when all hold). %(p)s is the
# example's prefix: its jobs, queues and signal ids all start with it.
INVARIANTS = """
select coalesce(array_agg(v), '{}') from (
  select format('job %%s has status %%s', id, status) as v from jobs
   where id like %(p)s and status not in
         ('pending', 'running', 'waiting', 'completed', 'failed', 'cancelled')
  union all
  select format('job %%s is %%s but has task %%s (%%s %%s)', j.id, j.status, t.id, t.kind, t.state)
    from jobs as j join tasks as t on t.job_id = j.id
   where j.id like %(p)s and j.status in ('completed', 'failed', 'cancelled')
  union all
  select format('%%s activation tasks for (%%s, %%s)', count(*), job_id, thread)
    from tasks where job_id like %(p)s and kind = 'workflow'
   group by job_id, thread having count(*) > 1
  union all
  select format('task %%s is leased without owner, token or expiry', id) from tasks
   where job_id like %(p)s and state = 'leased'
     and (lease_token is null or lease_owner is null or lease_expires_at is null)
  union all
  select format('task %%s is %%s but keeps a lease', id, state) from tasks
   where job_id like %(p)s and state <> 'leased'
     and (lease_token is not null or lease_owner is not null or lease_expires_at is not null)
  union all
  select format('task %%s belongs to no workflow', t.id) from tasks as t
   where t.job_id like %(p)s and not exists (select from jobs as j where j.id = t.job_id)
  union all
  select format('task %%s has attempt %%s', id, attempt) from tasks
   where job_id like %(p)s and attempt < 0
  union all
  select format('activity task %%s has no scheduled activity step', t.id) from tasks as t
   where t.job_id like %(p)s and t.kind = 'activity'
     and not exists (select from steps as s
                      where s.job_id = t.job_id and s.thread = t.thread and s.seq = t.seq
                        and s.kind = 'activity' and s.status = 'scheduled')
  union all
  select format('job %%s: completed_at %%s / expire_at %%s do not match status %%s',
                id, completed_at, expire_at, status) from jobs
   where id like %(p)s
     and ((status in ('completed', 'failed', 'cancelled'))
          <> (completed_at is not null and expire_at is not null))
  union all
  select format('job %%s has attempt %%s', id, attempt) from jobs
   where id like %(p)s and attempt < 1
  union all
  select format('job %%s thread %%s has a timer at step %%s but no activation',
                s.job_id, s.thread, s.seq)
    from steps as s join jobs as j on j.id = s.job_id
   where s.job_id like %(p)s and j.status not in ('completed', 'failed', 'cancelled')
     and s.status in ('scheduled', 'retrying') and s.wake_at is not null
     and (s.thread = 'main' or exists (select from threads as th where th.job_id = s.job_id
                                        and th.thread = s.thread and th.status = 'running'))
     and not exists (select from tasks as t where t.job_id = s.job_id and t.thread = s.thread
                      and t.kind = 'workflow')
  union all
  select format('signal %%s (kept, for %%s) and the wait at %%s/%%s/%%s missed each other',
                g.signal_id, coalesce(g.job_id, 'anyone'), s.job_id, s.thread, s.seq)
    from signals as g
    join steps as s on s.kind = 'signal' and s.status = 'scheduled' and s.name = g.signal_id
    join jobs as j on j.id = s.job_id
   where g.signal_id like %(p)s and (g.job_id is null or g.job_id = s.job_id)
     and j.status not in ('completed', 'failed', 'cancelled')
     and (s.thread = 'main' or exists (select from threads as th where th.job_id = s.job_id
                                        and th.thread = s.thread and th.status = 'running'))
) as violations
"""

examples = itertools.count()


class Machine:
    """One example: its own prefix (jobs, queues, signal ids), clock and known leases."""

    def __init__(self, conn: psycopg.Connection[Any], data: st.DataObject) -> None:
        self.conn = conn
        self.data = data
        self.p = f"x{next(examples)}{uuid.uuid4().hex[:4]}-"
        self.now = datetime.fromisoformat("2030-01-01T00:00:00+00:00")
        self.jobs: list[str] = []
        self.leases: list[tuple[int, str]] = []
        self.queues = [self.p + "q1", self.p + "q2"]
        self.signals = [self.p + "s1", self.p + "s2"]
        self.statuses: dict[str, str] = {}
        self.calls = 0
        self.set_clock()

    def set_clock(self) -> None:
        self.conn.execute("select set_config('hotmesh.fake_now', %s, false)", (str(self.now),))

    def draw(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def job(self) -> str:
        known = st.sampled_from(self.jobs) if self.jobs else st.nothing()
        return str(self.draw(known | st.just(self.p + "nope")))

    def lease(self) -> tuple[int, str]:
        """A task id and token: a lease this example holds or held (maybe stale), or junk."""
        if not self.leases:
            return (self.draw(st.integers(-5, 2**40)), str(uuid.uuid4()))
        kind = self.draw(st.sampled_from(["latest", "latest", "latest", "old", "wrong", "junk"]))
        if kind == "latest":  # most likely still held
            return self.draw(st.sampled_from(self.leases[-3:]))  # type: ignore[no-any-return]
        if kind == "old":  # maybe stale: finished, or taken over since
            return self.draw(st.sampled_from(self.leases))  # type: ignore[no-any-return]
        if kind == "wrong":  # a real task, a token that never was its own
            return (self.draw(st.sampled_from(self.leases))[0], str(uuid.uuid4()))
        return (self.draw(st.integers(-5, 2**40)), str(uuid.uuid4()))

    def call(self, op: str) -> None:
        d = self.draw
        if op == "start":
            wid = d(st.sampled_from([f"{self.p}w{len(self.jobs)}", *self.jobs[:1]]))
            options: dict[str, Any] = d(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "retry_policy": st.fixed_dictionaries(
                            {"maximum_attempts": st.integers(1, 3)},
                            optional={"initial_interval": st.integers(1, 30)},
                        ),
                        "priority": st.integers(-2, 2),
                    },
                )
            )
            self.sql(
                "select start_workflow('w', '[]', %s, %s, null, %s)",
                d(st.sampled_from(self.queues)),
                wid,
                Jsonb(options),
            )
            if wid not in self.jobs and self.statuses_now().get(wid):
                self.jobs.append(wid)
        elif op == "claim":
            queues = d(st.lists(st.sampled_from(self.queues), min_size=1, max_size=2))
            rows = self.sql(
                "select task_id, lease_token::text from claim_tasks(%s, %s, %s, %s)",
                queues,
                d(st.sampled_from(["A", "B"])),
                d(st.integers(1, 3)),
                timedelta(seconds=d(st.integers(1, 60))),
                rows=True,
            )
            self.leases.extend((int(i), str(t)) for i, t in rows or [])
        elif op == "complete":
            self.sql("select complete_task(%s, %s, %s)", *self.lease(), Jsonb(d(st.integers())))
        elif op == "fail":
            error = d(
                st.fixed_dictionaries(
                    {"message": st.just("boom")},
                    optional={
                        "code": st.sampled_from([410, 596, 597, 598, 599]),
                        "type": st.sampled_from(["ValueError", "KeyError"]),
                    },
                )
            )
            self.sql("select fail_task(%s, %s, %s)", *self.lease(), Jsonb(error))
        elif op == "suspend":
            self.sql("select suspend_task(%s, %s)", *self.lease())
        elif op == "bury":
            self.sql('select bury_task(%s, %s, \'{"message": "stuck"}\')', *self.lease())
        elif op == "heartbeat":
            chosen = [self.lease() for _ in range(d(st.integers(0, 3)))]
            self.sql(
                "select heartbeat(%s::bigint[], %s::uuid[], %s)",
                [i for i, _ in chosen],
                [t for _, t in chosen],
                timedelta(seconds=d(st.integers(-1, 60))),
            )
        elif op == "release":
            chosen = [self.lease() for _ in range(d(st.integers(0, 3)))]
            self.sql(
                "select release_tasks(%s::bigint[], %s::uuid[])",
                [i for i, _ in chosen],
                [t for _, t in chosen],
            )
        elif op == "cancel":
            self.sql("select cancel_workflow(%s, null, true, %s)", self.job(), d(st.booleans()))
        elif op == "retry":
            self.sql("select retry_workflow(%s)", self.job())
        elif op == "signal":
            target = d(st.none() | st.just("job"))
            self.sql(
                "select signal(%s, %s, %s)",
                d(st.sampled_from(self.signals)),
                Jsonb(d(st.integers(0, 9))),
                None if target is None else self.job(),
            )
        elif op == "wait":
            self.sql(
                "select wait_signal(%s, %s, %s, %s, %s)",
                *self.lease(),
                d(st.integers(1, 4)),
                d(st.sampled_from(self.signals)),
                d(st.none() | st.integers(0, 90)),
            )
        elif op == "sleep":
            self.sql(
                "select schedule_sleep(%s, %s, %s, %s)",
                *self.lease(),
                d(st.integers(1, 4)),
                d(st.integers(-1, 90)),
            )
        elif op == "activity":
            self.sql(
                "select schedule_activity(%s, %s, %s, 'act', '[]', %s,"
                ' \'{"maximum_attempts": 2, "initial_interval": 5}\')',
                *self.lease(),
                d(st.integers(1, 4)),
                d(st.sampled_from(self.queues)),
            )
        elif op == "inline":
            failed = d(st.booleans())
            self.sql(
                "select record_step(%s, %s, %s, 'activity', 'inline', '[]', '1', %s,"
                ' \'{"maximum_attempts": 2, "initial_interval": 5}\')',
                *self.lease(),
                d(st.integers(1, 4)),
                Jsonb({"message": "flaky", "type": "OSError"}) if failed else None,
            )
        elif op == "hook":
            self.sql("select hook(%s, 'h', '[]', %s)", self.job(), d(st.sampled_from(self.queues)))
        elif op == "wake":
            self.sql("select _wake(%s, %s)", self.job(), d(st.sampled_from(["main", "h1"])))
        elif op == "clock":
            self.now += timedelta(seconds=d(st.integers(0, 120)))
            self.set_clock()
        else:  # pragma: no cover
            raise AssertionError(op)

    def sql(self, query: str, *params: Any, rows: bool = False) -> Any:
        self.calls += 1
        try:
            with self.conn.transaction():
                cur = self.conn.execute(query, params)  # type: ignore[arg-type]
                return cur.fetchall() if rows else cur.fetchone()
        except psycopg.Error as error:
            event(f"error {error.sqlstate}")
            assert error.sqlstate in DOCUMENTED, f"{query} {params}: {error.sqlstate} {error}"
            return None

    def statuses_now(self) -> dict[str, str]:
        rows = self.conn.execute(
            "select id, status from jobs where id like %s", (self.p + "%",)
        ).fetchall()
        return dict(rows)

    def check(self, op: str) -> None:
        violations = self.conn.execute(INVARIANTS, {"p": self.p + "%"}).fetchone()
        assert violations is not None and violations[0] == [], f"after {op}: {violations[0]}"
        now = self.statuses_now()
        for wid, status in now.items():
            before = self.statuses.get(wid)
            assert status in STATUSES
            if before is None:
                assert status == "pending", f"{wid} started as {status}"
            elif before != status:
                event(f"{before} -> {status}")
                assert (before, status) in LEGAL, f"after {op}: {wid} went {before} -> {status}"
        assert set(self.statuses) <= set(now), "a workflow disappeared"
        self.statuses = now


# Weighted: the calls that move a workflow along come up more often than the odd ones.
OPS = [
    *["start"] * 3,
    *["claim"] * 5,
    *["complete"] * 2,
    *["fail"] * 2,
    *["suspend"] * 3,
    *["wait"] * 2,
    *["sleep"] * 2,
    *["activity"] * 2,
    *["inline"] * 2,
    *["signal"] * 3,
    *["clock"] * 3,
    *["hook"] * 2,
    "cancel",
    "retry",
    "bury",
    "heartbeat",
    "release",
    "wake",
]


def _the_state_machine_never_reaches_an_undefined_state(db: Any, data: st.DataObject) -> None:
    machine = Machine(db.conn, data)
    try:
        machine.call("start")
        machine.check("start")
        for _ in range(data.draw(st.integers(5, 40), label="length")):
            op = data.draw(st.sampled_from(OPS))
            machine.call(op)
            machine.check(op)
        event(f"calls: {machine.calls // 10 * 10}+")
        for status in sorted(set(machine.statuses.values())):
            event(f"reached {status}")
    finally:
        db.conn.execute("select set_config('hotmesh.fake_now', '', false)")


(
    test_the_state_machine_never_reaches_an_undefined_state,
    test_the_state_machine_never_reaches_an_undefined_state_thoroughly,
) = fast_and_slow(_the_state_machine_never_reaches_an_undefined_state, 25, 100, data=st.data())


def test_an_activity_lease_records_no_workflow_step(db: Any) -> None:
    """Found by the state machine test: a timer recorded under an activity's lease belonged to
    no activation and never fired. Every step-recording call now wants an activation (HM003)."""
    db.one("select start_workflow('w', '[]', 'q', 'wf')")
    main = db.one("select row(task_id, lease_token) from claim_tasks(array['q'], 'W', 1)")
    db.one("select schedule_activity(%s::bigint, %s::uuid, 1, 'act', '[]', 'acts')", *main)
    db.one("select suspend_task(%s::bigint, %s::uuid)", *main)
    act = db.one("select row(task_id, lease_token) from claim_tasks(array['acts'], 'A', 1)")
    calls = [
        "record_step(%s, %s, 2, 'activity', 'a', '[]', '1')",
        "schedule_activity(%s, %s, 2, 'b', '[]', 'acts')",
        "schedule_sleep(%s, %s, 2, 5)",
        "wait_signal(%s, %s, 2, 'go', null)",
        "send_signal(%s, %s, 2, 'go', '1')",
        "start_child(%s, %s, 2, 'c', '[]', 'q', null, null, '{}', false)",
        "start_hook(%s, %s, 2, 'h', '[]', 'q', null, null)",
        "cancel_step(%s, %s, 2, 'wf', null, false)",
        "search_step(%s, %s, 2, 'set', '{\"k\": 1}')",
        "emit_step(%s, %s, 2, '{\"t\": 1}')",
        "entity_step(%s, %s, 2, 'set', 'k', '1')",
    ]
    for call in calls:
        with pytest.raises(psycopg.Error) as caught, db.conn.transaction():
            db.conn.execute(f"select {call}", (int(act[0]), act[1]))
        assert caught.value.sqlstate == "HM003", call
    assert db.rows("select seq, kind from steps where job_id = 'wf' order by seq") == [
        (1, "activity")
    ]
