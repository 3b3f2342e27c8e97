-- The job state machine (_transition): every legal transition and what it sets, every illegal
-- one refused with HM003 naming the workflow and both states, HM002 for an unknown workflow.
--   pending -> running <-> waiting -> completed | failed | cancelled; pending -> failed;
--   pending | waiting -> completed; pending | waiting -> waiting
begin;
\ir _preamble.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(58);

-- The specification, written out: 6 states x 6 targets, 14 of them legal.
create temp table spec on commit drop as
select
    f.status as from_status,
    t.status as to_status,
    't42-' || f.status || '-' || t.status as job_id,
    (f.status, t.status) in (
        ('pending', 'running'),
        ('waiting', 'running'),
        ('running', 'waiting'),
        ('running', 'completed'),
        -- an activation claimed ahead that ends before it starts (complete_tasks)
        ('pending', 'completed'),
        ('waiting', 'completed'),
        -- one claimed ahead that suspends before it starts (suspend_tasks)
        ('pending', 'waiting'),
        ('waiting', 'waiting'),
        ('running', 'failed'),
        ('waiting', 'failed'),
        -- execution_timeout passed before it ran (_time_out_jobs)
        ('pending', 'failed'),
        ('pending', 'cancelled'),
        ('running', 'cancelled'),
        ('waiting', 'cancelled')
    ) as legal,
    t.status in ('completed', 'failed', 'cancelled') as terminal
from
    unnest(array['pending', 'running', 'waiting', 'completed', 'failed', 'cancelled'])
        as f (status)
cross join
    unnest(array['pending', 'running', 'waiting', 'completed', 'failed', 'cancelled'])
        as t (status);

select is(
    (select count(*)::integer from spec where legal), 14, 'the spec lists 14 legal transitions'
);

-- One job per (from, to), put in its from-state directly.
do $$
begin
    perform start_workflow('t42', '[]', 't42-q', s.job_id, null, '{"expire": 60}') from spec as s;
end
$$;
update jobs as j
set status = s.from_status
from spec as s
where j.id = s.job_id;

set local "hotmesh.fake_now" = '2020-01-01 01:00:00+00';

-- Legal: each succeeds ...
select
    lives_ok(
        format(
            $$select _transition(%L, %L, '{"r": 1}', %L)$$,
            s.job_id, s.to_status, case when s.to_status = 'failed' then '{"e": 1}' end
        ),
        format('%s -> %s is legal', s.from_status, s.to_status)
    )
from spec as s
where s.legal
order by s.from_status, s.to_status;

-- ... and sets the status, the times, and the result only when completed, the error when given.
select
    is(
        (
            select
                jsonb_build_object(
                    'status', j.status, 'updated_at', j.updated_at, 'completed_at', j.completed_at,
                    'expire_at', j.expire_at, 'result', j.result, 'error', j.error
                )
            from jobs as j
            where j.id = s.job_id
        ),
        jsonb_build_object(
            'status', s.to_status,
            'updated_at', '2020-01-01 01:00:00+00'::timestamptz,
            'completed_at', case when s.terminal then '2020-01-01 01:00:00+00'::timestamptz end,
            'expire_at', case when s.terminal then '2020-01-01 01:01:00+00'::timestamptz end,
            'result', case when s.to_status = 'completed' then '{"r": 1}'::jsonb end,
            'error', case when s.to_status = 'failed' then '{"e": 1}'::jsonb end
        ),
        format(
            '%s -> %s: status, updated_at, completed_at, expire_at, result, error', s.from_status,
            s.to_status
        )
    )
from spec as s
where s.legal
order by s.from_status, s.to_status;

-- Illegal: HM003 naming the workflow, its state and the refused target ...
select
    throws_ok(
        format($$select _transition(%L, %L, '{"r": 1}')$$, s.job_id, s.to_status),
        'HM003',
        format('workflow "%s" is %s; it cannot become %s', s.job_id, s.from_status, s.to_status),
        format('%s -> %s is illegal (HM003)', s.from_status, s.to_status)
    )
from spec as s
where not s.legal
order by s.from_status, s.to_status;

-- ... and changes nothing.
select is_empty(
    $$
    select j.id
    from jobs as j
    inner join spec as s on j.id = s.job_id
    where
        not s.legal
        and (
            j.status <> s.from_status or j.updated_at <> '2020-01-01 00:00:00+00'
            or j.result is not null or j.completed_at is not null or j.expire_at is not null
        )
    $$,
    'an illegal transition changes nothing'
);

-- A status that does not exist is a bad argument, not an illegal transition.
select throws_ok(
    $$select _transition('t42-pending-running', 'done')$$,
    '22023',
    'unknown workflow status "done"',
    'an unknown target status raises 22023'
);

select throws_ok(
    $$select _transition('t42-no-such-workflow', 'running')$$,
    'HM002',
    'workflow "t42-no-such-workflow" not found',
    'an unknown workflow raises HM002'
);

-- A transition without an error keeps the one recorded earlier (a retried run's last error).
do $$
begin
    perform start_workflow('t42', '[]', 't42-q', 't42-keeps-error');
    update jobs set status = 'waiting', error = '{"e": "earlier"}' where id = 't42-keeps-error';
    perform _transition('t42-keeps-error', 'running');
end
$$;
select is(
    (select error from jobs where id = 't42-keeps-error'),
    '{"e": "earlier"}'::jsonb,
    'running without an error keeps the earlier error'
);

-- The row returned is the row as updated.
select is(
    (select j.status from _transition('t42-keeps-error', 'waiting') as j),
    'waiting',
    '_transition returns the updated row'
);

-- A move writes no index entry (a HOT update): no index of jobs names its status, and a
-- workflow without a deadline keeps timeout_at null (migration 0022).
select is_empty(
    $$
    select i.indexrelid::regclass from pg_index as i
    where i.indrelid = 'jobs'::regclass and pg_get_indexdef(i.indexrelid) ~ '\mstatus\M'
    $$,
    'no index of jobs names status'
);
do $$
begin
    perform start_workflow('t42', '[]', 't42-q', 't42-hot');
    -- jobs, and on a distributed schema (docs/citus.md) its shard jobs_<id>, which holds the
    -- rows.
    create temp table hot0 on commit drop as
    select sum(n_tup_upd) as n_tup_upd, sum(n_tup_hot_upd) as n_tup_hot_upd
    from pg_stat_xact_user_tables
    where schemaname = current_schema() and relname ~ '^jobs(_[0-9]+)?$';
    perform _transition('t42-hot', 'running');
    perform _transition('t42-hot', 'waiting');
    perform _transition('t42-hot', 'running');
end
$$;
select results_eq(
    $$
    select sum(x.n_tup_upd) - h.n_tup_upd, sum(x.n_tup_hot_upd) - h.n_tup_hot_upd
    from pg_stat_xact_user_tables as x, hot0 as h
    where x.schemaname = current_schema() and x.relname ~ '^jobs(_[0-9]+)?$'
    group by h.n_tup_upd, h.n_tup_hot_upd
    $$,
    $$values (3::numeric, 3::numeric)$$,
    'pending -> running -> waiting -> running: three HOT updates'
);

select * from finish();

rollback;
