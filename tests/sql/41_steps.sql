-- Recording durable calls: record_step (first record wins; inline retries: retrying ->
-- completed | failed), non-determinism (HM006), schedule_activity, schedule_sleep, and timers
-- completed by a claim of their thread only once due.
begin;
\ir _preamble.psql
\ir _fixtures.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(70);

create temp table a1 on commit drop as
select *
from pg_temp.start_claimed(
    't41-q', 'st-1', p_lease => interval '1 hour', p_options => '{"priority": 3}'
);

-- record_step as the activation a1.
create function pg_temp.record(
    p_seq integer, p_kind text, p_name text, p_input jsonb, p_output jsonb,
    p_error jsonb default null, p_retry_policy jsonb default null
) returns jsonb
language sql as $$
    select record_step(
        a.task_id, a.lease_token, p_seq, p_kind, p_name, p_input, p_output, p_error,
        p_retry_policy
    )
    from a1 as a
$$;

-- ------------------------------------------------------------------ record_step: success

select is(
    pg_temp.record(1, 'activity', 'add', '[1, 2]', '3'),
    '{"seq": 1, "kind": "activity", "name": "add", "status": "completed", "output": 3,
     "error": null, "attempt": 1, "due": null}'::jsonb,
    'record_step returns the step as recorded'
);
select results_eq(
    $$
    select thread, kind, name, status, input, output, error, attempt, wake_at, created_at,
           completed_at
    from steps where job_id = 'st-1' and seq = 1
    $$,
    $$
    values (
        'main', 'activity', 'add', 'completed', '[1, 2]'::jsonb, '3'::jsonb, null::jsonb, 1,
        null::timestamptz, '2020-01-01 00:00:00+00'::timestamptz,
        '2020-01-01 00:00:00+00'::timestamptz
    )
    $$,
    'the step row: input, output, completed now'
);

set local "hotmesh.fake_now" = '2020-01-01 00:00:01+00';
select is(
    pg_temp.record(1, 'activity', 'add', '[1, 2]', '4') -> 'output',
    '3'::jsonb,
    'a second record of the same call returns the first outcome'
);
select is(
    pg_temp.record(1, 'activity', 'add', '[1, 2]', null, '{"message": "late"}') ->> 'status',
    'completed',
    'a later failure of a completed call returns the completion'
);
select results_eq(
    $$select output, error, completed_at from steps where job_id = 'st-1' and seq = 1$$,
    $$values ('3'::jsonb, null::jsonb, '2020-01-01 00:00:00+00'::timestamptz)$$,
    'the first record stands unchanged'
);

-- ------------------------------------------------------------------ non-determinism: HM006

select throws_ok(
    $$select pg_temp.record(1, 'activity', 'sub', '[1, 2]', '3')$$,
    'HM006',
    'non-determinism in workflow "st-1" thread main: step 1 was recorded as activity "add" '
    || 'but the code now calls activity "sub"',
    'record_step of another name at a recorded position: HM006'
);
select throws_ok(
    $$select pg_temp.record(1, 'random', 'add', null, '0.5')$$,
    'HM006',
    'non-determinism in workflow "st-1" thread main: step 1 was recorded as activity "add" '
    || 'but the code now calls random "add"',
    'record_step of another kind at a recorded position: HM006'
);
select
    throws_ok(
        format(
            $$select schedule_activity(%s, %L, 1, 'remote', '[]', 't41-acts')$$,
            a.task_id, a.lease_token
        ),
        'HM006',
        'non-determinism in workflow "st-1" thread main: step 1 was recorded as activity "add" '
        || 'but the code now calls activity "remote"',
        'schedule_activity at a position recorded for another call: HM006'
    )
from a1 as a;
select
    throws_ok(
        format($$select schedule_sleep(%s, %L, 1, 5)$$, a.task_id, a.lease_token),
        'HM006',
        'non-determinism in workflow "st-1" thread main: step 1 was recorded as activity "add" '
        || 'but the code now calls sleep ""',
        'schedule_sleep at a position recorded for an activity: HM006'
    )
