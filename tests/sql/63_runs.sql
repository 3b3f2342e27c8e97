-- Continue-as-new, the run chain: continue_task refuses bad input and non-main tasks and
-- changes nothing then; it does not continue while an outcome the activation has not seen
-- waits (a signal that filled a wait); it archives the run (main and finished hook threads,
-- their steps) into runs / run_steps and starts the next run on the same row (entity, kept
-- signals and running hooks carry over); workflow_runs, run_history and entity_history read
-- across runs; a child of the old run settles nothing in the new one; later runs name their
-- children and hooks apart; prune removes the archive with the workflow.
begin;
\ir _preamble.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(40);

-- The tasks the test holds, by a name of its choosing.
create temp table held (
    key text primary key,
    task_id bigint not null,
    token uuid not null
) on commit drop;

-- Claims the next task of p_queue and holds it as p_key; returns its thread.
create function pg_temp.claim(p_key text, p_queue text) returns text
language plpgsql as $$
declare
    v_claim claimed_task;
begin
    select * into v_claim from claim_tasks(array[p_queue], 'tester', 1);
    if v_claim.task_id is null then
        raise exception 'nothing to claim on %', p_queue;
    end if;
    delete from held where key = p_key;
    insert into held values (p_key, v_claim.task_id, v_claim.lease_token);
    return v_claim.thread;
end
$$;

-- continue_task with the task held as p_key.
create function pg_temp.continue_as(p_key text, p_args jsonb) returns integer
language sql as $$
    select continue_task(h.task_id, h.token, p_args) from held as h where h.key = p_key
$$;

-- Run 1 of workflow a1: an entity change, a wait, a remote activity, an awaited child, a hook
-- still running (h1) and one that finished (h2); an entity change from SQL and a signal kept
-- for the workflow.
do $$
declare
    v_main held;
begin
    perform start_workflow('agent', '["a"]', 'q63', 'a1');
    perform pg_temp.claim('main', 'q63');
    select * into v_main from held where key = 'main';
    perform entity_step(v_main.task_id, v_main.token, 1, 'set', null, '{"n": 1}');
    perform wait_signal(v_main.task_id, v_main.token, 2, 'go', null);
    perform schedule_activity(v_main.task_id, v_main.token, 3, 'charge', '[]', 'acts63');
    perform start_child(v_main.task_id, v_main.token, 4, 'kid', '[]', 'kq63', null, null, '{}',
                        true);
    perform hook('a1', 'slow', '[]', 'hq63');
    perform hook('a1', 'quick', '[]', 'hq63');
    perform pg_temp.claim('h1', 'hq63');
    perform pg_temp.claim('h2', 'hq63');
    perform complete_task(task_id, token, '"quick done"') from held where key = 'h2';
    perform pg_temp.claim('charge', 'acts63');
    perform entity_merge('a1', '{"sql": 1}');
    perform signal('later', '1', 'a1');
end
$$;
create temp table before_continue on commit drop as
select
    (select count(*) from steps where job_id = 'a1') as steps,
    (select to_jsonb(j) from jobs as j where j.id = 'a1') as job;

-- ------------------------------------------------------------------ bad input

select throws_ok(
    $$select pg_temp.continue_as('main', '{"n": 2}')$$,
    '22023',
    'continue_as_new: the args of the next run of workflow "a1" must be a JSON array '
    || '(positional arguments), not object',
    'args that are not a JSON array are refused (22023)'
);
select throws_ok(
    $$select pg_temp.continue_as('main', null)$$,
    '22023',
    'continue_as_new: the args of the next run of workflow "a1" must be a JSON array '
    || '(positional arguments), not null',
    'no args at all are refused (22023)'
);
select throws_ok(
    $$select pg_temp.continue_as('h1', '[]')$$,
    'HM003',
    format(
        'task %s is hook thread h1 of workflow "a1"; only its main thread can continue as new',
        (select task_id from held where key = 'h1')
    ),
    'a hook thread cannot continue its workflow (HM003)'
);
select throws_ok(
    $$select pg_temp.continue_as('charge', '[]')$$,
    'HM003',
    format(
        'task %s is activity "charge" of workflow "a1"; only its main thread can continue as new',
        (select task_id from held where key = 'charge')
    ),
    'an activity cannot continue a workflow (HM003)'
);
select throws_ok(
    format(
        $$select continue_task(%s, gen_random_uuid(), '[]')$$,
        (select task_id from held where key = 'main')
    ),
    'HM004',
    null,
    'a stale lease token is refused (HM004)'
);
select results_eq(
    $$
    select
        (select count(*) from steps where job_id = 'a1'),
        (select to_jsonb(j) from jobs as j where j.id = 'a1')
    $$,
    'select steps, job from before_continue',
    'a refused continue changes nothing'
);

