-- The six state machines (job, task, step, schedule, human task, hook thread) walked from their one table of legal moves
-- (_legal_transitions): every legal move is made by the function the table names as its owner,
-- every illegal one is refused with HM003 naming the row and both states and changes nothing.
-- Also: an activity whose lease expired on its last attempt is failed by the claim, never
-- handed out again.
begin;
\ir _preamble.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(170);

-- ------------------------------------------------------------------ the table

select results_eq(
    $$
    select machine, count(*)::integer from _legal_transitions()
    group by machine order by machine
    $$,
    $$values ('human_task', 9), ('job', 16), ('schedule', 2), ('step', 8), ('task', 5), ('thread', 3)$$,
    'the table lists 9 human task, 16 job, 2 schedule, 8 step, 5 task and 3 thread moves'
);

select is_empty(
    $$
    select machine, from_state, to_state from _legal_transitions()
    group by machine, from_state, to_state having count(*) > 1
    $$,
    'each move has one owner'
);

select is_empty(
    $$
    select distinct owner from _legal_transitions()
    where to_regproc(format('%I.%s', current_schema(), owner)) is null
    $$,
    'every owner is a function of the schema'
);

-- Every (from, to) pair of each machine's states: legal exactly when the table lists it.
create temp table pairs on commit drop as
select
    m.machine,
    f.state as from_state,
    t.state as to_state,
    exists(
        select from _legal_transitions() as l
        where l.machine = m.machine and l.from_state = f.state and l.to_state = t.state
    ) as legal
from (
    values
    ('job', array['pending', 'running', 'waiting', 'completed', 'failed', 'cancelled']),
    ('task', array['ready', 'leased', 'dead']),
    ('step', array['scheduled', 'retrying', 'completed', 'failed']),
    ('schedule', array['active', 'paused']),
    ('human_task', array['open', 'claimed', 'resolved', 'expired', 'cancelled']),
    ('thread', array['running', 'completed', 'failed'])
) as m (machine, states)
cross join lateral unnest(m.states) as f (state)
cross join lateral unnest(m.states) as t (state);

select is(
    (select count(*)::integer from pairs), 99,
    '36 job, 9 task, 16 step, 4 schedule, 25 human task and 9 thread pairs'
);

select
    lives_ok(
        format(
            'select _check_transition(%L, %L, %L, %L)', p.machine, 'row x', p.from_state,
            p.to_state
        ),
        format('%s: %s -> %s is legal', p.machine, p.from_state, p.to_state)
    )
from pairs as p
where p.legal
order by p.machine, p.from_state, p.to_state;

select
    throws_ok(
        format(
            'select _check_transition(%L, %L, %L, %L)', p.machine, 'row x', p.from_state,
            p.to_state
        ),
        'HM003',
        format('row x is %s; it cannot become %s', p.from_state, p.to_state),
        format('%s: %s -> %s is illegal (HM003)', p.machine, p.from_state, p.to_state)
    )
from pairs as p
where not p.legal
order by p.machine, p.from_state, p.to_state;

select throws_ok(
    $$select _check_transition('step', 'row x', 'scheduled', 'done')$$,
    '22023',
    'unknown step status "done"',
    'an unknown state is a bad argument, not an illegal move'
);

-- ------------------------------------------------------------------ steps: _move_step

-- One step per pair, put in its from-state directly.
do $$
begin
    perform start_workflow('t43', '[]', 't43-q', 't43-steps', null, '{"expire": 60}');
end
$$;
create temp table step_pairs on commit drop as
select
    p.from_state,
    p.to_state,
    p.legal,
    (row_number() over (order by p.from_state, p.to_state))::integer as seq
from pairs as p
where p.machine = 'step';
insert into steps (job_id, thread, seq, kind, name, status, attempt, created_at)
select
    't43-steps' as job_id,
    'main' as thread,
    s.seq,
    'activity' as kind,
    'a' as name,
    s.from_state as status,
    1 as attempt,
    '2020-01-01 00:00:00+00'::timestamptz as created_at
from step_pairs as s;

set local "hotmesh.fake_now" = '2020-01-01 00:00:05+00';

