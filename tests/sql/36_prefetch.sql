-- Prefetch (claim_tasks' p_prefetch): tasks claimed ahead of a worker's free slots are leased
-- but not started, on the short prefetch lease; start_tasks starts them (the normal lease and
-- the run's deadline); a claim that takes one over after its short lease counts no attempt;
-- release_tasks gives one back with its attempt count unchanged; a main activation claimed ahead
-- moves its workflow when it starts or ends.
begin;
\ir _preamble.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(28);

do $$
begin
    perform start_workflow('w', '[]', 't36-q', id)
    from unnest(array['p-1', 'p-2', 'p-3', 'p-4']) as id;
end
$$;
create temp table claimed on commit drop as
select
    row_number() over () as pos,
    c.*
from claim_tasks(array['t36-q'], 'worker-1', 1, interval '30 seconds', null, 2) as c;

select results_eq(
    $$select pos::integer, job_id, attempt from claimed order by pos$$,
    $$values (1, 'p-1', 1), (2, 'p-2', 1), (3, 'p-3', 1)$$,
    'one task started and two prefetched, in claim order, started first'
);
select results_eq(
    $$
    select t.job_id, t.state, t.started_at, t.lease_expires_at
    from tasks as t where t.job_id in ('p-1', 'p-2', 'p-3') order by t.job_id
    $$,
    $$
    values
    ('p-1', 'leased', '2020-01-01 00:00:00+00'::timestamptz,
     '2020-01-01 00:00:30+00'::timestamptz),
    ('p-2', 'leased', null, '2020-01-01 00:00:05+00'),
    ('p-3', 'leased', null, '2020-01-01 00:00:05+00')
    $$,
    'the prefetched are leased, not started, for the 5-second prefetch lease'
);

-- ------------------------------------------------------------------ start_tasks

set local "hotmesh.fake_now" = '2020-01-01 00:00:01+00';
select is(
    (
        select array_agg(s.id order by s.id)
        from claimed as c
        cross join
            lateral unnest(
                start_tasks(array[c.task_id], array[c.lease_token], interval '30 seconds')
            ) as s (id)
        where c.job_id in ('p-1', 'p-2')
    ),
    (select array_agg(task_id order by task_id) from claimed where job_id in ('p-1', 'p-2')),
    'start_tasks answers the tasks held: one started now, one started before'
);
select results_eq(
    $$
    select job_id, started_at, lease_expires_at from tasks
    where job_id in ('p-1', 'p-2') order by job_id
    $$,
    $$
    values
    ('p-1', '2020-01-01 00:00:00+00'::timestamptz, '2020-01-01 00:00:30+00'::timestamptz),
    ('p-2', '2020-01-01 00:00:01+00', '2020-01-01 00:00:31+00')
    $$,
    'the prefetched one started now, on the normal lease; the started one is unchanged'
);
select is(
    (
        select start_tasks(array[task_id], array[gen_random_uuid()], interval '30 seconds')
        from claimed where job_id = 'p-3'
    ),
    '{}'::bigint[],
    'a stale token starts nothing'
);
select is(
    (select started_at from tasks where job_id = 'p-3'), null,
    '... and the task stays not started'
);
select throws_ok(
    $$select start_tasks(array[1::bigint], array[gen_random_uuid()], interval '0')$$,
    '22023', 'lease must be a positive interval, not 00:00:00',
    'start_tasks checks the lease'
);

-- ------------------------------------------------------------------ the short lease

set local "hotmesh.fake_now" = '2020-01-01 00:00:04.999999+00';
select is_empty(
    $$select * from claim_tasks(array['t36-q'], 'worker-2', 0, interval '30 seconds', null, 9)
      where job_id <> 'p-4'$$,
    'no other worker takes a prefetched task before its short lease ends'
);
set local "hotmesh.fake_now" = '2020-01-01 00:00:05+00';
select results_eq(
    $$select job_id, attempt from claim_tasks(array['t36-q'], 'worker-3', 5)$$,
    $$values ('p-3', 1)$$,
    'once it ended another worker takes it, attempt 1 again: the run that never was is no attempt'
);
select results_eq(
    $$select lease_owner, started_at from tasks where job_id = 'p-3'$$,
    $$values ('worker-3', '2020-01-01 00:00:05+00'::timestamptz)$$,
    '... and runs it, started'
);

-- ------------------------------------------------------------------ release

-- p-4 was prefetched by worker-2 above (a claim that starts none).
select results_eq(
    $$select lease_owner, started_at, attempt from tasks where job_id = 'p-4'$$,
    $$values ('worker-2', null::timestamptz, 1)$$,
    'a claim of none started and 9 ahead prefetched the one left'
);
select is(
    (
        select release_tasks(array[t.id], array[t.lease_token])
        from tasks as t where t.job_id = 'p-4'
    ),
    1,
    'release_tasks gives a prefetched task back'
);
select results_eq(
    $$select state, attempt, run_at, lease_owner from tasks where job_id = 'p-4'$$,
    $$values ('ready', 0, '2020-01-01 00:00:05+00'::timestamptz, null::text)$$,
    '... ready at once, its attempt count as before it was claimed'
);

-- ------------------------------------------------------------------ the workflow of one

-- A main activation claimed ahead leaves its workflow where it was until it starts
-- (start_tasks) or ends: one that completes first goes pending -> completed in one write, one
-- that suspends first pending -> waiting. Each records the build of the claim.
do $$
begin
    perform start_workflow('w', '[]', 't36-b', id)
    from unnest(array['b-1', 'b-2', 'b-3', 'b-4']) as id;
end
$$;
create temp table ahead on commit drop as
select c.*
from claim_tasks(array['t36-b'], 'worker-b', 1, interval '30 seconds', 'build-b', 3) as c;
select results_eq(
    $$
    select j.id, j.status, j.build_id, t.build_id
    from jobs as j inner join tasks as t on j.id = t.job_id
    where j.id like 'b-%' order by j.id
    $$,
    $$
    values
    ('b-1', 'running', 'build-b', 'build-b'), ('b-2', 'pending', null, 'build-b'),
    ('b-3', 'pending', null, 'build-b'), ('b-4', 'pending', null, 'build-b')
    $$,
    'the one started runs; the workflows of those claimed ahead stay pending; each lease keeps the build'
);
select is(
    (
        select start_tasks(array[task_id], array[lease_token], interval '30 seconds')
        from ahead where job_id = 'b-2'
    ),
    (select array_agg(task_id) from ahead where job_id = 'b-2'),
    'start_tasks starts one claimed ahead ...'
);
select results_eq(
    $$select status, build_id from jobs where id = 'b-2'$$,
    $$values ('running', 'build-b')$$,
    '... and its workflow runs, with the build'
);
-- Row writes of this transaction to jobs, and on a distributed schema (docs/citus.md) to its
-- shard jobs_<id>, which holds the rows.
create function pg_temp.job_writes() returns numeric
language sql
as $$
    select sum(n_tup_upd) from pg_stat_xact_user_tables
    where schemaname = current_schema() and relname ~ '^jobs(_[0-9]+)?$'
$$;
create temp table writes on commit drop as
select pg_temp.job_writes() as n_tup_upd;
select is(
    (
        select
            complete_tasks(jsonb_build_array(jsonb_build_object(
                'task_id', task_id, 'token', lease_token, 'result', 7
            )))
        from ahead where job_id = 'b-3'
    ),
    '[null]'::jsonb,
    'one claimed ahead completes before it started ...'
);
select results_eq(
    $$
    select j.status, j.result, j.build_id, pg_temp.job_writes() - w.n_tup_upd
    from jobs as j, writes as w
    where j.id = 'b-3'
    $$,
    $$values ('completed', '7'::jsonb, 'build-b', 1::numeric)$$,
    '... its workflow pending -> completed in one write, with the build'
);
update writes set n_tup_upd = pg_temp.job_writes();
select is(
    (select suspend_task(task_id, lease_token) from ahead where job_id = 'b-4'),
    null,
    'one claimed ahead suspends before it started ...'
);
select results_eq(
    $$
    select j.status, j.build_id, pg_temp.job_writes() - w.n_tup_upd
    from jobs as j, writes as w
    where j.id = 'b-4'
    $$,
    $$values ('waiting', 'build-b', 1::numeric)$$,
    '... its workflow pending -> waiting in one write, with the build'
);

-- suspend_tasks, the batch as one statement per table: workflows claimed ahead wait in one
-- write each, from pending or from waiting (an earlier activation's), one started waits
-- from running, one with a timer goes its way (requeued for it); each with the build of its
-- claim.
do $$
begin
    perform start_workflow('w', '[]', 't36-s', id)
    from unnest(array['s-1', 's-2', 's-3', 's-4']) as id;
end
$$;
create temp table parked on commit drop as
select c.*
from claim_tasks(array['t36-s'], 'worker-s', 1, interval '30 seconds', 'build-s', 3) as c;
update jobs set status = 'waiting' where id = 's-3';
select schedule_sleep(task_id, lease_token, 1, 60) from parked where job_id = 's-4';
update writes set n_tup_upd = pg_temp.job_writes();
select is(
    suspend_tasks((
        select
            jsonb_agg(jsonb_build_object(
                'task_id', task_id, 'token', lease_token,
                'schedules', case when job_id = 's-2' then jsonb_build_array(jsonb_build_object(
                    'seq', 1, 'name', 'a', 'args', '[]'::jsonb, 'task_queue', 't36-s-acts'
                )) end
            ) order by job_id)
        from parked
    )) #>> '{3,next_run}',
    to_jsonb(timestamptz '2020-01-01 00:01:05+00') #>> '{}',
    'suspend_tasks: four activations, the one with a timer runs again at it ...'
);
select results_eq(
    $$
    select j.id, j.status, j.build_id, t.kind, t.state
    from jobs as j left join tasks as t on j.id = t.job_id
    where j.id like 's-%' order by j.id
    $$,
    $$
    values
    ('s-1', 'waiting', 'build-s', null, null), ('s-2', 'waiting', 'build-s', 'activity', 'ready'),
    ('s-3', 'waiting', 'build-s', null, null), ('s-4', 'waiting', 'build-s', 'workflow', 'ready')
    $$,
    '... all four wait, with the build; the others'' activations are gone, s-2''s call queued'
);
select is(
    (select pg_temp.job_writes() - w.n_tup_upd from writes as w),
    4::numeric,
    '... one write per workflow'
);
do $$
begin
    perform start_workflow('w', '[]', 't36-s', 's-5');
end
$$;
create temp table ended on commit drop as
select c.* from claim_tasks(array['t36-s'], 'worker-s', 0, interval '30 seconds', null, 1) as c;
update jobs set status = 'completed' where id = 's-5';
select
    throws_ok(
        format(
            $$select suspend_tasks(jsonb_build_array(jsonb_build_object('task_id', %s, 'token', %L)))$$,
            e.task_id, e.lease_token
        ),
        'HM003', 'workflow "s-5" is completed; it cannot become waiting',
        'a workflow that ended meanwhile cannot wait: the batch is refused'
    )
from ended as e;

-- ------------------------------------------------------------------ bad input

select throws_ok(
    $$select * from claim_tasks(array['t36-q'], 'w', 1, interval '30 seconds', null, -1)$$,
    '22023', 'prefetch must be >= 0, not -1',
    'a negative prefetch is refused'
);
select throws_ok(
    $$select * from claim_tasks(array['t36-q'], 'w', 0)$$,
    '22023', 'max_tasks must be >= 1, not 0',
    'a claim without prefetch must start at least one'
);
select throws_ok(
    $$select * from claim_tasks(array['t36-q'], 'w', -1, interval '30 seconds', null, 3)$$,
    '22023', 'max_tasks must be >= 0, not -1',
    'a claim with prefetch may start none, not fewer'
);
select throws_ok(
    $$select * from claim_tasks(array['t36-q'], 'w', 0, interval '30 seconds', null, 3,
                                 interval '0')$$,
    '22023', 'lease must be a positive interval, not 00:00:00',
    'the prefetch lease is checked'
);

select * from finish(true);
rollback;