-- ------------------------------------------------------------------ an unseen outcome

select is(
    (signal('go', '"now"', 'a1') ->> 'status'),
    'delivered',
    'a signal fills the wait of run 1 while its activation runs'
);
select is(
    pg_temp.continue_as('main', '["b"]'),
    null,
    'continue_task does not continue while an outcome the activation has not seen waits'
);
select results_eq(
    $$select run, status from jobs where id = 'a1'$$,
    $$values (1, 'running')$$,
    'the run goes on: the activation replays with the signal and decides again'
);

-- ------------------------------------------------------------------ the next run

do $$
begin
    perform suspend_task(task_id, token) from held where key = 'main';
    perform pg_temp.claim('main', 'q63');
end
$$;
select is(pg_temp.continue_as('main', '["b"]'), 2, 'continue_task starts run 2');
select results_eq(
    $$
    select run, status, args, attempt, context, entity_version, result, error from jobs
    where id = 'a1'
    $$,
    $$values (2, 'pending', '["b"]'::jsonb, 1, '{"n": 1, "sql": 1}'::jsonb, 2::bigint,
              null::jsonb, null::jsonb)$$,
    'run 2 is pending on the same row with the new args, the entity carried over'
);
select set_eq(
    $$select thread, count(*)::integer from steps where job_id = 'a1' group by thread$$,
    $$values ('sql', 1)$$,
    'run 2 starts with an empty history (SQL callers'' entity changes belong to no run)'
);
select results_eq(
    $$select thread, seq, kind, status from run_steps where job_id = 'a1' order by thread, seq$$,
    $$values ('main', 1, 'entity', 'completed'), ('main', 2, 'signal', 'completed'),
             ('main', 3, 'activity', 'scheduled'), ('main', 4, 'child', 'scheduled')$$,
    'run 1''s steps are archived in run_steps'
);
select results_eq(
    $$
    select run, args, next_args, jsonb_path_query_array(threads, '$[*].thread')
    from runs where job_id = 'a1'
    $$,
    $$values (1, '["a"]'::jsonb, '["b"]'::jsonb, '["h2"]'::jsonb)$$,
    'runs keeps run 1: its args, the args it passed on and its finished hook thread'
);
select results_eq(
    $$select thread, status from threads where job_id = 'a1'$$,
    $$values ('h1', 'running')$$,
    'the hook thread still running goes on in run 2'
);
select set_eq(
    $$select thread, kind, state from tasks where job_id = 'a1'$$,
    $$values ('main', 'workflow', 'ready'), ('h1', 'workflow', 'leased')$$,
    'run 2 has a fresh activation; run 1''s activation and remote activity are gone'
);
select throws_ok(
    $$select complete_task(task_id, token, '1') from held where key = 'charge'$$,
    'HM005',
    null,
    'a late outcome of run 1''s activity finds no task'
);
select results_eq(
    $$select payload from signals where job_id = 'a1'$$,
    $$values ('1'::jsonb)$$,
    'a signal kept for the workflow stays kept for run 2'
);

-- ------------------------------------------------------------------ reading the runs

select results_eq(
    $$select run, status, args, next_args, steps from workflow_runs('a1')$$,
    $$values (1, 'continued', '["a"]'::jsonb, '["b"]'::jsonb, 4::bigint),
             (2, 'pending', '["b"]'::jsonb, null::jsonb, 0::bigint)$$,
    'workflow_runs lists run 1 (continued) and run 2 (its status)'
);
select results_eq(
    $$select thread, seq, kind, name, status, output from run_history('a1', 1)$$,
    $$values ('main', null::integer, 'workflow', 'agent', 'started', null::jsonb),
             ('main', 1, 'entity', 'set', 'completed', '{"n": 1}'),
             ('main', 2, 'signal', 'go', 'completed', '"now"'),
             ('main', 3, 'activity', 'charge', 'scheduled', null),
             ('main', 4, 'child', 'kid', 'scheduled', null),
             ('h2', null, 'thread', 'quick', 'started', null),
             ('h2', null, 'thread', 'quick', 'completed', '"quick done"'),
             ('main', null, 'workflow', 'agent', 'continued', '["b"]')$$,
    'run_history shows run 1: its start, steps, hook thread and end'
);
select results_eq(
    'select * from run_history(''a1'', 2)',
    'select * from workflow_history(''a1'')',
    'run_history of the current run is workflow_history'
);
select throws_ok(
    $$select * from run_history('a1', 3)$$,
    'HM002',
    'workflow "a1" has no run 3',
    'run_history of a run that does not exist: HM002'
);
select throws_ok(
    $$select * from workflow_runs('nope')$$,
    'HM002',
    'workflow "nope" not found',
    'workflow_runs of an unknown workflow: HM002'
);
select results_eq(
    $$select version, thread, op, document from entity_history('a1')$$,
    $$values (1::bigint, 'main', 'set', '{"n": 1}'::jsonb),
             (2::bigint, 'sql', 'merge', '{"n": 1, "sql": 1}'::jsonb)$$,
    'entity_history lists the changes of every run'
);