from a1 as a;
select results_eq(
    $$select kind, name, output from steps where job_id = 'st-1' and seq = 1$$,
    $$values ('activity', 'add', '3'::jsonb)$$,
    'a non-deterministic call changes nothing'
);
select is(
    (select count(*)::integer from tasks where job_id = 'st-1'), 1,
    '... and schedules nothing'
);

-- ------------------------------------------------------------------ inline retries

-- Policy for seq 2: delays 2 s, 4 s; 3 attempts.
set local "hotmesh.fake_now" = '2020-01-01 00:01:00+00';
select is(
    pg_temp.record(
        2, 'activity', 'flaky', '["x"]', null, '{"message": "e1"}',
        '{"initial_interval": 2, "backoff_coefficient": 2}'
    ),
    '{"seq": 2, "kind": "activity", "name": "flaky", "status": "retrying", "output": null,
     "error": {"message": "e1"}, "attempt": 1, "due": false}'::jsonb,
    'a failed inline call with attempts left: retrying, not yet due'
);
select results_eq(
    $$select input, wake_at, completed_at from steps where job_id = 'st-1' and seq = 2$$,
    $$values ('["x"]'::jsonb, '2020-01-01 00:01:02+00'::timestamptz, null::timestamptz)$$,
    'it waits until now + retry_delay(policy, 1) = now + 2 s'
);
select throws_ok(
    $$select pg_temp.record(2, 'activity', 'other', '["x"]', '1')$$,
    'HM006',
    'non-determinism in workflow "st-1" thread main: step 2 was recorded as activity "flaky" '
    || 'but the code now calls activity "other"',
    'a retrying step is still checked for non-determinism'
);

set local "hotmesh.fake_now" = '2020-01-01 00:01:02+00';
select is(
    pg_temp.record(
        2, 'activity', 'flaky', '["x"]', null, '{"message": "e2"}',
        '{"initial_interval": 2, "backoff_coefficient": 2}'
    ),
    '{"seq": 2, "kind": "activity", "name": "flaky", "status": "retrying", "output": null,
     "error": {"message": "e2"}, "attempt": 2, "due": false}'::jsonb,
    'the second attempt fails too: retrying, attempt 2, with its error'
);
select is(
    (select wake_at from steps where job_id = 'st-1' and seq = 2),
    '2020-01-01 00:01:06+00'::timestamptz,
    '... until now + retry_delay(policy, 2) = now + 4 s'
);

set local "hotmesh.fake_now" = '2020-01-01 00:01:06+00';
select is(
    pg_temp.record(
        2, 'activity', 'flaky', '["x"]', '"ok"', null,
        '{"initial_interval": 2, "backoff_coefficient": 2}'
    ),
    '{"seq": 2, "kind": "activity", "name": "flaky", "status": "completed", "output": "ok",
     "error": null, "attempt": 3, "due": null}'::jsonb,
    'the third attempt succeeds: retrying -> completed, attempt 3, the error cleared'
);
select results_eq(
    $$select wake_at, completed_at from steps where job_id = 'st-1' and seq = 2$$,
    $$values (null::timestamptz, '2020-01-01 00:01:06+00'::timestamptz)$$,
    'the completed step has no wake time and is completed now'
);

