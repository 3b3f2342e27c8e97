-- Leases and fencing: an expired lease is claimable again under a new token and attempt + 1;
-- the old token is refused everywhere (HM004) and changes nothing; heartbeats extend only the
-- leases still held; a finished task is gone (HM005); release_tasks gives tasks back.
begin;
\ir _preamble.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(40);

do $$
begin
    perform start_workflow('w', '[]', 't31-q', 'l-1');
end
$$;
create temp table first_claim on commit drop as
select * from claim_tasks(array['t31-q'], 'worker-1', 1, interval '30 seconds');

-- ------------------------------------------------------------------ lease expiry

set local "hotmesh.fake_now" = '2020-01-01 00:00:29.999999+00';
select is_empty(
    $$select * from claim_tasks(array['t31-q'], 'worker-2', 1)$$,
    'a leased task is not claimable before its lease expires'
);

set local "hotmesh.fake_now" = '2020-01-01 00:00:30+00';
create temp table second_claim on commit drop as
select * from claim_tasks(array['t31-q'], 'worker-2', 1, interval '30 seconds');
select results_eq(
    $$
    select s.task_id, s.job_id, s.attempt, s.lease_token = f.lease_token
    from second_claim as s cross join first_claim as f
    $$,
    $$select task_id, 'l-1', 2, false from first_claim$$,
    'once the lease expired, the same task is claimed again: attempt 2, a new token'
);
select results_eq(
    $$
    select t.state, t.lease_owner, t.lease_token, t.lease_expires_at
    from tasks as t inner join second_claim as s on t.id = s.task_id
    $$,
    $$
    select 'leased', 'worker-2', s.lease_token, '2020-01-01 00:01:00+00'::timestamptz
    from second_claim as s
    $$,
    'the task is now leased to the second worker under its token'
);

-- ------------------------------------------------------------------ the stale token: HM004

select
    throws_ok(
        format(c.call, f.task_id, f.lease_token),
        'HM004',
        format(
            'lease lost: task %s (workflow w of workflow "l-1") is leased by worker-2 under '
            || 'another token',
            f.task_id
        ),
        c.description
    )
from first_claim as f
cross join (
    values
    ($$select complete_task(%s, %L, '"stale"')$$, 'complete_task with a stale token'),
    ($$select fail_task(%s, %L, '{"message": "stale"}')$$, 'fail_task with a stale token'),
    ($$select suspend_task(%s, %L)$$, 'suspend_task with a stale token'),
    (
        $$select record_step(%s, %L, 1, 'activity', 'a', '[]', '"stale"')$$,
        'record_step with a stale token'
    ),
    (
        $$select schedule_activity(%s, %L, 1, 'a', '[]', 't31-acts')$$,
        'schedule_activity with a stale token'
    ),
    ($$select schedule_sleep(%s, %L, 1, 5)$$, 'schedule_sleep with a stale token'),
    ($$select bury_task(%s, %L, '{"message": "stale"}')$$, 'bury_task with a stale token')
) as c (call, description);

select
    is(
        heartbeat(array[f.task_id], array[f.lease_token], interval '30 seconds'),
        '{}'::bigint[],
        'a heartbeat with a stale token holds nothing'
    )
from first_claim as f;
select
    throws_ok(
        format($$select complete_task(%s, null, '"x"')$$, f.task_id),
        'HM004',
        format(
            'lease lost: task %s (workflow w of workflow "l-1") is leased by worker-2 under '
            || 'another token',
            f.task_id
        ),
        'complete_task without a token'
    )
from first_claim as f;

