-- Timeouts under the engine clock (sql/25_timeouts.sql): an activity's start_to_close fails
-- its run at the deadline however the worker heartbeats, and the retry policy runs it again;
-- the old run is fenced (HM004). heartbeat_timeout restarts only with the activity's own
-- heartbeat. schedule_to_close bounds every attempt together and is final (596). A
-- workflow's execution_timeout fails it (596) from pending, running or waiting and cancels its
-- children; a hook's ends its thread (596 to its caller) and cancels what it started. Bad
-- timeouts are refused (22023) and change nothing.
begin;
\ir _preamble.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(60);

-- A workflow (on its own queue, named after it) whose main activation schedules one activity
-- with p_policy on t35-a and suspends.
create function pg_temp.with_activity(p_id text, p_policy jsonb) returns void
language plpgsql as $$
declare
    v_main record;
begin
    perform start_workflow('w', '[]', p_id, p_id, null, '{"expire": 3600}');
    select task_id, lease_token into v_main from claim_tasks(array[p_id], 'wf', 1);
    perform schedule_activity(v_main.task_id, v_main.lease_token, 1, 'act', '[]', 't35-a',
                              p_policy);
    perform suspend_task(v_main.task_id, v_main.lease_token);
end
$$;

-- ------------------------------------------------------------------ start_to_close

do $$ begin perform pg_temp.with_activity('to-1', '{"maximum_attempts": 3, "initial_interval": 1, "backoff_coefficient": 1, '
    '"start_to_close": 10}'); end $$;
create temp table run1 on commit drop as
select * from claim_tasks(array['t35-a'], 'worker-1', 1, interval '30 seconds');
select results_eq(
    $$select attempt, lease_expires_at, timeout_at from tasks where job_id = 'to-1'$$,
    $$values (1, '2020-01-01 00:00:10+00'::timestamptz, '2020-01-01 00:00:10+00'::timestamptz)$$,
    'a claimed run''s lease ends at its start_to_close, not after the 30 s lease'
);

set local "hotmesh.fake_now" = '2020-01-01 00:00:05+00';
select is(
    (select heartbeat(array[task_id], array[lease_token], '30 seconds') from run1),
    (select array[task_id] from run1),
    'the worker still holds the run at 5 s'
);
select is(
    (select lease_expires_at from tasks where job_id = 'to-1'),
    '2020-01-01 00:00:10+00',
    'a heartbeat does not extend the lease past start_to_close'
);

set local "hotmesh.fake_now" = '2020-01-01 00:00:09.999999+00';
select is_empty(
    $$select * from claim_tasks(array['to-1', 't35-a'], 'worker-2', 1)$$,
    'nothing times out before the deadline'
);

set local "hotmesh.fake_now" = '2020-01-01 00:00:10+00';
select is_empty(
    $$select * from claim_tasks(array['to-1'], 'worker-2', 1)$$,
    'at the deadline any claim (here on another queue) fires the timeout'
);
select results_eq(
    $$
    select state, attempt, run_at, lease_token, timeout_at, error ->> 'type',
        error ->> 'timeout', error ->> 'code'
    from tasks where job_id = 'to-1'
    $$,
    $$
    values (
        'ready', 1, '2020-01-01 00:00:11+00'::timestamptz, null::uuid, null::timestamptz,
        'TimeoutFailure', 'start_to_close', '599'
    )
    $$,
    'the timed-out run failed and is retried per its policy (1 s backoff)'
);
select throws_ok(
    format($$select complete_task(%s, %L, '"late"')$$, task_id, lease_token),
    'HM004',
    null,
    'the timed-out run, finishing later, is fenced'
) from run1;
select is(
    (select status from steps where job_id = 'to-1' and seq = 1),
    'scheduled',
    'and records nothing'
);