select
    is(
        (
            select
                jsonb_build_object(
                    'status', m.status, 'output', m.output, 'error', m.error,
                    'attempt', m.attempt, 'completed_at', m.completed_at
                )
            from
                _move_step(
                    't43-steps', 'main', s.seq, s.to_state, '"out"', '{"e": 1}', 2
                ) as m
        ),
        jsonb_build_object(
            'status', s.to_state, 'output', 'out', 'error', '{"e": 1}'::jsonb, 'attempt', 2,
            'completed_at',
            case
                when s.to_state in ('completed', 'failed')
                    then '2020-01-01 00:00:05+00'::timestamptz
            end
        ),
        format('step: %s -> %s moves, with its outcome', s.from_state, s.to_state)
    )
from step_pairs as s
where s.legal
order by s.seq;

select
    throws_ok(
        format($$select _move_step('t43-steps', 'main', %s, %L, null, null)$$, s.seq, s.to_state),
        'HM003',
        format(
            'step %s of workflow "t43-steps" thread main is %s; it cannot become %s', s.seq,
            s.from_state, s.to_state
        ),
        format('step: %s -> %s is refused (HM003)', s.from_state, s.to_state)
    )
from step_pairs as s
where not s.legal
order by s.seq;

select is_empty(
    $$
    select s.seq
    from steps as st
    inner join step_pairs as s on st.job_id = 't43-steps' and st.seq = s.seq
    where not s.legal and (st.status <> s.from_state or st.completed_at is not null)
    $$,
    'a refused step move changes nothing'
);

select is(
    (
        select m.job_id
        from _move_step('t43-steps', 'main', 1, 'scheduled', null, null, null, null, false) as m
    ),
    null,
    'with p_refuse false an illegal move leaves the step and returns nothing'
);

-- ------------------------------------------------------------------ jobs

-- The moves _transitions owns (each also walked, with what it sets, in 42_job_transitions).
create temp table job_pairs on commit drop as
select
    p.from_state,
    p.to_state,
    't43-job-' || p.from_state || '-' || p.to_state as job_id
from pairs as p
inner join _legal_transitions() as l
    on p.machine = l.machine and p.from_state = l.from_state and p.to_state = l.to_state
where p.machine = 'job' and l.owner = '_transitions';
do $$
begin
    perform start_workflow('t43', '[]', 't43-jq', j.job_id) from job_pairs as j;
end
$$;
update jobs as j
set status = p.from_state
from job_pairs as p
where j.id = p.job_id;

select set_eq(
    $$
    select m.id from job_pairs as p
    cross join lateral _transitions(array[p.job_id], p.to_state) as m
    $$,
    'select job_id from job_pairs',
    'job: every move owned by _transitions moves'
);

-- failed -> pending belongs to the retry, which also resets the run; _transition refuses it.
do $$
begin
    perform start_workflow('t43', '[]', 't43-jq', 't43-retry');
end
$$;
update jobs set status = 'failed', attempt = 3, error = '{"e": 1}' where id = 't43-retry';
delete from tasks where job_id = 't43-retry';
select throws_ok(
    $$select _transition('t43-retry', 'pending')$$,
    'HM003',
    'workflow "t43-retry" is failed; it cannot become pending',
    'job: _transition refuses failed -> pending (the retry owns it)'
);
select is(
    (select retry_workflow('t43-retry') ->> 'status'),
    'pending',
    'job: failed -> pending through retry_workflow (_retry_job)'
);
select results_eq(
    $$select status, attempt, error from jobs where id = 't43-retry'$$,
    $$values ('pending', 1, null::jsonb)$$,
    'the retried job is pending with a fresh attempt count and no error'
);
select throws_ok(
    $$select _retry_job('t43-retry')$$,
    'HM003',
    'workflow "t43-retry" is pending; it cannot become pending',
    'job: _retry_job refuses a job that is not failed'
);

-- running -> pending belongs to continue_as_new, which also archives the run (walked in
-- 63_runs); _transition refuses it.
do $$
begin
    perform start_workflow('t43', '[]', 't43-cq', 't43-continue');
end
$$;
create temp table continued on commit drop as
select
    task_id,
    lease_token
