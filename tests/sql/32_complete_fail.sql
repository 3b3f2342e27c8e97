-- complete_task and fail_task: an activity's outcome recorded on its step and its workflow
-- woken; retries scheduled at now + retry_delay; exhausted (597), fatal (598) and
-- non-retryable failures; a workflow body retried by the workflow's policy, then failed (597);
-- a completed activation completes its workflow and removes every task of it.
begin;
\ir _preamble.psql
\ir _fixtures.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(52);

-- Four workflows, each suspended on one remote activity (seq 1) with the same policy:
-- 3 attempts, delays 2 s then 6 s.
do $$
declare
    v_claim claimed_task;
begin
    perform start_workflow('w', '[]', 't32-wf', id) from unnest(
        array['cf-ok', 'cf-retry', 'cf-fatal', 'cf-nonretryable']
    ) as id;
    for v_claim in select * from claim_tasks(array['t32-wf'], 'setup', 10) loop
        perform schedule_activity(
            v_claim.task_id, v_claim.lease_token, 1, 'charge', jsonb_build_array(v_claim.job_id),
            't32-acts',
            '{"maximum_attempts": 3, "initial_interval": 2, "backoff_coefficient": 3,
             "non_retryable_errors": ["ValueError"]}'
        );
        perform suspend_task(v_claim.task_id, v_claim.lease_token);
    end loop;
end
$$;

select results_eq(
    $$select id, status from jobs where id like 'cf-%' order by id$$,
    $$values ('cf-fatal', 'waiting'), ('cf-nonretryable', 'waiting'), ('cf-ok', 'waiting'),
             ('cf-retry', 'waiting')$$,
    'setup: four workflows waiting on an activity'
);

create temp table acts on commit drop as
select * from claim_tasks(array['t32-acts'], 'worker-1', 10, interval '30 seconds');

select results_eq(
    $$
    select kind, thread, seq, name, task_queue, attempt, args, payload, workflow_name,
           job_attempt, steps
    from acts where job_id = 'cf-ok'
    $$,
    $$
    values (
        'activity', 'main', 1, 'charge', 't32-acts', 1, '["cf-ok"]'::jsonb,
        '{"args": ["cf-ok"], "retry_policy": {"maximum_attempts": 3, "initial_interval": 2,
         "backoff_coefficient": 3, "maximum_interval": 120,
         "non_retryable_errors": ["ValueError"]}}'::jsonb,
        'w', 1, null::jsonb
    )
    $$,
    'a claimed activity: its args, its complete retry policy, no steps'
);
select is(
    (select status from jobs where id = 'cf-ok'), 'waiting',
    'claiming an activity does not move its workflow'
);

-- ------------------------------------------------------------------ complete_task: activity

set local "hotmesh.fake_now" = '2020-01-01 00:00:01+00';
select
    lives_ok(
        format($$select complete_task(%s, %L, '{"charged": 10}')$$, a.task_id, a.lease_token),
        'complete_task of an activity'
    )
from acts as a where a.job_id = 'cf-ok';
select results_eq(
    $$select status, output, error, attempt, completed_at from steps where job_id = 'cf-ok'$$,
    $$values ('completed', '{"charged": 10}'::jsonb, null::jsonb, 1,
              '2020-01-01 00:00:01+00'::timestamptz)$$,
    'its step is completed with the result and the attempt that produced it'
);
select results_eq(
    $$select kind, thread, name, task_queue, state, run_at from tasks where job_id = 'cf-ok'$$,
    $$values ('workflow', 'main', 'w', 't32-wf', 'ready', '2020-01-01 00:00:01+00'::timestamptz)$$,
    'the activity task is gone and the workflow''s activation is ready now'
);

-- ------------------------------------------------------------------ fail_task: retries

create temp table outcome (label text, result jsonb) on commit drop;

insert into outcome
select
    'attempt 1' as label,
    fail_task(a.task_id, a.lease_token, '{"message": "boom", "type": "IOError"}') as result
