-- Operations: settings (default_retention used by start_workflow), prune_batch (what it
-- deletes and what it never touches, batches, the older_than guard, dry run, bad arguments),
-- the prune procedure's shape, start_workflow reusing an expired id, and retry_workflow
-- (failed -> pending from the last recorded step, children and hooks, dead tasks, refusals).
begin;
\ir _preamble.psql
\ir _fixtures.psql
set local timezone = 'UTC';
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2040-01-01 00:00:00+00';

select plan(67);

-- Rows left anywhere for a workflow id.
create function pg_temp.rows_of(p_id text) returns bigint
language sql as $$
    select (select count(*) from jobs where id = p_id)
         + (select count(*) from steps where job_id = p_id)
         + (select count(*) from tasks where job_id = p_id)
         + (select count(*) from threads where job_id = p_id)
         + (select count(*) from signals where job_id = p_id)
         + (select count(*) from human_tasks where job_id = p_id)
$$;

-- ------------------------------------------------------------------ settings

select is(get_setting('default_retention'), '604800'::jsonb, 'default_retention: 7 days');
select is(
    set_setting('default_retention', '"30 days"'), '2592000'::jsonb,
    'set_setting takes interval text and stores seconds'
);
select is(
    (select value from settings where key = 'default_retention'), '2592000'::jsonb,
    '... in the settings table'
);
do $$
begin
    perform start_workflow('wf', '[]', 't71-s', 's-default');
    perform start_workflow('wf', '[]', 't71-s', 's-expire', null, '{"expire": 60}');
end
$$;
select results_eq(
    $$select id, retention from jobs where id in ('s-default', 's-expire') order by id$$,
    $$values ('s-default', interval '30 days'), ('s-expire', interval '60 seconds')$$,
    'a start without expire takes the app''s default_retention; expire wins'
);
select is(set_setting('default_retention', '3600'), '3600'::jsonb, 'seconds as a number');
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select set_setting('default_retention', '"soon"')$$, '22023', null, 'a value that is no duration: 22023'),
    ($$select set_setting('default_retention', '-1')$$, '22023', null, 'a negative duration: 22023'),
    ($$select set_setting('default_retention', '{"days": 1}')$$, '22023', null, 'an object: 22023'),
    ($$select set_setting('retention', '1')$$, '22023', 'unknown setting "retention" (known: default_retention)', 'an unknown key: 22023 naming the known ones'),
    ($$select get_setting('nope')$$, '22023', null, 'get_setting of an unknown key: 22023')
) as t (call, sqlstate, message, description);
select is(get_setting('default_retention'), '3600'::jsonb, 'a refused change changed nothing');
select is(
    set_setting('default_retention', null), '604800'::jsonb,
    'null removes the setting: back to the default'
);
select is(
    (select count(*)::integer from settings where key = 'default_retention'), 0,
    '... and the row is gone'
);

-- ------------------------------------------------------------------ prune

do $$
begin
    -- finished, retention 60 s
    perform start_workflow('wf', '[]', 't71-p', 'p-done', null, '{"expire": 60}');
    perform pg_temp.claim('done', 't71-p');
    perform record_step(pg_temp.tid('done'), pg_temp.tok('done'), 1, 'activity', 'a', '[]', '1');
    perform hook('p-done', 'helper', '[]', 't71-p-hooks');
    perform signal('kept-for-done', '1', 'p-done');
    perform complete_task(pg_temp.tid('done'), pg_temp.tok('done'), '1');
    perform start_workflow('wf', '[]', 't71-p', 'p-failed', null, '{"expire": 60}');
    perform pg_temp.claim('failed', 't71-p');
    perform ask_human(
        pg_temp.tid('failed'), pg_temp.tok('failed'), 1, 'p-failed-ask',
        '{"title": "Approve?", "role": "t71-approver"}'
    );
    perform fail_task(pg_temp.tid('failed'), pg_temp.tok('failed'), '{"message": "x", "code": 598}');
    perform start_workflow('wf', '[]', 't71-p', 'p-cancelled', null, '{"expire": 60}');
    perform cancel_workflow('p-cancelled');
    -- finished, retention 1 hour
    perform start_workflow('wf', '[]', 't71-p', 'p-young', null, '{"expire": 3600}');
    perform pg_temp.claim('young', 't71-p');
    perform complete_task(pg_temp.tid('young'), pg_temp.tok('young'), '1');
    -- live: pending, running, waiting (retention 0: they would be due at once if finished)
    perform start_workflow('wf', '[]', 't71-p', 'p-running', null, '{"expire": 0}');
    perform pg_temp.claim('running', 't71-p');
    perform start_workflow('wf', '[]', 't71-p', 'p-waiting', null, '{"expire": 0}');
    perform pg_temp.claim('waiting', 't71-p');
    perform schedule_sleep(pg_temp.tid('waiting'), pg_temp.tok('waiting'), 1, 60);
    perform suspend_task(pg_temp.tid('waiting'), pg_temp.tok('waiting'));
    perform signal('kept-for-waiting', '1', 'p-waiting');
    perform start_workflow('wf', '[]', 't71-p-idle', 'p-pending', null, '{"expire": 0}');
