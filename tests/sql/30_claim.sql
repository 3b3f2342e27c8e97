-- claim_tasks: highest priority first, then earliest due; at most max_tasks; only due tasks,
-- only on the given queues, never dead ones; what a claim returns and what it changes;
-- next_due.
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(32);

-- A dead task on the queue, with the highest priority and the earliest due time.
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';
do $$
begin
    perform start_workflow('w', '[]', 't30-a', 'c-dead', null, '{"priority": 100}');
    perform bury_task(c.task_id, c.lease_token, '{"message": "parked"}')
    from claim_tasks(array['t30-a'], 'setup', 1, interval '1 second') as c;
end
$$;

-- Ready tasks, started in this order at these times (the engine clock moves back and forth).
do $$
declare
    v record;
begin
    for v in
        select * from (
            values
            ('00:00:03', '[1]', 't30-a', 'c-low-late', null),
            ('00:00:00', '[2]', 't30-a', 'c-low-early', null),
            ('00:00:00', '[]', 't30-b', 'c-other-queue', 99),
            ('00:00:01', '["x", {"y": 1}]', 't30-a', 'c-high-a', 5),
            ('00:00:02', '[]', 't30-a', 'c-high-b', 5),
            ('00:00:02', '[]', 't30-a', 'c-tie-1', -5),
            ('00:00:02', '[]', 't30-a', 'c-tie-2', -5),
            ('00:00:04', '[]', 't30-a', 'c-negative', -1),
            ('00:00:10', '[]', 't30-a', 'c-future', 50)
        ) as t (at, args, queue, id, priority)
    loop
        perform set_config('hotmesh.fake_now', '2020-01-01 ' || v.at || '+00', true);
        perform start_workflow(
            'w', v.args::jsonb, v.queue, v.id, null,
            jsonb_strip_nulls(jsonb_build_object('priority', v.priority))
        );
    end loop;
end
$$;

select is(
    next_due(array['t30-a']),
    '2020-01-01 00:00:00+00'::timestamptz,
    'next_due: the earliest run_at on the queue'
);

-- ------------------------------------------------------------------ ordering and max_tasks

set local "hotmesh.fake_now" = '2020-01-01 00:00:05+00';

create temp table claim1 on commit drop as
select * from claim_tasks(array['t30-a'], 'worker-1', 2, interval '30 seconds');
select results_eq(
    'select job_id from claim1',
    $$values ('c-high-a'), ('c-high-b')$$,
    'max_tasks 2: the two priority-5 tasks (the dead priority-100 and future priority-50 '
    || 'tasks are skipped)'
);
select results_eq(
    $$
    select
        task_id, kind, job_id, thread, seq, name, task_queue, attempt, args, payload,
        workflow_name, job_attempt, steps
    from claim1 where job_id = 'c-high-a'
    $$,
    $$
    select
        t.id, 'workflow', 'c-high-a', 'main', null::integer, 'w', 't30-a', 1,
        '["x", {"y": 1}]'::jsonb, '{"schedule_to_start": 4}'::jsonb, 'w', 1, null::jsonb
    from tasks as t where t.job_id = 'c-high-a'
    $$,
    'a claimed activation: the task, attempt 1, the workflow''s args, no steps yet; its '
    || 'payload: the 4 s it was due (from 00:00:01) before this claim (at 00:00:05)'
);
select results_eq(
    $$
    select
        t.state, t.lease_owner, t.lease_token, t.lease_expires_at, t.run_at, t.attempt, t.rerun
    from tasks as t inner join claim1 as c on t.id = c.task_id
    order by t.id
    $$,
    $$
    select
        'leased', 'worker-1', c.lease_token, '2020-01-01 00:00:35+00'::timestamptz,
        '2020-01-01 00:00:35+00'::timestamptz, 1, false
    from claim1 as c
    order by c.task_id
    $$,
    'claimed tasks are leased to the worker for 30 s under the token returned'
);
select is(
    (select count(distinct lease_token)::integer from claim1 where lease_token is not null),
    2,
    'each claimed task has its own lease token'
);
select results_eq(
    $$select status, updated_at from jobs where id in ('c-high-a', 'c-high-b') order by id$$,
    $$values ('running', '2020-01-01 00:00:05+00'::timestamptz),
             ('running', '2020-01-01 00:00:05+00'::timestamptz)$$,
    'claiming a main activation makes its pending workflow running'
);
select is(
    (select status from jobs where id = 'c-low-early'), 'pending',
    'an unclaimed workflow stays pending'
);

-- One claim a row, in this order.
select
    results_eq(
        $$select job_id from claim_tasks(array['t30-a'], 'worker-1', 1)$$,
        format('values (%L)', t.job_id),
        t.description
    )