select results_eq(
    $$
    select t.state, t.lease_owner, t.lease_token, t.lease_expires_at, t.run_at, t.attempt
    from tasks as t inner join second_claim as s on t.id = s.task_id
    $$,
    $$
    select
        'leased', 'worker-2', s.lease_token, '2020-01-01 00:01:00+00'::timestamptz,
        '2020-01-01 00:01:00+00'::timestamptz, 2
    from second_claim as s
    $$,
    'the stale calls changed nothing on the task'
);
select is(
    (select count(*)::integer from tasks where job_id = 'l-1'), 1,
    'the stale calls created no task'
);
select is(
    (select count(*)::integer from steps where job_id = 'l-1'), 0,
    'the stale calls recorded no step'
);
select results_eq(
    $$select status, result, error from jobs where id = 'l-1'$$,
    $$values ('running', null::jsonb, null::jsonb)$$,
    'the stale calls did not move the workflow'
);

-- ------------------------------------------------------------------ heartbeats

set local "hotmesh.fake_now" = '2020-01-01 00:00:50+00';
select
    is(
        heartbeat(
            array[s.task_id, f.task_id, -1], array[s.lease_token, f.lease_token, s.lease_token],
            interval '45 seconds'
        ),
        array[s.task_id],
        'a heartbeat returns only the ids whose lease the caller holds'
    )
from second_claim as s cross join first_claim as f;
select results_eq(
    $$
    select t.lease_expires_at, t.run_at, t.lease_owner
    from tasks as t inner join second_claim as s on t.id = s.task_id
    $$,
    $$
    values (
        '2020-01-01 00:01:35+00'::timestamptz, '2020-01-01 00:01:35+00'::timestamptz, 'worker-2'
    )
    $$,
    'the heartbeat extended the lease from now'
);
set local "hotmesh.fake_now" = '2020-01-01 00:01:00+00';
select is_empty(
    $$select * from claim_tasks(array['t31-q'], 'worker-3', 1)$$,
    'the extended lease outlives the original expiry'
);

-- A lease that lapsed but was not taken over is still the holder's: its heartbeat keeps it.
set local "hotmesh.fake_now" = '2020-01-01 00:01:40+00';
select
    is(
        heartbeat(array[s.task_id], array[s.lease_token], interval '30 seconds'),
        array[s.task_id],
        'a heartbeat after expiry, before anyone claimed the task, still holds it'
    )
from second_claim as s;
select is_empty(
    $$select * from claim_tasks(array['t31-q'], 'worker-3', 1)$$,
    '... so it is not claimable'
);
select
    throws_ok(
        format(
            $$select heartbeat(array[%s]::bigint[], array[%L]::uuid[], interval '0')$$,
            s.task_id, s.lease_token
        ),
        '22023',
        'lease must be a positive interval, not 00:00:00',
        'a heartbeat with a zero lease is refused'
    )
from second_claim as s;
select is(
    heartbeat('{}', '{}', interval '30 seconds'), '{}'::bigint[],
    'a heartbeat for no tasks holds nothing'
);

-- ------------------------------------------------------------------ finished tasks: HM005

select
    lives_ok(
        format($$select complete_task(%s, %L, '"done"')$$, s.task_id, s.lease_token),
        'the holder completes the task'
    )
from second_claim as s;
select
    throws_ok(
        format($$select complete_task(%s, %L, '"again"')$$, s.task_id, s.lease_token),
        'HM005',
        format('task %s not found: it finished, was cancelled or never existed', s.task_id),
        'a task completed twice: HM005'
    )
from second_claim as s;
select
    throws_ok(
        format($$select fail_task(%s, %L, '{}')$$, s.task_id, s.lease_token),
        'HM005',
        format('task %s not found: it finished, was cancelled or never existed', s.task_id),
        'a completed task cannot fail afterwards'
    )
from second_claim as s;
select throws_ok(
    $$select complete_task(-1, gen_random_uuid(), '"x"')$$,
    'HM005',
    'task -1 not found: it finished, was cancelled or never existed',
    'a task that never existed: HM005'
);
select results_eq(
    $$select status, result from jobs where id = 'l-1'$$,
    $$values ('completed', '"done"'::jsonb)$$,
    'the first completion stands'
);
select
    is(
        heartbeat(array[s.task_id], array[s.lease_token], interval '30 seconds'),
        '{}'::bigint[],
        'a heartbeat for a finished task holds nothing'
    )
from second_claim as s;