-- seq 3: 2 attempts, both fail -> failed with 597.
select is(
    pg_temp.record(
        3, 'activity', 'doomed', '[]', null, '{"message": "no"}',
        '{"maximum_attempts": 2}'
    ) ->> 'status',
    'retrying',
    'maximum_attempts 2, first failure: retrying'
);
set local "hotmesh.fake_now" = '2020-01-01 00:01:07+00';
select is(
    pg_temp.record(
        3, 'activity', 'doomed', '[]', null, '{"message": "no!"}',
        '{"maximum_attempts": 2}'
    ),
    '{"seq": 3, "kind": "activity", "name": "doomed", "status": "failed", "output": null,
     "error": {"message": "no!", "code": 597, "attempts": 2}, "attempt": 2,
     "due": null}'::jsonb,
    'second failure: retrying -> failed with 597 and the attempt count'
);
select results_eq(
    $$select wake_at, completed_at from steps where job_id = 'st-1' and seq = 3$$,
    $$values (null::timestamptz, '2020-01-01 00:01:07+00'::timestamptz)$$,
    'the failed step is final: no wake time, completed now'
);
select is(
    pg_temp.record(3, 'activity', 'doomed', '[]', '"late"') ->> 'status',
    'failed',
    'a later success of a failed call returns the failure (first final record wins)'
);

-- seq 4: fatal at once; seq 5: non-retryable type at once.
select is(
    pg_temp.record(
        4, 'activity', 'fatal', '[]', null,
        '{"code": 598, "message": "bad card"}'
    ),
    '{"seq": 4, "kind": "activity", "name": "fatal", "status": "failed", "output": null,
     "error": {"code": 598, "message": "bad card", "attempts": 1}, "attempt": 1,
     "due": null}'::jsonb,
    'a fatal error (598) fails the call at once'
);
select is(
    pg_temp.record(
        5, 'activity', 'typed', '[]', null, '{"type": "KeyError"}',
        '{"non_retryable_errors": ["KeyError"]}'
    ) -> 'error',
    '{"type": "KeyError", "code": 598, "attempts": 1}'::jsonb,
    'a non-retryable error type fails the call at once with 598'
);
select is(
    pg_temp.record(
        6, 'activity', 'once', '[]', null, '{"message": "x"}',
        '{"maximum_attempts": 1}'
    ) -> 'error',
    '{"message": "x", "code": 597, "attempts": 1}'::jsonb,
    'maximum_attempts 1: the first failure is final (597)'
);

-- ------------------------------------------------------------------ record_steps (batch)

-- One batch from two activations: fresh outcomes (inserted together), a position already
-- recorded (its first outcome comes back), an error under the retry policy, a repeated
-- position within the batch, and a stale lease (answered HM004 without failing the rest).
do $$
begin
    perform start_workflow('w', '[]', 't41-b', 'rs-1');
    perform start_workflow('w', '[]', 't41-b', 'rs-2');
end
$$;
create temp table b1 on commit drop as
select * from claim_tasks(array['t41-b'], 'worker-b', 2, interval '1 hour');
select
    ok(
        (
            record_step(b.task_id, b.lease_token, 1, 'activity', 'x', '[]', '"first"')
            ->> 'status'
        ) = 'completed',
        'rs-1 step 1 recorded before the batch'
    )
from b1 as b where b.job_id = 'rs-1';
create temp table batch1 on commit drop as
select
    record_steps(jsonb_build_array(
        jsonb_build_object(
            'task_id', one.task_id, 'token', one.lease_token, 'seq', 2,
            'kind', 'activity', 'name', 'x', 'input', '[2]'::jsonb, 'output', '"two"'::jsonb
        ),
        jsonb_build_object(
            'task_id', two.task_id, 'token', two.lease_token, 'seq', 1,
            'kind', 'activity', 'name', 'y', 'input', '[]'::jsonb, 'output', '"y1"'::jsonb
        ),
        jsonb_build_object(
            'task_id', one.task_id, 'token', one.lease_token, 'seq', 1,
            'kind', 'activity', 'name', 'x', 'input', '[]'::jsonb, 'output', '"again"'::jsonb
        ),
        jsonb_build_object(
            'task_id', two.task_id, 'token', gen_random_uuid(), 'seq', 2,
            'kind', 'activity', 'name', 'y', 'input', '[]'::jsonb, 'output', '"stale"'::jsonb
        ),
        jsonb_build_object(
            'task_id', two.task_id, 'token', two.lease_token, 'seq', 3,
            'kind', 'activity', 'name', 'z', 'input', '[]'::jsonb,
            'error', '{"message": "boom"}'::jsonb,
            'retry_policy', '{"maximum_attempts": 1}'::jsonb
        ),
        jsonb_build_object(
            'task_id', one.task_id, 'token', one.lease_token, 'seq', 2,
            'kind', 'activity', 'name', 'x', 'input', '[2]'::jsonb, 'output', '"twice"'::jsonb
        )
    )) as r