from claim_tasks(array['t43-cq'], 'w1', 1);
select throws_ok(
    $$select _transition('t43-continue', 'pending')$$,
    'HM003',
    'workflow "t43-continue" is running; it cannot become pending',
    'job: _transition refuses running -> pending (continue_as_new owns it)'
);
select is(
    (select continue_task(task_id, lease_token, '[2]') from continued),
    2,
    'job: running -> pending through continue_task (_continue_run)'
);
select throws_ok(
    $$select _continue_run('t43-continue', '[]')$$,
    'HM003',
    'workflow "t43-continue" is pending; it cannot become pending',
    'job: _continue_run refuses a job that is not running'
);

-- ------------------------------------------------------------------ tasks

do $$
begin
    perform start_workflow('t43', '[]', 't43-tq', 't43-task');
end
$$;
create temp table claimed on commit drop as
select
    task_id,
    lease_token
from claim_tasks(array['t43-tq'], 'w1', 1);
select is(
    (select t.state from tasks as t inner join claimed as c on t.id = c.task_id),
    'leased',
    'task: ready -> leased through claim_tasks'
);
select is(
    (select count(*)::integer from _requeue_tasks((select array_agg(task_id) from claimed), _now())),
    1,
    'task: leased -> ready through _requeue_tasks'
);
select is(
    (select count(*)::integer from _requeue_tasks((select array_agg(task_id) from claimed), _now())),
    0,
    'task: _requeue_tasks leaves a ready task as it is'
);
delete from claimed;
insert into claimed
select
    task_id,
    lease_token
from claim_tasks(array['t43-tq'], 'w1', 1);
select lives_ok(
    format(
        $$select bury_task(%s, %L, '{"message": "stuck"}')$$,
        (select task_id from claimed), (select lease_token from claimed)
    ),
    'task: leased -> dead through bury_task'
);
select is(
    (select count(*)::integer from _requeue_tasks((select array_agg(task_id) from claimed), _now())),
    0,
    'task: _requeue_tasks leaves a dead task as it is'
);
select is(
    (select (retry_workflow('t43-task') ->> 'revived_tasks')::integer),
    1,
    'task: dead -> ready through retry_workflow'
);
select is(
    (select t.state from tasks as t inner join claimed as c on t.id = c.task_id),
    'ready',
    'the revived task is ready'
);

-- ------------------------------------------------------------------ lease expiry used up

-- An activity allowed 2 runs whose lease expires twice: the third claim fails it (the
-- worker never sees it), like a run that failed on its last attempt.
set local "hotmesh.fake_now" = '2020-01-02 00:00:00+00';
do $$
declare
    v_task claimed_task;
begin
    perform start_workflow('t43', '[]', 't43-lq', 't43-lease');
    select * into v_task from claim_tasks(array['t43-lq'], 'w1', 1);
    perform schedule_activity(v_task.task_id, v_task.lease_token, 1, 'charge', '["x"]', 't43-aq',
                              '{"maximum_attempts": 2}');
    perform suspend_task(v_task.task_id, v_task.lease_token);
end
$$;
select is(
    (select attempt from claim_tasks(array['t43-aq'], 'w1', 1, interval '10 seconds')),
    1,
    'the activity is claimed: attempt 1'
);
set local "hotmesh.fake_now" = '2020-01-02 00:00:10+00';
select is(
    (select attempt from claim_tasks(array['t43-aq'], 'w2', 1, interval '10 seconds')),
    2,
    'its lease expired: claimed again, attempt 2 (the last)'
);
set local "hotmesh.fake_now" = '2020-01-02 00:00:20+00';
select is_empty(
    $$select * from claim_tasks(array['t43-aq'], 'w3', 1)$$,
    'its lease expired on the last attempt: the claim does not hand it out'
);
select results_eq(
    $$select status, error, attempt from steps where job_id = 't43-lease' and seq = 1$$,
    $$
    values (
        'failed',
        '{"message": "activity \"charge\": its lease expired on every one of 2 attempts (worker crashed or stalled)",
          "type": "LeaseExpired", "code": 597, "attempts": 3}'::jsonb,
        3
    )
    $$,
    'the step failed: LeaseExpired, retries exhausted (597)'
);
select is(
    (select count(*)::integer from tasks where job_id = 't43-lease' and kind = 'activity'),
    0,
    'the activity task is gone'
);
select is(
    (select name from claim_tasks(array['t43-lq'], 'w3', 1)),
    't43',
    'the workflow was woken to see the failure'
);