from acts as a where a.job_id = 'cf-retry';
select is(
    (select result ->> 'status' from outcome where label = 'attempt 1'), 'retrying',
    'a first failure: retrying'
);
select is(
    (select (result ->> 'run_at')::timestamptz from outcome where label = 'attempt 1'),
    '2020-01-01 00:00:03+00'::timestamptz,
    '... at now + retry_delay(policy, 1) = now + 2 s'
);
select results_eq(
    $$
    select state, run_at, attempt, error, lease_owner, lease_token, lease_expires_at
    from tasks where job_id = 'cf-retry'
    $$,
    $$
    values (
        'ready', '2020-01-01 00:00:03+00'::timestamptz, 1,
        '{"message": "boom", "type": "IOError"}'::jsonb, null::text, null::uuid,
        null::timestamptz
    )
    $$,
    'the task is ready again at the retry time, unleased, with the error'
);
select results_eq(
    $$select status, error, attempt from steps where job_id = 'cf-retry'$$,
    $$values ('scheduled', null::jsonb, 1)$$,
    'the step still awaits its outcome'
);
select is(
    (select count(*)::integer from tasks where job_id = 'cf-retry' and kind = 'workflow'), 0,
    'a retry does not wake the workflow'
);

set local "hotmesh.fake_now" = '2020-01-01 00:00:02.999999+00';
select is_empty(
    $$select * from claim_tasks(array['t32-acts'], 'worker-1', 10)$$,
    'the retry is not claimable before its time'
);
set local "hotmesh.fake_now" = '2020-01-01 00:00:03+00';
create temp table retry2 on commit drop as
select * from claim_tasks(array['t32-acts'], 'worker-1', 10);
select results_eq(
    'select job_id, attempt from retry2',
    $$values ('cf-retry', 2)$$,
    'at its time the retry is claimed: attempt 2'
);
insert into outcome
select
    'attempt 2' as label,
    fail_task(r.task_id, r.lease_token, '{"message": "boom again"}') as result
from retry2 as r;
select is(
    (select (result ->> 'run_at')::timestamptz from outcome where label = 'attempt 2'),
    '2020-01-01 00:00:09+00'::timestamptz,
    'a second failure: retrying at now + retry_delay(policy, 2) = now + 6 s'
);

set local "hotmesh.fake_now" = '2020-01-01 00:00:09+00';
create temp table retry3 on commit drop as
select * from claim_tasks(array['t32-acts'], 'worker-1', 10);
select results_eq(
    'select job_id, attempt from retry3',
    $$values ('cf-retry', 3)$$,
    'the last attempt is claimed: attempt 3'
);
insert into outcome
select
    'attempt 3' as label,
    fail_task(r.task_id, r.lease_token, '{"message": "still broken"}') as result
from retry3 as r;
select is(
    (select result from outcome where label = 'attempt 3'),
    '{"status": "failed",
     "error": {"message": "still broken", "code": 597, "attempts": 3}}'::jsonb,
    'the attempts are used up: failed with 597 and the attempt count'
);
select results_eq(
    $$select status, output, error, attempt, completed_at from steps where job_id = 'cf-retry'$$,
    $$
    values (
        'failed', null::jsonb, '{"message": "still broken", "code": 597, "attempts": 3}'::jsonb,
        3, '2020-01-01 00:00:09+00'::timestamptz
    )
    $$,
    'the step is failed with the final error'
);
select results_eq(
    $$select kind, thread, state, run_at from tasks where job_id = 'cf-retry'$$,
    $$values ('workflow', 'main', 'ready', '2020-01-01 00:00:09+00'::timestamptz)$$,
    'the activity task is gone and the workflow is woken, where the call will raise'
);

-- ------------------------------------------------------------------ fail_task: final at once

insert into outcome
select
    'fatal' as label,
    fail_task(a.task_id, a.lease_token, '{"code": 598, "message": "card declined"}') as result
from acts as a where a.job_id = 'cf-fatal';
select is(
    (select result from outcome where label = 'fatal'),
    '{"status": "failed",
      "error": {"code": 598, "message": "card declined", "attempts": 1}}'::jsonb,
    'a fatal error (598) is not retried'
);
select results_eq(
    $$select status, error, attempt from steps where job_id = 'cf-fatal'$$,
    $$values ('failed', '{"code": 598, "message": "card declined", "attempts": 1}'::jsonb, 1)$$,
    'its step is failed after one attempt'
);
select results_eq(
    $$select kind from tasks where job_id = 'cf-fatal'$$,
    $$values ('workflow')$$,
    'its workflow is woken'
);