from b1 as one, b1 as two
where one.job_id = 'rs-1' and two.job_id = 'rs-2';
select results_eq(
    $$select e ->> 'status', e -> 'output', e #>> '{error,sqlstate}'
      from batch1, jsonb_array_elements(r) with ordinality as x (e, n) order by n$$,
    $$values ('completed', '"two"'::jsonb, null::text), ('completed', '"y1"', null),
             ('completed', '"first"', null), (null, null, 'HM004'),
             ('failed', 'null', null), ('completed', '"two"', null)$$,
    'results in item order: fresh, fresh, the first outcome, HM004, failed for good, and the '
    || 'first of two records of one position'
);
select results_eq(
    $$select job_id, seq, status, output from steps where job_id like 'rs-%' order by 1, 2$$,
    $$values ('rs-1', 1, 'completed', '"first"'::jsonb), ('rs-1', 2, 'completed', '"two"'),
             ('rs-2', 1, 'completed', '"y1"'), ('rs-2', 3, 'failed', null)$$,
    'one row per position: nothing was recorded for the stale lease'
);
select is(
    record_steps('[]'), '[]'::jsonb, 'an empty batch records nothing'
);

-- record_step is a batch of one: what it leaves SQL null (the input of a call that has none)
-- stays SQL null, not JSON null, and the batch's answer for the item is its own.
select
    is(
        record_step(b.task_id, b.lease_token, 4, 'random', 'r', null, '0.5') -> 'output',
        '0.5'::jsonb,
        'record_step returns its item''s answer'
    )
from b1 as b where b.job_id = 'rs-1';
select results_eq(
    $$select input is null, output from steps where job_id = 'rs-1' and seq = 4$$,
    $$values (true, '0.5'::jsonb)$$,
    'an input given as SQL null is recorded SQL null'
);
select is(
    _one_item(array['task_id', 'input', 'output'], array['1'::jsonb, null, 'null'::jsonb]),
    '[{"task_id": 1, "output": null}]'::jsonb,
    'the batch of one leaves out the SQL-null fields and keeps a JSON null'
);
select throws_ok(
    $$select _raise_item('{"error": {"sqlstate": "HM004", "message": "lease lost: task 1"}}')$$,
    'HM004', 'lease lost: task 1',
    'an item''s error is raised as the single call''s own'
);
select is(
    _raise_item('{"seq": 1, "error": null}'), '{"seq": 1, "error": null}'::jsonb,
    'any other answer (a step, whose error is one of its fields) is returned'
);

-- ------------------------------------------------------------------ schedule_activity

set local "hotmesh.fake_now" = '2020-01-01 00:02:00+00';
select
    is(
        schedule_activity(
            a.task_id, a.lease_token, 7, 'remote', '[1, "two"]', 't41-acts',
            '{"maximum_attempts": 4}'
        ),
        '{"seq": 7, "kind": "activity", "name": "remote", "status": "scheduled", "output": null,
         "error": null, "attempt": 1, "due": null}'::jsonb,
        'schedule_activity returns the scheduled step'
    )