-- ------------------------------------------------------------------ hook threads

-- _end_thread ends a running hook only: one that already ended keeps its outcome.
do $$
begin
    perform start_workflow('t43', '[]', 't43-q', 't43-hook', null, '{"expire": 60}');
    perform hook('t43-hook', 'h', '[]');
    perform _end_thread('t43-hook', 'h1', '"first"', null);
    perform _end_thread('t43-hook', 'h1', null, '{"message": "late"}');
end
$$;
select results_eq(
    $$select status, result, error from threads where job_id = 't43-hook'$$,
    $$values ('completed', '"first"'::jsonb, null::jsonb)$$,
    'thread: running -> completed through _end_thread; completed -> failed is not made'
);

-- ------------------------------------------------------------------ human tasks

-- One task per pair, put in its from-state directly; _move_human_task makes the moves it owns
-- and refuses the others (the cancellations are _cancel_human_tasks').
do $$
begin
    perform start_workflow('t43', '[]', 't43-q', 't43-human', null, '{"expire": 60}');
end
$$;
create temp table human_pairs on commit drop as
select
    p.from_state,
    p.to_state,
    coalesce(l.owner = '_move_human_task', false) as owned,
    (row_number() over (order by p.from_state, p.to_state))::integer as seq
from pairs as p
left join _legal_transitions() as l
    on p.machine = l.machine and p.from_state = l.from_state and p.to_state = l.to_state
where p.machine = 'human_task';
insert into human_tasks (job_id, thread, seq, signal_id, role, type, title, status, created_at)
select
    't43-human' as job_id,
    'main' as thread,
    h.seq,
    's' as signal_id,
    'r' as role,
    't' as type,
    'x' as title,
    h.from_state as status,
    '2020-01-01 00:00:00+00'::timestamptz as created_at
from human_pairs as h;

-- Each row rebuilt as a human_tasks row: on a distributed app (docs/citus.md) the query runs
-- on the table's shard, whose rows have the shard's type.
select
    is(
        (
            select (_move_human_task(
                jsonb_populate_record(null::human_tasks, to_jsonb(t)),
                h.to_state, 'tester', '{"event": "x"}'
            )).status
            from human_tasks as t
            where t.job_id = 't43-human' and t.seq = h.seq
        ),
        h.to_state,
        format('human_task: %s -> %s moves', h.from_state, h.to_state)
    )
from human_pairs as h
where h.owned
order by h.seq;

select
    throws_ok(
        format(
            'select _move_human_task(jsonb_populate_record(null::human_tasks, to_jsonb(t)),'
            ' %L, %L, %L) from human_tasks as t'
            ' where t.job_id = %L and t.seq = %s',
            h.to_state, 'tester', '{}', 't43-human', h.seq
        ),
        'HM003',
        format(
            'human task %s is %s; it cannot become %s',
            (select t.id from human_tasks as t where t.job_id = 't43-human' and t.seq = h.seq),
            h.from_state, h.to_state
        ),
        format('human_task: %s -> %s is refused by _move_human_task', h.from_state, h.to_state)
    )
from human_pairs as h
where not h.owned
order by h.seq;

do $$
begin
    perform start_workflow('t43', '[]', 't43-q', 't43-cancel', null, '{"expire": 60}');
end
$$;
insert into human_tasks (job_id, thread, seq, signal_id, role, type, title, status, created_at)
select
    't43-cancel' as job_id,
    'main' as thread,
    s.seq,
    's' as signal_id,
    'r' as role,
    't' as type,
    'x' as title,
    s.status,
    '2020-01-01 00:00:00+00'::timestamptz as created_at
from
    unnest(
        array['open', 'claimed', 'resolved', 'expired', 'cancelled']
    ) with ordinality as s (status, seq);
select _cancel_human_tasks(array['t43-cancel'], false);
select is(
    (select string_agg(status, ',' order by seq) from human_tasks where job_id = 't43-cancel'),
    'cancelled,cancelled,resolved,expired,cancelled',
    '_cancel_human_tasks cancels the open and claimed tasks and leaves the closed ones'
);

select * from finish();

rollback;