insert into outcome
select
    'non-retryable' as label,
    fail_task(a.task_id, a.lease_token, '{"type": "ValueError"}') as result
from acts as a where a.job_id = 'cf-nonretryable';
select is(
    (select result from outcome where label = 'non-retryable'),
    '{"status": "failed", "error": {"type": "ValueError", "code": 598, "attempts": 1}}'::jsonb,
    'an error type listed in non_retryable_errors is not retried: failed with 598'
);
select results_eq(
    $$select status, error from steps where job_id = 'cf-nonretryable'$$,
    $$values ('failed', '{"type": "ValueError", "code": 598, "attempts": 1}'::jsonb)$$,
    'its step is failed'
);

-- ------------------------------------------------------------------ fail_task: bad error

do $$
declare
    v_claim claimed_task;
begin
    perform start_workflow('w', '[]', 't32-bad', 'cf-bad-error');
    select * into v_claim from claim_tasks(array['t32-bad'], 'setup', 1);
    perform schedule_activity(v_claim.task_id, v_claim.lease_token, 1, 'a', '[]', 't32-bad-acts');
end
$$;
create temp table bad on commit drop as
select * from claim_tasks(array['t32-bad-acts'], 'worker-1', 1);
select
    throws_ok(
        format($$select fail_task(%s, %L, '"boom"')$$, b.task_id, b.lease_token),
        '22023', 'error must be a JSON object, not string', 'an error that is not an object'
    )
from bad as b;
select results_eq(
    $$select t.state, t.lease_token, t.error
      from tasks as t inner join bad as b on t.id = b.task_id$$,
    $$select 'leased', lease_token, null::jsonb from bad$$,
    '... changes nothing: the task is still leased'
);
select is(
    (select fail_task(b.task_id, b.lease_token, null) ->> 'status' from bad as b),
    'retrying',
    'a null error is an error without details: retried'
);

-- ------------------------------------------------------------------ workflow-level retries

set local "hotmesh.fake_now" = '2020-01-01 01:00:00+00';
do $$
begin
    perform start_workflow(
        'w', '[]', 't32-body', 'cf-body', null,
        '{"expire": 600, "retry_policy": {"maximum_attempts": 2, "initial_interval": 5}}'
    );
end
$$;
create temp table body1 on commit drop as
select * from claim_tasks(array['t32-body'], 'worker-1', 1);
select results_eq(
    'select job_id, job_attempt from body1',
    $$values ('cf-body', 1)$$,
    'the workflow''s first run'
);
insert into outcome
select
    'body 1' as label,
    fail_task(b.task_id, b.lease_token, '{"message": "body failed"}') as result
from body1 as b;
select is(
    (select (result ->> 'run_at')::timestamptz from outcome where label = 'body 1'),
    '2020-01-01 01:00:05+00'::timestamptz,
    'a failed run of the workflow body is retried at now + 5 s (its policy)'
);
select results_eq(
    $$select status, attempt, error, completed_at from jobs where id = 'cf-body'$$,
    $$values ('waiting', 2, '{"message": "body failed"}'::jsonb, null::timestamptz)$$,
    'the workflow waits for its attempt 2, with the error of attempt 1'
);
select results_eq(
    $$select kind, state, run_at, lease_token from tasks where job_id = 'cf-body'$$,
    $$values ('workflow', 'ready', '2020-01-01 01:00:05+00'::timestamptz, null::uuid)$$,
    'its activation is ready at the retry time'
);

set local "hotmesh.fake_now" = '2020-01-01 01:00:05+00';
create temp table body2 on commit drop as
select * from claim_tasks(array['t32-body'], 'worker-1', 1);
select results_eq(
    'select job_id, job_attempt from body2',
    $$values ('cf-body', 2)$$,
    'the second run is claimed as job attempt 2'
);
select is((select status from jobs where id = 'cf-body'), 'running', '... and runs');
-- Work the run left behind: an activity it scheduled, an activation of another thread.
do $$
begin
    perform schedule_activity(b.task_id, b.lease_token, 1, 'a', '[]', 't32-body-acts')
    from body2 as b;
    perform pg_temp.wake_hook('cf-body', 't32-body');