from a1 as a;
select results_eq(
    $$select status, input, output, wake_at, completed_at from steps
      where job_id = 'st-1' and seq = 7$$,
    $$values ('scheduled', '[1, "two"]'::jsonb, null::jsonb, null::timestamptz,
              null::timestamptz)$$,
    'the step awaits its outcome, with the args as input'
);
select results_eq(
    $$
    select thread, kind, seq, name, task_queue, state, priority, run_at, attempt, payload
    from tasks where job_id = 'st-1' and kind = 'activity'
    $$,
    $$
    values (
        'main', 'activity', 7, 'remote', 't41-acts', 'ready', 3::smallint,
        '2020-01-01 00:02:00+00'::timestamptz, 0,
        '{"args": [1, "two"], "retry_policy": {"maximum_attempts": 4, "initial_interval": 1,
         "backoff_coefficient": 10, "maximum_interval": 120, "non_retryable_errors": []}}'::jsonb
    )
    $$,
    'an activity task on its queue: ready now (engine clock), the workflow''s priority, '
    || 'args and complete policy'
);
select
    is(
        schedule_activity(
            a.task_id, a.lease_token, 7, 'remote', '[1, "two"]', 't41-acts'
        ) ->> 'status',
        'scheduled',
        'scheduling the same call again returns the step ...'
    )
from a1 as a;
select is(
    (select count(*)::integer from tasks where job_id = 'st-1' and kind = 'activity'), 1,
    '... and schedules no second task'
);
select
    throws_ok(
        format(
            $$select schedule_activity(%s, %L, 8, 'remote2', '[]', null)$$,
            a.task_id, a.lease_token
        ),
        '22023', 'activity "remote2": task_queue is required', 'schedule_activity without a queue'
    )
from a1 as a;
select
    throws_ok(
        format(
            $$select schedule_activity(%s, %L, 8, 'remote2', '[]', '')$$,
            a.task_id, a.lease_token
        ),
        '22023', 'activity "remote2": task_queue is required',
        'schedule_activity with an empty queue'
    )
from a1 as a;
select
    throws_ok(
        format(
            $$select schedule_activity(%s, %L, 8, 'remote2', '[]', 't41-acts',
                                   '{"maximum_attempts": 0}')$$,
            a.task_id, a.lease_token
        ),
        '22023',
        'retry policy maximum_attempts must be a whole number from 1 to 2147483647, not 0',
        'schedule_activity with a bad retry policy'
    )
from a1 as a;
select is(
    (select count(*)::integer from steps where job_id = 'st-1' and seq = 8), 0,
    'a refused schedule_activity records no step ...'
);
select is(
    (select count(*)::integer from tasks where job_id = 'st-1' and kind = 'activity'), 1,
    '... and schedules no task'
);

-- ------------------------------------------------------------------ schedule_sleep

select
    is(
        schedule_sleep(a.task_id, a.lease_token, 8, 0),
        '{"seq": 8, "kind": "sleep", "name": "", "status": "completed", "output": 0,
         "error": null, "attempt": 1, "due": true}'::jsonb,
        'a zero-second sleep is completed at once'
    )
from a1 as a;
select results_eq(
    $$select input, wake_at, completed_at from steps where job_id = 'st-1' and seq = 8$$,
    $$values ('{"seconds": 0}'::jsonb, '2020-01-01 00:02:00+00'::timestamptz,
              '2020-01-01 00:02:00+00'::timestamptz)$$,
    'its step: 0 seconds, woken and completed now'
);
select
    is(
        schedule_sleep(a.task_id, a.lease_token, 9, 90.5),
        '{"seq": 9, "kind": "sleep", "name": "", "status": "scheduled", "output": null,
         "error": null, "attempt": 1, "due": false}'::jsonb,
        'a sleep is scheduled, not yet due'
    )
from a1 as a;
select results_eq(
    $$select input, wake_at, completed_at from steps where job_id = 'st-1' and seq = 9$$,
    $$values ('{"seconds": 90.5}'::jsonb, '2020-01-01 00:03:30.5+00'::timestamptz,
              null::timestamptz)$$,
    'its step wakes at now + 90.5 s'
);
set local "hotmesh.fake_now" = '2020-01-01 00:02:10+00';
select
    is(
        schedule_sleep(a.task_id, a.lease_token, 9, 1) -> 'status',
        '"scheduled"'::jsonb,
        'scheduling the same sleep again returns the step ...'
    )