end
$$;

select results_eq(
    $$select (select count(*) from steps where job_id = 'p-done'),
             (select count(*) from threads where job_id = 'p-done'),
             (select count(*) from signals where job_id = 'p-done')$$,
    $$values (1::bigint, 1::bigint, 1::bigint)$$,
    'a finished workflow with a step, a hook thread and a signal kept for it'
);

set local "hotmesh.fake_now" = '2040-01-01 00:02:00+00';
select is(prune_batch(p_dry_run => true), 3, 'dry run: three finished workflows are expired');
select is(
    (select count(*)::integer from jobs where id like 'p-%'), 7, '... and nothing was deleted'
);
select is(
    prune_batch(interval '1 hour'), 0,
    'older_than is a guard: none finished an hour ago, none is pruned'
);
select is(prune_batch(p_batch => 2), 2, 'a batch deletes at most p_batch workflows');
select is(prune_batch(p_batch => 2), 1, 'the next batch the rest');
select is(prune_batch(p_batch => 2), 0, 'then nothing is left to prune');
select results_eq(
    $$select pg_temp.rows_of(id) from (values ('p-done'), ('p-failed'), ('p-cancelled')) as v (id)$$,
    $$values (0::bigint), (0::bigint), (0::bigint)$$,
    'a pruned workflow leaves no job, step, task, thread, kept signal or human task'
);
select results_eq(
    $$select id, status from jobs where id like 'p-%' order by id$$,
    $$values ('p-pending', 'pending'), ('p-running', 'running'), ('p-waiting', 'waiting'),
             ('p-young', 'completed')$$,
    'live workflows and a finished one within its retention are kept'
);
select is(
    (select count(*)::integer from signals where job_id = 'p-waiting'), 1,
    'a signal kept for a live workflow stays'
);
select isnt_empty(
    $$select from steps where job_id = 'p-waiting'$$, 'a live workflow keeps its steps'
);
select isnt_empty(
    $$select from tasks where job_id = 'p-running'$$, 'and its tasks'
);

set local "hotmesh.fake_now" = '2040-01-01 01:00:00+00';
select is(prune_batch(), 1, 'once its retention ran out the young one is pruned too');
set local "hotmesh.fake_now" = '2041-01-01 00:00:00+00';
select is(
    prune_batch(), 0, 'a year later live workflows are still never pruned'
);
select is(
    (select count(*)::integer from jobs where id like 'p-%'), 3, '... all three are there'
);

select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select prune_batch(null)$$, '22023', 'prune: older_than must be an interval >= 0, not null', 'older_than null: 22023'),
    ($$select prune_batch(interval '-1 day')$$, '22023', null, 'a negative older_than: 22023'),
    ($$select prune_batch(p_batch => 0)$$, '22023', 'prune: batch must be from 1 to 100000, not 0', 'a batch of 0: 22023')
) as t (call, sqlstate, message, description);

-- The procedure commits between batches, so it cannot pin its search_path: its body names
-- the schema instead.
select ok(
    (
        select prosrc like format('%%%s.prune_batch(%%', :'app') and prokind = 'p'
        from pg_proc where oid = 'prune(interval, integer, boolean, bigint)'::regprocedure
    ),
    'prune is a procedure whose body calls prune_batch by its qualified name'
);

select ok(
    (
        select prosrc like format('%%%s.prune_signals(%%', :'app')
        from pg_proc where oid = 'prune(interval, integer, boolean, bigint)'::regprocedure
    ),
    'prune then forgets old idempotency keys and untargeted kept signals (prune_signals)'
);