end
$$;
insert into outcome
select
    'body 2' as label,
    fail_task(b.task_id, b.lease_token, '{"message": "body failed again"}') as result
from body2 as b;
select is(
    (select result from outcome where label = 'body 2'),
    '{"status": "failed",
     "error": {"message": "body failed again", "code": 597, "attempts": 2}}'::jsonb,
    'the workflow''s attempts are used up: failed with 597'
);
select results_eq(
    $$select status, attempt, error, result, completed_at, expire_at
      from jobs where id = 'cf-body'$$,
    $$
    values (
        'failed', 2, '{"message": "body failed again", "code": 597, "attempts": 2}'::jsonb,
        null::jsonb, '2020-01-01 01:00:05+00'::timestamptz,
        '2020-01-01 01:10:05+00'::timestamptz
    )
    $$,
    'the workflow is failed with the final error, kept for its retention'
);
select is(
    (select count(*)::integer from tasks where job_id = 'cf-body'), 0,
    'every task of the failed workflow is gone (activity and other threads included)'
);

do $$
begin
    perform start_workflow('w', '[]', 't32-body', 'cf-body-fatal');
end
$$;
select is(
    (
        select fail_task(c.task_id, c.lease_token, '{"code": 598}')
        from claim_tasks(array['t32-body'], 'worker-1', 1) as c
    ),
    '{"status": "failed", "error": {"code": 598, "attempts": 1}}'::jsonb,
    'a fatal error in the workflow body fails the workflow at once'
);
select results_eq(
    $$select status, attempt, error from jobs where id = 'cf-body-fatal'$$,
    $$values ('failed', 1, '{"code": 598, "attempts": 1}'::jsonb)$$,
    '... after one attempt'
);

-- ------------------------------------------------------------------ complete_task: activation

set local "hotmesh.fake_now" = '2020-01-01 02:00:00+00';
do $$
begin
    perform start_workflow('w', '[3]', 't32-done', 'cf-done', null, '{"expire": 3600}');
    perform start_workflow('w', '[]', 't32-done', 'cf-other');
end
$$;
create temp table done1 on commit drop as
select * from claim_tasks(array['t32-done'], 'worker-1', 2);
do $$
begin
    perform schedule_activity(d.task_id, d.lease_token, 1, 'a', '[]', 't32-done-acts')
    from done1 as d where d.job_id = 'cf-done';
    perform pg_temp.wake_hook('cf-done', 't32-done');
end
$$;
select is(
    (select count(*)::integer from tasks where job_id = 'cf-done'), 3,
    'before completing: the activation, an activity and another thread''s activation'
);
create temp table late on commit drop as
select * from claim_tasks(array['t32-done-acts'], 'worker-2', 1);

set local "hotmesh.fake_now" = '2020-01-01 02:00:01+00';
select
    lives_ok(
        format($$select complete_task(%s, %L, '{"total": 3}')$$, d.task_id, d.lease_token),
        'complete_task of the main activation'
    )
from done1 as d where d.job_id = 'cf-done';
select results_eq(
    $$
    select status, result, error, updated_at, completed_at, expire_at
    from jobs where id = 'cf-done'
    $$,
    $$
    values (
        'completed', '{"total": 3}'::jsonb, null::jsonb, '2020-01-01 02:00:01+00'::timestamptz,
        '2020-01-01 02:00:01+00'::timestamptz, '2020-01-01 03:00:01+00'::timestamptz
    )
    $$,
    'the workflow is completed with the result; expire_at = completed_at + retention'
);
select is(
    (select count(*)::integer from tasks where job_id = 'cf-done'), 0,
    'every task of the completed workflow is gone: nothing of it runs afterwards'
);
select results_eq(
    $$select status, state from jobs as j inner join tasks as t on j.id = t.job_id
      where j.id = 'cf-other'$$,
    $$values ('running', 'leased')$$,
    'another workflow is untouched'
);
select
    throws_ok(
        format($$select complete_task(%s, %L, '"late"')$$, l.task_id, l.lease_token),
        'HM005',
        format('task %s not found: it finished, was cancelled or never existed', l.task_id),
        'an activity still running when its workflow completed finds its task gone'
    )