set local "hotmesh.fake_now" = '2020-01-01 00:00:11+00';
create temp table run2 on commit drop as
select * from claim_tasks(array['t35-a'], 'worker-2', 1, interval '30 seconds');
select results_eq(
    $$select attempt, lease_owner, timeout_at from tasks where job_id = 'to-1'$$,
    $$values (2, 'worker-2', '2020-01-01 00:00:21+00'::timestamptz)$$,
    'attempt 2 runs on another worker with its own start_to_close'
);
select lives_ok(
    format($$select complete_task(%s, %L, '"done"')$$, task_id, lease_token),
    'attempt 2 completes'
) from run2;
select results_eq(
    $$select status, output, attempt from steps where job_id = 'to-1' and seq = 1$$,
    $$values ('completed', '"done"'::jsonb, 2)$$,
    'the step records attempt 2''s result'
);

-- ------------------------------------------------------------------ heartbeat_timeout

set local "hotmesh.fake_now" = '2020-01-02 00:00:00+00';
do $$ begin perform pg_temp.with_activity('to-2', '{"maximum_attempts": 1, "heartbeat_timeout": 5}'); end $$;
create temp table beat on commit drop as
select * from claim_tasks(array['t35-a'], 'worker-1', 1, interval '30 seconds');

set local "hotmesh.fake_now" = '2020-01-02 00:00:04+00';
do $$ begin perform heartbeat(array[task_id], array[lease_token], '30 seconds') from beat; end $$;
select is(
    (select timeout_at from tasks where job_id = 'to-2'),
    '2020-01-02 00:00:05+00',
    'the worker''s own lease-keeping heartbeat does not restart heartbeat_timeout'
);
select ok(
    (select activity_heartbeat(task_id, lease_token, '30 seconds') from beat),
    'activity_heartbeat: the activity still holds its task'
);
select results_eq(
    $$select timeout_at, lease_expires_at from tasks where job_id = 'to-2'$$,
    $$values ('2020-01-02 00:00:09+00'::timestamptz, '2020-01-02 00:00:09+00'::timestamptz)$$,
    'the activity''s heartbeat restarts heartbeat_timeout'
);
select ok(
    not activity_heartbeat(task_id, gen_random_uuid(), '30 seconds'),
    'a heartbeat under another token holds nothing'
) from beat;

set local "hotmesh.fake_now" = '2020-01-02 00:00:09+00';
select is_empty(
    $$select * from claim_tasks(array['t35-a'], 'worker-2', 1)$$,
    'no heartbeat for 5 s: the run times out'
);
select results_eq(
    $$
    select status, error ->> 'type', error ->> 'timeout', error ->> 'code', error -> 'attempts'
    from steps where job_id = 'to-2' and seq = 1
    $$,
    $$values ('failed', 'TimeoutFailure', 'heartbeat', '596', '1'::jsonb)$$,
    'on its last attempt the step fails as a timeout (596)'
);
select results_eq(
    $$select kind, state from tasks where job_id = 'to-2'$$,
    $$values ('workflow', 'ready')$$,
    'and its workflow is woken to see it'
);
select ok(
    not activity_heartbeat(task_id, lease_token, '30 seconds'),
    'the timed-out run''s heartbeat holds nothing any more'
) from beat;

-- ------------------------------------------------------------------ schedule_to_close

set local "hotmesh.fake_now" = '2020-01-03 00:00:00+00';
do $$ begin perform pg_temp.with_activity('to-3', '{"maximum_attempts": 10, "initial_interval": 5, "backoff_coefficient": 1, '
    '"start_to_close": 8, "schedule_to_close": 20}'); end $$;