-- ------------------------------------------------------------------ prune_signals

-- Kept signals and idempotency keys live outside any workflow: they are forgotten once older
-- than the default retention (7 days here).
set local "hotmesh.fake_now" = '2050-01-01 00:00:00+00';
do $$
begin
    perform signal('s71-u', '1');
    perform signal('s71-k', '2', null, 'key-old');
end
$$;
set local "hotmesh.fake_now" = '2050-01-08 00:00:01+00';
do $$
begin
    perform signal('s71-u', '3');
    perform signal('s71-k', '4', null, 'key-new');
end
$$;
select is(
    prune_signals(p_dry_run => true), 3,
    'dry run: one idempotency key and two untargeted kept signals are older than 7 days'
);
select is(
    prune_signals(interval '30 days', p_dry_run => true), 0,
    'older_than longer than the retention keeps them longer'
);
select is(prune_signals(p_batch => 1), 2, 'a batch deletes up to p_batch keys and p_batch signals');
select is(prune_signals(p_batch => 1), 1, 'the next batch the rest');
select is(prune_signals(), 0, 'then nothing is left');
select results_eq(
    $$select (select array_agg(idempotency_key) from signal_keys),
             (select array_agg(payload order by id) from signals where job_id is null)$$,
    $$values (array['key-new'], array['3'::jsonb, '4'::jsonb])$$,
    'the recent key and the recent kept signals stay'
);
select is(
    (select count(*)::integer from signals where job_id = 'p-waiting'), 1,
    'a signal kept for a live workflow is never pruned by age'
);
select is(
    signal('s71-k', '4', null, 'key-new') ->> 'status', 'duplicate',
    'a recent key still turns a repeated send away'
);
select is(
    signal('s71-k', '6', null, 'key-old') ->> 'status', 'kept',
    'a forgotten key no longer does: the repeated send is taken as new'
);
select throws_ok(
    $$select prune_signals(null)$$, '22023', 'prune: older_than must be an interval >= 0, not null',
    'prune_signals checks its arguments like prune_batch'
);

-- ------------------------------------------------------------------ reusing an expired id

do $$
begin
    perform start_workflow('wf', '[]', 't71-reuse', 'p-reuse', null, '{"expire": 0}');
    perform pg_temp.claim('reuse', 't71-reuse');
    perform hook('p-reuse', 'helper', '[]', 't71-reuse-hooks');
    perform signal('kept-for-reuse', '1', 'p-reuse');
    perform complete_task(pg_temp.tid('reuse'), pg_temp.tok('reuse'), '1');
end
$$;
select lives_ok(
    $$select start_workflow('wf', '[]', 't71-reuse', 'p-reuse')$$,
    'an expired workflow''s id can be used again'
);
select results_eq(
    $$select (select count(*) from threads where job_id = 'p-reuse'),
             (select count(*) from signals where job_id = 'p-reuse'),
             (select status from jobs where id = 'p-reuse')$$,
    $$values (0::bigint, 0::bigint, 'pending')$$,
    '... and the new workflow inherits none of the old one''s threads or signals'
);

-- ------------------------------------------------------------------ retry_workflow