-- ------------------------------------------------------------------ run 2

do $$
declare
    v_main held;
begin
    perform pg_temp.claim('main', 'q63');
    select * into v_main from held where key = 'main';
    -- A wait at the position where run 1 awaited its child.
    perform wait_signal(v_main.task_id, v_main.token, 4, 'other', null);
    perform pg_temp.claim('kid', 'kq63');
    perform complete_task(task_id, token, '"kid done"') from held where key = 'kid';
end
$$;
select results_eq(
    $$select status, output from steps where job_id = 'a1' and thread = 'main' and seq = 4$$,
    $$values ('scheduled', null::jsonb)$$,
    'run 1''s child ends and settles nothing of run 2'
);
select is(
    (select status from jobs where id = 'a1-main-4'),
    'completed',
    'the child of run 1 ran on and finished'
);
select is(
    (
        select
            start_child(task_id, token, 5, 'kid', '[]', 'kq63', null, null, '{}', false)
            ->> 'output'
        from held where key = 'main'
    ),
    'a1-main-5-run2',
    'a child of run 2 gets a default id of its own'
);
select is(hook('a1', 'again', '[]', 'hq63'), 'h2', 'run 2''s hooks are numbered after h1');
select is(
    (select wait_signal(task_id, token, 6, 'later', null) ->> 'output' from held where key = 'main'),
    '1',
    'run 2 takes the signal kept for the workflow'
);
select is(
    (select payload from claim_tasks(array['hq63'], 'tester', 1)),
    '{"run": 2}',
    'a claimed activation of a later run carries its run in its payload'
);

-- ------------------------------------------------------------------ retention of the archive

set local "hotmesh.fake_now" = '2020-01-07 23:59:59+00';
select is(prune_runs(interval '0', 10, true), 0, 'a run is kept for its workflow''s retention');
set local "hotmesh.fake_now" = '2020-01-08 00:00:00+00';
select is(prune_runs(interval '0', 10, true), 1, 'then prune_runs would forget it');
select is(prune_runs(), 1, 'prune_runs forgets it');
select results_eq(
    $$select run, kind, entity_version from run_steps where job_id = 'a1'$$,
    $$values (1, 'entity', 1::bigint)$$,
    'its steps are gone but its entity change'
);
select results_eq(
    $$
    select
        (select array_agg(run) from workflow_runs('a1')),
        (select array_agg(version order by version) from entity_history('a1'))
    $$,
    $$values (array[2], array[1, 2]::bigint [])$$,
    'workflow_runs no longer lists it; entity_history still has every change'
);

-- ------------------------------------------------------------------ the end of the chain

select is(
    cancel_workflow('a1'),
    array['a1', 'a1-main-5-run2'],
    'cancelling ends the chain (and, as always, its running children)'
);
select results_eq(
    $$select run, status from workflow_runs('a1')$$,
    $$values (2, 'cancelled')$$,
    'the cancelled run is the last'
);
set local "hotmesh.fake_now" = '2020-02-01 00:00:00+00';
select ok(prune_batch() >= 1, 'prune removes the finished workflow');
select is(
    (select count(*)::integer from runs where job_id = 'a1')
    + (select count(*)::integer from run_steps where job_id = 'a1'),
    0,
    'and its archived runs'
);

-- A keyed workflow's next run keeps its concurrency key (its activations share the key's
-- limit: 25_limits.sql).
select start_workflow('agent', '[]', 'k63', 'keyed', null, '{"concurrency_key": "tenant-1"}');
select pg_temp.claim('keyed', 'k63');
select pg_temp.continue_as('keyed', '["again"]');
select results_eq(
    $$select thread, concurrency_key, key_rank is not null from tasks where job_id = 'keyed'$$,
    $$values ('main', 'tenant-1', true)$$,
    'the next run''s first activation carries the workflow''s concurrency key'
);

select * from finish();
rollback;