select is(
    (select timeout_at from tasks where job_id = 'to-3'),
    '2020-01-03 00:00:20+00',
    'a queued activity times out at its schedule_to_close'
);
do $$ begin perform claim_tasks(array['t35-a'], 'worker-1', 1); end $$;
set local "hotmesh.fake_now" = '2020-01-03 00:00:08+00';
do $$ begin perform claim_tasks(array['t35-a'], 'worker-1', 1); end $$;
select results_eq(
    $$select state, run_at, timeout_at from tasks where job_id = 'to-3'$$,
    $$
    values (
        'ready', '2020-01-03 00:00:13+00'::timestamptz, '2020-01-03 00:00:20+00'::timestamptz
    )
    $$,
    'attempt 1 ran past start_to_close: retried at 13 s, still bound by schedule_to_close'
);
set local "hotmesh.fake_now" = '2020-01-03 00:00:13+00';
do $$ begin perform claim_tasks(array['t35-a'], 'worker-1', 1); end $$;
select is(
    (select timeout_at from tasks where job_id = 'to-3'),
    '2020-01-03 00:00:20+00',
    'attempt 2''s deadline is the earlier schedule_to_close'
);
set local "hotmesh.fake_now" = '2020-01-03 00:00:20+00';
do $$ begin perform claim_tasks(array['t35-a'], 'worker-1', 1); end $$;
select results_eq(
    $$
    select status, error ->> 'timeout', error ->> 'code', error -> 'attempts'
    from steps where job_id = 'to-3' and seq = 1
    $$,
    $$values ('failed', 'schedule_to_close', '596', '2'::jsonb)$$,
    'schedule_to_close ends every attempt for good (596), attempts left or not'
);

-- A failure whose backoff would end after schedule_to_close is final at once.
set local "hotmesh.fake_now" = '2020-01-04 00:00:00+00';
do $$ begin perform pg_temp.with_activity('to-3b', '{"maximum_attempts": 10, "initial_interval": 30, "schedule_to_close": 20}'); end $$;
create temp table run3 on commit drop as
select * from claim_tasks(array['t35-a'], 'worker-1', 1);
select is(
    (select fail_task(task_id, lease_token, '{"message": "boom", "type": "E"}') from run3)
    -> 'error' ->> 'timeout',
    'schedule_to_close',
    'a retry that would start after schedule_to_close is not made: the run ends a timeout'
);
select is(
    (select error -> 'cause' ->> 'message' from steps where job_id = 'to-3b'),
    'boom',
    'with the failure that caused it'
);

-- ------------------------------------------------------------------ execution_timeout

set local "hotmesh.fake_now" = '2020-01-05 00:00:00+00';
do $$
declare
    v_main record;
begin
    perform start_workflow('w', '[]', 't35-q', 'to-4', null,
                           '{"expire": 3600, "execution_timeout": 30}');
    select task_id, lease_token into v_main from claim_tasks(array['t35-q'], 'wf', 1);
    perform start_child(v_main.task_id, v_main.lease_token, 1, 'c', '[]', 't35-c', 'to-4-c',
                        null, '{}', true);
    perform suspend_task(v_main.task_id, v_main.lease_token);
    -- one that never runs: nobody serves its queue
    perform start_workflow('w', '[]', 't35-nobody', 'to-5', null, '{"execution_timeout": 5}');
end
$$;
select results_eq(
    $$select id, timeout_at from jobs where id in ('to-4', 'to-5') order by id$$,
    $$
    values
    ('to-4', '2020-01-05 00:00:30+00'::timestamptz),
    ('to-5', '2020-01-05 00:00:05+00'::timestamptz)
    $$,
    'a workflow times out execution_timeout after its start'
);
select is(
    next_due(array['t35-unrelated']),
    '2020-01-05 00:00:05+00',
    'next_due wakes any idle worker for the next timeout'
);

set local "hotmesh.fake_now" = '2020-01-05 00:00:05+00';
select is_empty(
    $$select * from claim_tasks(array['t35-unrelated'], 'worker-1', 1)$$,
    'at 5 s a claim fires the pending workflow''s timeout'
);
select results_eq(
    $$
    select status, error ->> 'type', error ->> 'code',
        (select count(*)::integer from tasks where job_id = 'to-5')
    from jobs where id = 'to-5'
    $$,
    $$values ('failed', 'TimeoutFailure', '596', 0)$$,
    'a workflow that never ran fails (pending -> failed, 596), its activation removed'
);
select is(
    (select timeout_at from jobs where id = 'to-5'),
    null,
    'an ended workflow has no deadline left (it leaves jobs_timeout_at)'
);