from a1 as a;
select is(
    (select wake_at from steps where job_id = 'st-1' and seq = 9),
    '2020-01-01 00:03:30.5+00'::timestamptz,
    '... with the first wake time (first record wins)'
);
select
    throws_ok(
        format($$select schedule_sleep(%s, %L, 2, 5)$$, a.task_id, a.lease_token),
        'HM006',
        'non-determinism in workflow "st-1" thread main: step 2 was recorded as activity "flaky" '
        || 'but the code now calls sleep ""',
        'a sleep where an activity was recorded: HM006'
    )
from a1 as a;
select throws_ok(
    $$select pg_temp.record(9, 'activity', 'a', '[]', '1')$$,
    'HM006',
    'non-determinism in workflow "st-1" thread main: step 9 was recorded as sleep "" '
    || 'but the code now calls activity "a"',
    'an activity where a sleep was recorded: HM006'
);
select
    throws_ok(
        format($$select schedule_sleep(%s, %L, 10, %s)$$, a.task_id, a.lease_token, d.seconds),
        '22023',
        format('sleep duration must be from 0 to 1e10 seconds, not %s', d.shown),
        d.description
    )
from a1 as a cross join (
    values
    ('-1', '-1', 'a negative sleep'),
    ('-0.000001', '-0.000001', 'a sleep just below zero'),
    ('null', 'null', 'a null sleep'),
    ($$'NaN'$$, 'NaN', 'a NaN sleep'),
    ($$'Infinity'$$, 'Infinity', 'an infinite sleep'),
    ('1e11', '100000000000', 'a sleep too long for an interval')
) as d (seconds, shown, description);
select is(
    (select count(*)::integer from steps where job_id = 'st-1' and seq = 10), 0,
    'a refused sleep records nothing'
);

-- ------------------------------------------------------------------ the steps a claim returns

set local "hotmesh.fake_now" = '2020-01-01 00:02:20+00';
select
    is(
        suspend_task(a.task_id, a.lease_token), '2020-01-01 00:03:30.5+00'::timestamptz,
        'suspended until the 90.5 s timer'
    )
from a1 as a;
set local "hotmesh.fake_now" = '2020-01-01 00:03:30.5+00';
select results_eq(
    $$
    select s ->> 'seq', s ->> 'kind', s ->> 'status', s -> 'due'
    from claim_tasks(array['t41-q'], 'worker-1', 1) as c
    cross join jsonb_array_elements(c.steps) as s
    $$,
    $$
    values
    ('1', 'activity', 'completed', 'null'::jsonb),
    ('2', 'activity', 'completed', 'null'),
    ('3', 'activity', 'failed', 'null'),
    ('4', 'activity', 'failed', 'null'),
    ('5', 'activity', 'failed', 'null'),
    ('6', 'activity', 'failed', 'null'),
    ('7', 'activity', 'scheduled', 'null'),
    ('8', 'sleep', 'completed', 'true'),
    ('9', 'sleep', 'completed', 'true')
    $$,
    'the next activation gets every step of its thread in seq order, the due timer completed'
);
select results_eq(
    $$select status, output, completed_at from steps where job_id = 'st-1' and seq = 9$$,
    $$values ('completed', '90.5'::jsonb, '2020-01-01 00:03:30.5+00'::timestamptz)$$,
    'the timer step: completed with the seconds slept, at its wake time'
);

-- ------------------------------------------------------------------ timers fire only when due