from (
    values
    ('c-low-early', 'same priority: the earlier due task first, although it was created later'),
    ('c-low-late', 'then the later one'),
    ('c-negative', 'a negative priority comes after priority 0')
) as t (job_id, description);

-- Ties (same priority, same run_at): each is claimed once, by one claim or the other.
create temp table tie1 on commit drop as
select job_id from claim_tasks(array['t30-a'], 'worker-1', 1);
create temp table tie2 on commit drop as
select job_id from claim_tasks(array['t30-a'], 'worker-2', 1);
select is((select count(*)::integer from tie1), 1, 'a tie: the first claim gets one task');
select is((select count(*)::integer from tie2), 1, 'a tie: the second claim gets one task');
select set_eq(
    'select job_id from tie1 union all select job_id from tie2',
    array['c-tie-1', 'c-tie-2'],
    'a tie: the two claims got the two tasks, each once'
);

select is_empty(
    $$select * from claim_tasks(array['t30-a'], 'worker-1', 10)$$,
    'nothing else is due on t30-a: leased, dead and future tasks are not claimed'
);
select is(
    (select state from tasks where job_id = 'c-dead'), 'dead',
    'the dead task is still dead'
);

-- ------------------------------------------------------------------ queues

select is_empty(
    $$select * from claim_tasks(array['t30-c'], 'worker-1', 10)$$,
    'a queue with no tasks: nothing'
);
select is_empty(
    $$select * from claim_tasks(array[]::text[], 'worker-1', 10)$$,
    'no queues: nothing'
);
select results_eq(
    $$select job_id, task_queue from claim_tasks(array['t30-a', 't30-b'], 'worker-1', 10)$$,
    $$values ('c-other-queue', 't30-b')$$,
    'several queues: tasks of any of them (here only t30-b has one due)'
);

-- ------------------------------------------------------------------ due time

set local "hotmesh.fake_now" = '2020-01-01 00:00:09.999999+00';
select is_empty(
    $$select * from claim_tasks(array['t30-a'], 'worker-1', 10)$$,
    'a task is not claimed a microsecond before its run_at'
);
select is(
    next_due(array['t30-a']),
    '2020-01-01 00:00:10+00'::timestamptz,
    'next_due: the future task (leases run later, the dead task is left out)'
);
select is(
    next_due(array['t30-b']),
    '2020-01-01 00:00:35+00'::timestamptz,
    'next_due includes a leased task: its lease expiry'
);
select is(next_due(array['t30-c']), null, 'next_due of an empty queue is null');
set local "hotmesh.fake_now" = '2020-01-01 00:00:10+00';
select results_eq(
    $$select job_id from claim_tasks(array['t30-a'], 'worker-1', 10)$$,
    $$values ('c-future')$$,
    'a task is claimed once its run_at is reached'
);

-- ------------------------------------------------------------------ threads and jobs

-- A waiting workflow whose main thread is woken becomes running when claimed; a claim of
-- another thread's activation leaves the workflow's status alone.
do $$
begin
    perform pg_temp.start_waiting('t30-d', 'c-threads');
    perform pg_temp.wake_hook('c-threads', 't30-d');
end
$$;
select results_eq(
    $$select job_id, thread, kind from claim_tasks(array['t30-d'], 'worker-1', 10)$$,
    $$values ('c-threads', 'h1', 'workflow')$$,
    'an activation of another thread is claimed ...'
);
select is(
    (select status from jobs where id = 'c-threads'), 'waiting',
    '... and leaves the workflow waiting'
);
select _wake('c-threads', 'main');
select results_eq(
    $$select job_id, thread from claim_tasks(array['t30-d'], 'worker-1', 10)$$,
    $$values ('c-threads', 'main')$$,
    'the main thread''s activation is claimed ...'
);
select is(
    (select status from jobs where id = 'c-threads'), 'running',
    '... and makes the waiting workflow running'
);

-- ------------------------------------------------------------------ bad arguments

select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select * from claim_tasks(array['t30-a'], 'worker-1', 0)$$, '22023', 'max_tasks must be >= 1, not 0', 'max_tasks 0'),
    ($$select * from claim_tasks(array['t30-a'], 'worker-1', null)$$, '22023', 'max_tasks must be >= 1, not null', 'max_tasks null'),
    ($$select * from claim_tasks(array['t30-a'], 'worker-1', 1, interval '0')$$, '22023', 'lease must be a positive interval, not 00:00:00', 'a zero lease'),
    ($$select * from claim_tasks(array['t30-a'], 'worker-1', 1, interval '-5 seconds')$$, '22023', 'lease must be a positive interval, not -00:00:05', 'a negative lease'),
    ($$select * from claim_tasks(array['t30-a'], 'worker-1', 1, null)$$, '22023', 'lease must be a positive interval, not null', 'a null lease')
) as t (call, sqlstate, message, description);

select * from finish();

rollback;