set local "hotmesh.fake_now" = '2020-01-05 00:00:30+00';
do $$ begin perform claim_tasks(array['t35-unrelated'], 'worker-1', 1); end $$;
select results_eq(
    $$select id, status, error ->> 'code' from jobs where id like 'to-4%' order by id$$,
    $$values ('to-4', 'failed', '596'), ('to-4-c', 'cancelled', '410')$$,
    'a waiting workflow fails at its execution_timeout (596), its child is cancelled'
);
select is_empty(
    $$select * from tasks where job_id like 'to-4%'$$,
    'nothing of either runs afterwards'
);
select is(
    (retry_workflow('to-5') ->> 'status'),
    'pending',
    'a retried workflow runs again'
);
select is(
    (select timeout_at from jobs where id = 'to-5'),
    '2020-01-05 00:00:35+00',
    'with its whole execution_timeout again'
);

-- ------------------------------------------------------------------ a hook's execution_timeout

-- to-h: its main thread starts hook h1 (slow, execution_timeout 10 s) and waits for its
-- signal; h1 schedules an activity, starts a child and asks a person, then suspends.
set local "hotmesh.fake_now" = '2020-01-06 00:00:00+00';
create temp table hook_run (activity_id bigint, activity_token uuid) on commit drop;
do $$
declare
    v_main record;
    v_hook record;
begin
    perform start_workflow('w', '[]', 't35-hm', 'to-h', null, '{"expire": 3600}');
    select task_id, lease_token into v_main from claim_tasks(array['t35-hm'], 'wf', 1);
    perform start_hook(v_main.task_id, v_main.lease_token, 1, 'slow', '[]', 't35-hq', null,
                       'sig-h', '{"execution_timeout": 10}');
    perform wait_signal(v_main.task_id, v_main.lease_token, 2, 'sig-h', null);
    perform suspend_task(v_main.task_id, v_main.lease_token);
    select task_id, lease_token into v_hook from claim_tasks(array['t35-hq'], 'wf', 1);
    perform schedule_activity(v_hook.task_id, v_hook.lease_token, 1, 'act', '[]', 't35-ha',
                              '{}');
    perform start_child(v_hook.task_id, v_hook.lease_token, 2, 'c', '[]', 't35-hc', 'to-h-c',
                        null, '{}', true);
    perform ask_human(v_hook.task_id, v_hook.lease_token, 3, 'sig-p',
                      '{"role": "r", "title": "look"}');
    perform suspend_task(v_hook.task_id, v_hook.lease_token);
    insert into hook_run select task_id, lease_token from claim_tasks(array['t35-ha'], 'wa', 1);