set local "hotmesh.fake_now" = '2042-01-01 00:00:00+00';
do $$
begin
    -- failed at its last step
    perform start_workflow('wf', '[]', 't71-r', 'r-fail');
    perform pg_temp.claim('fail', 't71-r');
    perform record_step(pg_temp.tid('fail'), pg_temp.tok('fail'), 1, 'activity', 'a', '[]', '1');
    perform record_step(
        pg_temp.tid('fail'), pg_temp.tok('fail'), 2, 'activity', 'b', '[]', null,
        '{"message": "declined", "code": 598}'
    );
    perform fail_task(pg_temp.tid('fail'), pg_temp.tok('fail'), '{"message": "declined", "code": 598}');
    -- a failure its code caught and moved past, then failed for another reason
    perform start_workflow('wf', '[]', 't71-r', 'r-caught');
    perform pg_temp.claim('caught', 't71-r');
    perform record_step(
        pg_temp.tid('caught'), pg_temp.tok('caught'), 1, 'activity', 'a', '[]', null,
        '{"message": "handled", "code": 598}'
    );
    perform record_step(pg_temp.tid('caught'), pg_temp.tok('caught'), 2, 'activity', 'b', '[]', '2');
    perform fail_task(pg_temp.tid('caught'), pg_temp.tok('caught'), '{"message": "bug", "code": 598}');
    -- a remote activity in flight when an inline one failed
    perform start_workflow('wf', '[]', 't71-r', 'r-remote');
    perform pg_temp.claim('remote', 't71-r');
    perform schedule_activity(pg_temp.tid('remote'), pg_temp.tok('remote'), 1, 'far', '[]', 't71-far');
    perform record_step(
        pg_temp.tid('remote'), pg_temp.tok('remote'), 2, 'activity', 'near', '[]', null,
        '{"message": "down", "code": 598}'
    );
    perform fail_task(pg_temp.tid('remote'), pg_temp.tok('remote'), '{"message": "down", "code": 598}');
    -- stuck: its activation was parked as dead
    perform start_workflow('wf', '[]', 't71-r', 'r-dead');
    perform pg_temp.claim('dead', 't71-r');
    perform bury_task(pg_temp.tid('dead'), pg_temp.tok('dead'), '{"message": "non-determinism"}');
    -- done
    perform start_workflow('wf', '[]', 't71-r', 'r-done');
    perform pg_temp.claim('rdone', 't71-r');
    perform complete_task(pg_temp.tid('rdone'), pg_temp.tok('rdone'), '1');
end
$$;

set local "hotmesh.fake_now" = '2042-01-01 00:00:05+00';
select is(
    retry_workflow('r-fail'),
    '{"workflow_id": "r-fail", "status": "pending", "reset_steps": 1, "retried": [],
      "revived_tasks": 0}'::jsonb,
    'retry_workflow of a failed workflow: pending again, one step to run again'
);
select results_eq(
    $$select status, attempt, error, result, completed_at, expire_at from jobs where id = 'r-fail'$$,
    $$values ('pending', 1, null::jsonb, null::jsonb, null::timestamptz, null::timestamptz)$$,
    '... with a fresh attempt count, no error and no expiry'
);
select results_eq(
    $$select seq, name, status from steps where job_id = 'r-fail' order by seq$$,
    $$values (1, 'a', 'completed')$$,
    '... its completed step stays (it replays), the failed last step is gone (it runs again)'
);
select results_eq(
    $$select thread, kind, state, run_at from tasks where job_id = 'r-fail'$$,
    $$values ('main', 'workflow', 'ready', '2042-01-01 00:00:05+00'::timestamptz)$$,
    '... and its activation is ready now'
);
select is(
    (retry_workflow('r-caught') ->> 'reset_steps')::integer, 0,
    'a failure the code moved past is history: nothing is reset'
);
select results_eq(
    $$select seq, status from steps where job_id = 'r-caught' order by seq$$,
    $$values (1, 'failed'), (2, 'completed')$$,
    '... both steps replay as recorded'
);
select is(
    (retry_workflow('r-remote') ->> 'reset_steps')::integer, 2,
    'the failed step and the remote activity whose task was removed are both reset'
);
select is_empty(
    $$select from steps where job_id = 'r-remote'$$, '... so both are scheduled again on replay'
);
select is(
    retry_workflow('r-dead'),
    '{"workflow_id": "r-dead", "status": "running", "reset_steps": 0, "retried": [],
      "revived_tasks": 1}'::jsonb,
    'a workflow with a dead task: the task is revived'
);
select results_eq(
    $$select t.state, t.attempt, t.error, t.run_at, j.error
        from tasks as t inner join jobs as j on t.job_id = j.id where j.id = 'r-dead'$$,
    $$values ('ready', 0, null::jsonb, '2042-01-01 00:00:05+00'::timestamptz, null::jsonb)$$,
    '... ready at once, with a fresh attempt count and the error cleared'
);
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select retry_workflow('r-done')$$, 'HM003', 'workflow "r-done" is completed; only a failed workflow, or one with a dead task, can be retried', 'retry_workflow of a completed workflow: HM003'),
    ($$select retry_workflow('r-fail')$$, 'HM003', null, 'a retried workflow (pending, nothing dead) cannot be retried again: HM003'),
    ($$select retry_workflow('no-such-workflow')$$, 'HM002', 'workflow "no-such-workflow" not found', 'retry_workflow of an unknown id: HM002')
) as t (call, sqlstate, message, description);