set local "hotmesh.fake_now" = '2020-01-01 01:00:00+00';
create temp table t1 on commit drop as
select * from pg_temp.start_claimed('t41-timer', 'st-timer');
do $$
begin
    perform schedule_sleep(t.task_id, t.lease_token, 1, 10) from t1 as t;
    perform schedule_sleep(t.task_id, t.lease_token, 2, 20) from t1 as t;
    -- A retrying inline call: a claim reports it due once its wake time is reached.
    perform record_step(
        t.task_id, t.lease_token, 3, 'activity', 'flaky', '[]', null, '{}',
        '{"initial_interval": 15}'
    )
    from t1 as t;
    perform suspend_task(t.task_id, t.lease_token) from t1 as t;
    -- A timer of another thread of the same workflow.
    perform pg_temp.wake_hook('st-timer', 't41-timer');
    perform schedule_sleep(c.task_id, c.lease_token, 1, 10)
    from claim_tasks(array['t41-timer'], 'worker-1', 1) as c;
end
$$;

set local "hotmesh.fake_now" = '2020-01-01 01:00:09.999999+00';
select is_empty(
    $$select * from claim_tasks(array['t41-timer'], 'worker-1', 1)$$,
    'the activation is not claimable before its first timer is due'
);

-- Something else wakes the thread early: the claim does not complete the timers.
set local "hotmesh.fake_now" = '2020-01-01 01:00:05+00';
select _wake('st-timer', 'main');
create temp table early on commit drop as
select * from claim_tasks(array['t41-timer'], 'worker-1', 1);
select results_eq(
    $$
    select s ->> 'seq', s ->> 'status', s -> 'due'
    from early as c cross join jsonb_array_elements(c.steps) as s
    $$,
    $$values ('1', 'scheduled', 'false'::jsonb), ('2', 'scheduled', 'false'),
             ('3', 'retrying', 'false')$$,
    'an early activation sees its timers scheduled and not due'
);
select is(
    (select count(*)::integer from steps where job_id = 'st-timer' and status = 'completed'), 0,
    'no timer fired early'
);
select
    is(
        suspend_task(e.task_id, e.lease_token), '2020-01-01 01:00:10+00'::timestamptz,
        'suspended again until the first timer'
    )
from early as e;

set local "hotmesh.fake_now" = '2020-01-01 01:00:10+00';
create temp table on_time on commit drop as
select * from claim_tasks(array['t41-timer'], 'worker-1', 1);
select results_eq(
    $$
    select c.thread, s ->> 'seq', s ->> 'status', s -> 'output', s -> 'due'
    from on_time as c cross join jsonb_array_elements(c.steps) as s
    $$,
    $$values ('main', '1', 'completed', '10'::jsonb, 'true'::jsonb),
             ('main', '2', 'scheduled', 'null', 'false'),
             ('main', '3', 'retrying', 'null', 'false')$$,
    'at 10 s the claim completes the 10 s timer only'
);
select results_eq(
    $$select thread, seq, status, completed_at from steps where job_id = 'st-timer'
      order by thread, seq$$,
    $$values ('h1', 1, 'scheduled', null::timestamptz),
             ('main', 1, 'completed', '2020-01-01 01:00:10+00'::timestamptz),
             ('main', 2, 'scheduled', null), ('main', 3, 'retrying', null)$$,
    'the same-length timer of another thread is left to that thread''s claim'
);
select
    is(
        suspend_task(o.task_id, o.lease_token), '2020-01-01 01:00:15+00'::timestamptz,
        'suspended until the retry is due (15 s), before the 20 s timer'
    )
from on_time as o;
set local "hotmesh.fake_now" = '2020-01-01 01:00:15+00';
select results_eq(
    $$
    select s ->> 'seq', s ->> 'status', s -> 'due'
    from claim_tasks(array['t41-timer'], 'worker-1', 1) as c
    cross join jsonb_array_elements(c.steps) as s
    where c.thread = 'main'
    $$,
    $$values ('1', 'completed', 'true'::jsonb), ('2', 'scheduled', 'false'),
             ('3', 'retrying', 'true')$$,
    'at 15 s the retrying call is due (the worker runs it again); the 20 s timer is not'
);

select * from finish();

rollback;