end
$$;
select results_eq(
    $$select thread, status, execution_timeout, timeout_at from threads where job_id = 'to-h'$$,
    $$values ('h1', 'running', interval '10 seconds', '2020-01-06 00:00:10+00'::timestamptz)$$,
    'a hook started with an execution_timeout times out that long after its start'
);
select is(
    next_due(array['t35-unrelated']),
    '2020-01-06 00:00:10+00',
    'next_due wakes an idle worker for the hook''s timeout'
);
set local "hotmesh.fake_now" = '2020-01-06 00:00:09+00';
do $$ begin perform claim_tasks(array['t35-unrelated'], 'worker-1', 1); end $$;
select is(
    (select status from threads where job_id = 'to-h'),
    'running',
    'before it the hook runs on'
);
set local "hotmesh.fake_now" = '2020-01-06 00:00:10+00';
do $$ begin perform claim_tasks(array['t35-unrelated'], 'worker-1', 1); end $$;
select results_eq(
    $$
    select status, error ->> 'type', error ->> 'timeout', (error ->> 'code')::integer,
        completed_at
    from threads where job_id = 'to-h'
    $$,
    $$values ('failed', 'TimeoutFailure', 'execution_timeout', 596,
              '2020-01-06 00:00:10+00'::timestamptz)$$,
    'at 10 s a claim ends the hook thread failed with 596 (running -> failed)'
);
select results_eq(
    $$
    select status, error ->> 'message', (error ->> 'code')::integer
    from steps where job_id = 'to-h' and thread = 'main' and seq = 2
    $$,
    $$values ('failed', 'hook "slow" (thread h1 of workflow "to-h") did not finish within its '
              || 'execution_timeout of 00:00:10', 596)$$,
    'the caller''s wait for the hook gets the TimeoutFailure'
);
select results_eq(
    $$select thread, kind from tasks where job_id = 'to-h' order by thread$$,
    $$values ('main', 'workflow')$$,
    'the hook''s tasks are removed and the caller is woken'
);
select results_eq(
    $$
    select (select status from jobs where id = 'to-h'), (select status from jobs where id = 'to-h-c'),
        (select status from human_tasks where job_id = 'to-h')
    $$,
    $$values ('waiting', 'cancelled', 'cancelled')$$,
    'the workflow runs on; the hook''s child and its human task are cancelled'
);
select throws_ok(
    format($$select complete_task(%s, %L, '"late"')$$, activity_id, activity_token),
    'HM005',
    null,
    'the hook''s activity that finishes later is refused (HM005: its task is gone), not recorded'
) from hook_run;

-- A hook from SQL with a timeout; its workflow ends first: the hook only loses its deadline.
do $$
begin
    perform hook('to-h', 'quick', '[]', 't35-hq', null, '{"execution_timeout": 30}');
    perform cancel_workflow('to-h');
end
$$;
set local "hotmesh.fake_now" = '2020-01-06 00:00:40+00';
do $$ begin perform claim_tasks(array['t35-unrelated'], 'worker-1', 1); end $$;
select results_eq(
    $$select status, timeout_at from threads where job_id = 'to-h' and thread = 'h2'$$,
    $$values ('running', null::timestamptz)$$,
    'a hook of a workflow that ended is not failed by its timeout, only loses its deadline'
);

-- to-r times out (20 s) while its hook (30 s) runs: the hook is left running, and loses its
-- deadline when it passes; a retry gives the workflow and its running hook their whole
-- execution_timeout again.
set local "hotmesh.fake_now" = '2020-01-07 00:00:00+00';
do $$
begin
    perform start_workflow('w', '[]', 't35-r', 'to-r', null,
                           '{"expire": 3600, "execution_timeout": 20}');
    perform hook('to-r', 'hr', '[]', 't35-hq', null, '{"execution_timeout": 30}');
end
$$;
set local "hotmesh.fake_now" = '2020-01-07 00:00:30+00';
do $$ begin perform claim_tasks(array['t35-unrelated'], 'worker-1', 1); end $$;
select results_eq(
    $$
    select j.status, th.status, th.timeout_at
    from jobs as j inner join threads as th on j.id = th.job_id
    where j.id = 'to-r'
    $$,
    $$values ('failed', 'running', null::timestamptz)$$,
    'the workflow timed out; its running hook only lost its deadline'
);
select is((retry_workflow('to-r') ->> 'status'), 'pending', 'the retried workflow runs again');
select results_eq(
    $$
    select (select timeout_at from jobs where id = 'to-r'),
        (select timeout_at from threads where job_id = 'to-r')
    $$,
    $$values ('2020-01-07 00:00:50+00'::timestamptz, '2020-01-07 00:01:00+00'::timestamptz)$$,
    'with their whole execution_timeout again, the workflow and its running hook'
);

-- ------------------------------------------------------------------ bad input