-- A failed child behind the parent's failed step is retried with it.
set local "hotmesh.fake_now" = '2042-01-02 00:00:00+00';
do $$
begin
    perform start_workflow('parent', '[]', 't71-parent', 'r-parent');
    perform pg_temp.claim('parent', 't71-parent');
    perform start_child(
        pg_temp.tid('parent'), pg_temp.tok('parent'), 1, 'kid', '[]', 't71-kid', 'r-kid', null,
        '{}', true
    );
    perform suspend_task(pg_temp.tid('parent'), pg_temp.tok('parent'));
    perform pg_temp.claim('kid', 't71-kid');
    perform fail_task(pg_temp.tid('kid'), pg_temp.tok('kid'), '{"message": "kid broke", "code": 598}');
    perform pg_temp.claim('parent', 't71-parent');
    perform fail_task(pg_temp.tid('parent'), pg_temp.tok('parent'), '{"message": "kid broke", "code": 598}');
end
$$;
select results_eq(
    $$select id, status from jobs where id in ('r-parent', 'r-kid') order by id$$,
    $$values ('r-kid', 'failed'), ('r-parent', 'failed')$$,
    'the child failed, and with it the parent'
);
select is(
    retry_workflow('r-parent') -> 'retried', '["r-kid"]'::jsonb,
    'retrying the parent retries the failed child it awaited'
);
select results_eq(
    $$select id, status from jobs where id in ('r-parent', 'r-kid') order by id$$,
    $$values ('r-kid', 'pending'), ('r-parent', 'pending')$$,
    '... both are pending'
);
select is(
    (select status from steps where job_id = 'r-parent' and seq = 1), 'scheduled',
    '... and the parent''s step awaits the child again'
);
do $$
begin
    perform pg_temp.claim('kid', 't71-kid');
    perform complete_task(pg_temp.tid('kid'), pg_temp.tok('kid'), '"fixed"');
end
$$;
select results_eq(
    $$select status, output from steps where job_id = 'r-parent' and seq = 1$$,
    $$values ('completed', '"fixed"'::jsonb)$$,
    'the retried child''s end settles the parent''s step'
);

-- A failed hook whose failure reached the workflow as a signal is revived.
set local "hotmesh.fake_now" = '2042-01-03 00:00:00+00';
do $$
begin
    perform start_workflow('wf', '[]', 't71-hook', 'r-hook');
    perform pg_temp.claim('hmain', 't71-hook');
    perform start_hook(
        pg_temp.tid('hmain'), pg_temp.tok('hmain'), 1, 'helper', '[]', 't71-hook', null, 'sig-h'
    );
    perform wait_signal(pg_temp.tid('hmain'), pg_temp.tok('hmain'), 2, 'sig-h', null);
    perform suspend_task(pg_temp.tid('hmain'), pg_temp.tok('hmain'));
    perform pg_temp.claim('hh1', 't71-hook');
    perform fail_task(pg_temp.tid('hh1'), pg_temp.tok('hh1'), '{"message": "hook broke", "code": 598}');
    perform pg_temp.claim('hmain', 't71-hook');
    perform fail_task(pg_temp.tid('hmain'), pg_temp.tok('hmain'), '{"message": "hook broke", "code": 598}');
end
$$;
select results_eq(
    $$select (select status from jobs where id = 'r-hook'),
             (select status from threads where job_id = 'r-hook' and thread = 'h1'),
             (select status from steps where job_id = 'r-hook' and seq = 2)$$,
    $$values ('failed', 'failed', 'failed')$$,
    'the hook failed, its caller''s wait failed, the workflow failed'
);
select is(
    (retry_workflow('r-hook') ->> 'reset_steps')::integer, 1,
    'retry: the failed wait is reset'
);
select results_eq(
    $$select thread, status from threads where job_id = 'r-hook'$$,
    $$values ('h1', 'running')$$,
    '... the hook runs again'
);
select results_eq(
    $$select thread, state from tasks where job_id = 'r-hook' order by thread$$,
    $$values ('h1', 'ready'), ('main', 'ready')$$,
    '... both threads have an activation'
);

select * from finish();

rollback;