from late as l;

-- The activation of a thread other than main: only its task ends.
do $$
begin
    perform pg_temp.start_waiting('t32-thread', 'cf-thread');
    perform pg_temp.wake_hook('cf-thread', 't32-thread');
    perform _wake('cf-thread', 'main');
end
$$;
select
    lives_ok(
        format($$select complete_task(%s, %L, '"hook done"')$$, c.task_id, c.lease_token),
        'complete_task of another thread''s activation'
    )
from claim_tasks(array['t32-thread'], 'worker-1', 10) as c where c.thread = 'h1';
select results_eq(
    $$select j.status, j.result, t.thread from jobs as j inner join tasks as t on j.id = t.job_id
      where j.id = 'cf-thread'$$,
    $$values ('running', null::jsonb, 'main')$$,
    'ends that thread''s task only; the workflow goes on'
);

-- ------------------------------------------------------------------ complete_tasks (batch)

-- A batch ends the workflows whose main thread returned together; an item with a stale token
-- (even for a task another item holds) or an unknown task is answered HM004 on its own.
do $$
begin
    perform start_workflow('w', '[]', 't32-batch', id) from unnest(array['cb-1', 'cb-2']) as id;
end
$$;
create temp table cb on commit drop as
select * from claim_tasks(array['t32-batch'], 'worker-b', 2);
select is(
    (
        select
            complete_tasks(jsonb_build_array(
                jsonb_build_object('task_id', one.task_id, 'token', one.lease_token, 'result', 1),
                jsonb_build_object('task_id', one.task_id, 'token', gen_random_uuid(), 'result', 9),
                jsonb_build_object('task_id', two.task_id, 'token', two.lease_token, 'result', 2),
                jsonb_build_object('task_id', -1, 'token', gen_random_uuid(), 'result', 9)
            ))
        from cb as one, cb as two
        where one.job_id = 'cb-1' and two.job_id = 'cb-2'
    ) #>> '{}',
    format(
        '[null, {"error": {"message": "lease lost: task %s is no longer held with this token", '
        || '"sqlstate": "HM004"}}, null, {"error": {"message": "lease lost: task -1 is no '
        || 'longer held with this token", "sqlstate": "HM004"}}]',
        (select task_id from cb where job_id = 'cb-1')
    ),
    'results in item order: completed, HM004 for the stale token, completed, HM004'
);
select results_eq(
    $$select id, status, result from jobs where id like 'cb-%' order by id$$,
    $$values ('cb-1', 'completed', '1'::jsonb), ('cb-2', 'completed', '2'::jsonb)$$,
    'both workflows completed with their own results'
);
select is_empty($$select from tasks where job_id like 'cb-%'$$, '... and their tasks are gone');

-- The same activity completed twice in one batch: the first item records its outcome, the
-- second finds the task gone (HM005 for that item only).
do $$
begin
    perform start_workflow('w', '[]', 't32-dup', 'cb-dup');
end
$$;
select schedule_activity(c.task_id, c.lease_token, 1, 'charge', '[]', 't32-dup-acts')
from claim_tasks(array['t32-dup'], 'worker-b', 1) as c;
create temp table dup on commit drop as
select
    jsonb_build_object('task_id', c.task_id, 'token', c.lease_token, 'result', 7) as item,
    c.task_id
from claim_tasks(array['t32-dup-acts'], 'worker-b', 1) as c;
select is(
    (select complete_tasks(jsonb_build_array(d.item, d.item)) -> 1 from dup as d),
    (
        select
            _item_error(
                'HM005',
                format('task %s not found: an earlier item of this batch finished it', d.task_id)
            )
        from dup as d
    ),
    'a task completed twice in one batch: the second item answers HM005'
);
select results_eq(
    $$select status, output from steps where job_id = 'cb-dup'$$,
    $$values ('completed', '7'::jsonb)$$,
    '... and the outcome is the first item''s, recorded once'
);
select is(complete_tasks('[]'), '[]'::jsonb, 'an empty batch completes nothing');
select throws_ok(
    $$select complete_tasks('{}')$$, '22023', 'items must be a JSON array, not object',
    'items that are not an array: 22023'
);

select * from finish();

rollback;