select throws_ok(
    $$select start_workflow('w', '[]', 't35-q', 'bad-1', null, '{"execution_timeout": 0.0005}')$$,
    '22023',
    'execution_timeout must be a number of seconds from 0.001 (1 ms) to the retention '
    || '(7 days), not 0.0005',
    'a timeout under 1 ms is refused'
);
select throws_ok(
    $$
    select start_workflow(
        'w', '[]', 't35-q', 'bad-2', null, '{"expire": 60, "execution_timeout": 61}'
    )
    $$,
    '22023',
    'execution_timeout must be a number of seconds from 0.001 (1 ms) to the retention '
    || '(00:01:00), not 61',
    'a timeout longer than the retention is refused'
);
select throws_ok(
    $$
    select start_workflow(
        'w', '[]', 't35-q', 'bad-3', null, '{"retry_policy": {"start_to_close": 5}}'
    )
    $$,
    '22023',
    null,
    'an activity timeout in a workflow''s retry policy is refused'
);
do $$
begin
    perform start_workflow('w', '[]', 'to-6', 'to-6', null, '{"expire": 3600}');
end
$$;
select throws_ok(
    format(
        $$select schedule_activity(%s, %L, 1, 'act', '[]', 't35-a', '{"start_to_close": 7200}')$$,
        t.task_id, t.lease_token
    ),
    '22023',
    'start_to_close must be a number of seconds from 0.001 (1 ms) to the retention '
    || '(01:00:00), not 7200',
    'an activity timeout longer than its workflow''s retention is refused'
) from claim_tasks(array['to-6'], 'wf', 1) as t;
select is(
    (select count(*)::integer from steps where job_id = 'to-6'),
    0,
    'and records nothing'
);

do $$
begin
    perform start_workflow('w', '[]', 't35-q', 'to-7', null, '{"expire": 60}');
end
$$;
select throws_ok(
    $$select hook('to-7', 'h', '[]', null, null, '{"execution_timeout": 0.0005}')$$,
    '22023',
    'execution_timeout must be a number of seconds from 0.001 (1 ms) to the retention '
    || '(00:01:00), not 0.0005',
    'a hook execution_timeout under 1 ms is refused'
);
select throws_ok(
    $$select hook('to-7', 'h', '[]', null, null, '{"execution_timeout": 61}')$$,
    '22023',
    'execution_timeout must be a number of seconds from 0.001 (1 ms) to the retention '
    || '(00:01:00), not 61',
    'a hook execution_timeout longer than its workflow''s retention is refused'
);
select throws_ok(
    $$select hook('to-7', 'h', '[]', null, null, '{"timeout": 5}')$$,
    '22023',
    'unknown option "timeout" of hook "h" (a hook takes execution_timeout, traceparent)',
    'an unknown hook option is refused'
);
select is(
    (select count(*)::integer from threads where job_id = 'to-7'),
    0,
    'and none of them started a thread'
);

-- The one check of every duration given as JSON seconds (_check_seconds): its bounds, open
-- or closed, an optional upper one, and a required value.
select is(_check_seconds('x', null, 0, 1, 'from 0 to 1'), null, 'no duration: null');
select is(_check_seconds('x', '2.5', 0, null, '> 0', true), 2.5, 'no upper bound: any above');
select throws_ok(
    $$select _check_seconds('x', '0', 0, null, '> 0', true)$$, '22023',
    'x must be a number of seconds > 0, not 0', 'an open lower bound excludes it'
);
select throws_ok(
    $$select _check_seconds('x', '"5"', 0, 10, 'from 0 to 10')$$, '22023',
    'x must be a number of seconds from 0 to 10, not "5"', 'text is not a number of seconds'
);
select throws_ok(
    $$select _check_seconds('x', 'null', 0, 10, 'from 0 to 10', p_required => true)$$, '22023',
    'x must be a number of seconds from 0 to 10, not null', 'a required duration'
);

select * from finish();
rollback;