-- ------------------------------------------------------------------ release_tasks

set local "hotmesh.fake_now" = '2020-01-01 00:10:00+00';
do $$
begin
    perform start_workflow('w', '[]', 't31-r', 'l-r1');
    perform start_workflow('w', '[]', 't31-r', 'l-r2');
    perform start_workflow('w', '[]', 't31-r', 'l-r3');
end
$$;
create temp table held on commit drop as
select * from claim_tasks(array['t31-r'], 'worker-1', 3, interval '30 seconds');

set local "hotmesh.fake_now" = '2020-01-01 00:10:05+00';
select is(
    (
        select release_tasks(array_agg(task_id), array_agg(lease_token))
        from held where job_id in ('l-r1', 'l-r2')
    ),
    2,
    'release_tasks returns how many tasks it released'
);
select results_eq(
    $$
    select t.state, t.run_at, t.attempt, t.lease_owner, t.lease_token, t.lease_expires_at
    from tasks as t where t.job_id in ('l-r1', 'l-r2') order by t.job_id
    $$,
    $$
    values
    (
        'ready', '2020-01-01 00:10:05+00'::timestamptz, 0, null::text, null::uuid,
        null::timestamptz
    ),
    (
        'ready', '2020-01-01 00:10:05+00'::timestamptz, 0, null::text, null::uuid,
        null::timestamptz
    )
    $$,
    'released tasks are ready at once, the interrupted attempt not counted'
);
select
    is(
        release_tasks(array[h.task_id], array[gen_random_uuid()]),
        0,
        'release_tasks with a stale token releases nothing'
    )
from held as h where h.job_id = 'l-r3';
select
    is(
        (select t.lease_token from tasks as t where t.job_id = 'l-r3'),
        h.lease_token,
        '... and the task stays leased'
    )
from held as h where h.job_id = 'l-r3';
select
    is(
        release_tasks(array[h.task_id], array[h.lease_token]),
        0,
        'releasing a task already released does nothing'
    )
from held as h where h.job_id = 'l-r1';
select
    throws_ok(
        format($$select complete_task(%s, %L, '"x"')$$, h.task_id, h.lease_token),
        'HM004',
        format('lease lost: task %s (workflow w of workflow "l-r1") is ready', h.task_id),
        'the released token is refused (the task is ready)'
    )
from held as h where h.job_id = 'l-r1';
create temp table reclaimed on commit drop as
select * from claim_tasks(array['t31-r'], 'worker-2', 3, interval '30 seconds');
select results_eq(
    $$select job_id, attempt from reclaimed order by job_id$$,
    $$values ('l-r1', 1), ('l-r2', 1)$$,
    'released tasks are claimed again at once, as attempt 1'
);
select is_empty(
    $$select r.job_id from reclaimed as r inner join held as h on r.lease_token = h.lease_token$$,
    '... under new tokens'
);

-- A dead task refuses every token.
select
    lives_ok(
        format($$select bury_task(%s, %L, '{"message": "parked"}')$$, r.task_id, r.lease_token),
        'bury_task with the held token'
    )
from reclaimed as r where r.job_id = 'l-r2';
select results_eq(
    $$
    select t.state, t.error, t.lease_owner, t.lease_token, j.status, j.error
    from tasks as t inner join jobs as j on t.job_id = j.id
    where t.job_id = 'l-r2'
    $$,
    $$
    values (
        'dead', '{"message": "parked"}'::jsonb, null::text, null::uuid, 'running',
        '{"message": "parked"}'::jsonb
    )
    $$,
    'a buried task is dead and unleased; its workflow keeps the error and its status'
);
select
    throws_ok(
        format($$select complete_task(%s, %L, '"x"')$$, r.task_id, r.lease_token),
        'HM004',
        format('lease lost: task %s (workflow w of workflow "l-r2") is dead', r.task_id),
        'a dead task: the old token is refused (the task is dead)'
    )
from reclaimed as r where r.job_id = 'l-r2';

select * from finish();

rollback;
