-- The inspection views and the timeline: `workflows` (status, age, what each unfinished
-- workflow waits on: timer, signal, activity queued / running / retrying, inline retry, child,
-- a workflow retry, a dead task, a hook thread's wait), `queue_backlog` (ready, delayed,
-- leased, lease expired, dead, oldest age), `failed_workflows`, and workflow_history (every
-- thread, entity changes with their version, a stable order; HM002 for an unknown id).
begin;
\ir _preamble.psql
\ir _fixtures.psql
set local timezone = 'UTC';
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2030-01-01 00:00:00+00';

select plan(39);

create function pg_temp.waiting_on(p_id text) returns text
language sql as $$ select waiting_on from workflows where id = p_id $$;

-- ------------------------------------------------------------------ one workflow per state

do $$
begin
    perform start_workflow('wf', '[]', 't70-pending', 'v-pending');

    perform start_workflow('wf', '[]', 't70-timer', 'v-timer');
    perform pg_temp.claim('timer', 't70-timer');
    perform schedule_sleep(pg_temp.tid('timer'), pg_temp.tok('timer'), 1, 60);
    perform suspend_task(pg_temp.tid('timer'), pg_temp.tok('timer'));
    -- ... and a hook thread of it that waits for a signal
    perform hook('v-timer', 'helper', '[]', 't70-hook');
    perform pg_temp.claim('hook', 't70-hook');
    perform wait_signal(pg_temp.tid('hook'), pg_temp.tok('hook'), 1, 'go', null);
    perform suspend_task(pg_temp.tid('hook'), pg_temp.tok('hook'));

    perform start_workflow('wf', '[]', 't70-signal', 'v-signal');
    perform pg_temp.claim('signal', 't70-signal');
    perform wait_signal(pg_temp.tid('signal'), pg_temp.tok('signal'), 1, 'approve', 300);
    perform suspend_task(pg_temp.tid('signal'), pg_temp.tok('signal'));

    perform start_workflow('wf', '[]', 't70-activity', 'v-activity');
    perform pg_temp.claim('activity', 't70-activity');
    perform schedule_activity(
        pg_temp.tid('activity'), pg_temp.tok('activity'), 1, 'charge', '[]', 't70-acts'
    );
    perform suspend_task(pg_temp.tid('activity'), pg_temp.tok('activity'));

    perform start_workflow('wf', '[]', 't70-inline', 'v-inline');
    perform pg_temp.claim('inline', 't70-inline');
    perform record_step(
        pg_temp.tid('inline'), pg_temp.tok('inline'), 1, 'activity', 'pay', '[]', null,
        '{"message": "down", "type": "E"}', null
    );
    perform suspend_task(pg_temp.tid('inline'), pg_temp.tok('inline'));

    perform start_workflow('wf', '[]', 't70-child', 'v-child');
    perform pg_temp.claim('child', 't70-child');
    perform start_child(
        pg_temp.tid('child'), pg_temp.tok('child'), 1, 'kid', '[]', 't70-kid', 'v-kid', null,
        '{}', true
    );
    perform suspend_task(pg_temp.tid('child'), pg_temp.tok('child'));

    perform start_workflow('wf', '[]', 't70-dead', 'v-dead');
    perform pg_temp.claim('dead', 't70-dead');
    perform bury_task(
        pg_temp.tid('dead'), pg_temp.tok('dead'), '{"message": "non-determinism at step 1"}'
    );

    perform start_workflow('wf', '[]', 't70-wfretry', 'v-wfretry');
    perform pg_temp.claim('wfretry', 't70-wfretry');
    perform fail_task(
        pg_temp.tid('wfretry'), pg_temp.tok('wfretry'), '{"message": "flaky", "type": "E"}'
    );

    perform start_workflow('wf', '[]', 't70-failed', 'v-failed');
    perform pg_temp.claim('failed', 't70-failed');
    perform fail_task(
        pg_temp.tid('failed'), pg_temp.tok('failed'),
        '{"message": "nope", "type": "FatalError", "code": 598}'
    );

    perform start_workflow('wf', '[]', 't70-done', 'v-done');
    perform pg_temp.claim('done', 't70-done');
    perform complete_task(pg_temp.tid('done'), pg_temp.tok('done'), '42');
end
$$;

select results_eq(
    $$select id, status from workflows where id like 'v-%' order by id$$,
    $$values ('v-activity', 'waiting'), ('v-child', 'waiting'), ('v-dead', 'running'),
             ('v-done', 'completed'), ('v-failed', 'failed'), ('v-inline', 'waiting'),
             ('v-kid', 'pending'), ('v-pending', 'pending'), ('v-signal', 'waiting'),
             ('v-timer', 'waiting'), ('v-wfretry', 'waiting')$$,
    'workflows: one row per job, with its status'
);

select results_eq(
    $$select waiting_on, waits from workflows where id = 'v-pending'$$,
    $$values (null::text, '[]'::jsonb)$$,
    'a workflow that has not run yet waits on nothing recorded'
);
select is(
    (select waits from workflows where id = 'v-timer'),
    '[{"thread": "main", "seq": 1, "kind": "timer", "until": "2030-01-01T00:01:00+00:00"},
      {"thread": "h1", "seq": 1, "kind": "signal", "name": "go"}]'::jsonb,
    'a sleeping workflow waits on its timer, and its hook thread on its signal'
);
select is(
    (select waits from workflows where id = 'v-signal'),
    '[{"thread": "main", "seq": 1, "kind": "signal", "name": "approve",
       "until": "2030-01-01T00:05:00+00:00"}]'::jsonb,
    'a workflow waiting for a signal: its id and the timeout'
);
select is(
    (select waits -> 0 ->> 'error' from workflows where id = 'v-inline'), 'down',
    'an inline activity between attempts waits with its last error'
);
select is(
    (select waits from workflows where id = 'v-child'),
    '[{"thread": "main", "seq": 1, "kind": "child", "name": "kid",
       "workflow_id": "v-kid"}]'::jsonb,
    'a workflow awaiting a child: the child''s id'
);
select is(
    (select parent_id from workflows where id = 'v-kid'), 'v-child',
    'the child row names its parent'
);
select is(
    (select error from workflows where id = 'v-wfretry'), 'flaky',
    'a workflow body between attempts shows the error of its last attempt'
);

-- waiting_on: what waits says, as text.
select is(pg_temp.waiting_on(t.id), t.waiting_on, t.description)
from (
    values
    ('v-timer', 'timer until 2030-01-01T00:01:00+00:00, h1: signal go', 'a timer and a hook''s signal as text: the timer, then the hook''s wait prefixed with its thread'),
    ('v-signal', 'signal approve (timeout 2030-01-01T00:05:00+00:00)', 'a signal wait as text'),
    ('v-activity', 'activity charge (queued)', 'a remote activity not claimed yet: queued'),
    ('v-inline', 'activity pay (retry 2 at 2030-01-01T00:00:01+00:00)', 'an inline activity between attempts: the next attempt and when'),
    ('v-child', 'child v-kid', 'a child wait as text'),
    ('v-dead', format('dead task %s (wf): non-determinism at step 1', pg_temp.tid('dead')), 'a workflow whose activation was parked: the dead task and why'),
    ('v-wfretry', 'retry of wf at 2030-01-01T00:00:01+00:00', 'a workflow body between attempts: when it runs again')
) as t (id, waiting_on, description);
select results_eq(
    $$select waiting_on, waits, error from workflows where id = 'v-failed'$$,
    $$values (null::text, '[]'::jsonb, 'nope')$$,
    'a failed workflow waits on nothing and shows its error'
);
select results_eq(
    $$select waiting_on, waits, error, completed_at from workflows where id = 'v-done'$$,
    $$values (null::text, '[]'::jsonb, null::text, '2030-01-01 00:00:00+00'::timestamptz)$$,
    'a completed workflow: no waits, no error, its completion time'
);
select is(
    (select expire_at from workflows where id = 'v-done'), '2030-01-08 00:00:00+00',
    '... and when its retention runs out (the default 7 days)'
);

-- The activity is claimed: running; then it fails and waits for its next attempt.
do $$
begin
    perform pg_temp.claim('charge', 't70-acts');
end
$$;
select is(
    pg_temp.waiting_on('v-activity'), 'activity charge (running)',
    'a remote activity a worker holds: running'
);
do $$
begin
    perform fail_task(pg_temp.tid('charge'), pg_temp.tok('charge'), '{"message": "boom"}');
end
$$;
select is(
    pg_temp.waiting_on('v-activity'), 'activity charge (retry 2 at 2030-01-01T00:00:01+00:00)',
    'a remote activity between attempts: the next attempt and when'
);
select is(
    (select waits -> 0 ->> 'error' from workflows where id = 'v-activity'), 'boom',
    '... with its last error'
);

-- A signal arrives: the wait is over (the workflow is woken, nothing left to wait on).
select is(
    (signal('approve', '1', 'v-signal') ->> 'status'), 'delivered', 'the signal is delivered'
);
select is(pg_temp.waiting_on('v-signal'), null, '... and the workflow waits on nothing now');

-- Age is measured on the engine clock.
set local "hotmesh.fake_now" = '2030-01-01 01:00:00+00';
select is(
    (select age from workflows where id = 'v-pending'), interval '1 hour',
    'age: time since the workflow started, on the engine clock'
);
select is(
    pg_temp.waiting_on('v-wfretry'), null,
    'a workflow retry that is due is no longer a wait (it is ready to run)'
);

-- ------------------------------------------------------------------ failed_workflows

select results_eq(
    $$select id, workflow_name, error_message, error_code, error_type, completed_at
        from failed_workflows where id like 'v-%'$$,
    $$values ('v-failed', 'wf', 'nope', 598, 'FatalError', '2030-01-01 00:00:00+00'::timestamptz)$$,
    'failed_workflows: only the failed one, with its error message, code and type'
);

-- ------------------------------------------------------------------ queue_backlog

set local "hotmesh.fake_now" = '2030-02-01 00:00:00+00';
do $$
begin
    perform start_workflow('wf', '[]', 't70-b', 'b-delayed');
    perform pg_temp.claim('b1', 't70-b');
    perform schedule_sleep(pg_temp.tid('b1'), pg_temp.tok('b1'), 1, 600);
    perform suspend_task(pg_temp.tid('b1'), pg_temp.tok('b1'));
    perform start_workflow('wf', '[]', 't70-b', 'b-dead');
    perform pg_temp.claim('b2', 't70-b');
    perform bury_task(pg_temp.tid('b2'), pg_temp.tok('b2'), '{"message": "stuck"}');
    perform start_workflow('wf', '[]', 't70-b', 'b-leased');
    perform pg_temp.claim('b3', 't70-b');
    perform start_workflow('wf', '[]', 't70-b', 'b-ready-1');
    perform start_workflow('wf', '[]', 't70-b', 'b-ready-2');
end
$$;
set local "hotmesh.fake_now" = '2030-02-01 00:00:10+00';
select results_eq(
    $$select task_queue, kind, ready, delayed, leased, lease_expired, dead, oldest_ready_age,
             next_run_at
        from queue_backlog where task_queue = 't70-b'$$,
    $$values ('t70-b', 'workflow', 2::bigint, 1::bigint, 1::bigint, 0::bigint, 1::bigint,
              interval '10 seconds', '2030-02-01 00:10:00+00'::timestamptz)$$,
    'queue_backlog: ready, delayed, leased, dead and the oldest ready task''s age'
);
set local "hotmesh.fake_now" = '2030-02-01 00:00:40+00';
select results_eq(
    $$select leased, lease_expired, oldest_ready_age from queue_backlog
       where task_queue = 't70-b'$$,
    $$values (1::bigint, 1::bigint, interval '40 seconds')$$,
    'a lease that ran out (30 s) counts as lease_expired'
);
select results_eq(
    $$select task_queue, kind, ready, delayed, leased from queue_backlog
       where task_queue in ('t70-acts', 't70-pending') order by task_queue$$,
    $$values ('t70-acts', 'activity', 1::bigint, 0::bigint, 0::bigint),
             ('t70-pending', 'workflow', 1::bigint, 0::bigint, 0::bigint)$$,
    'one row per queue and kind'
);

-- ------------------------------------------------------------------ workflow_history

set local "hotmesh.fake_now" = '2030-03-01 00:00:00+00';
do $$
begin
    perform start_workflow('hist', '["x"]', 't70-h', 'v-hist');
end
$$;
set local "hotmesh.fake_now" = '2030-03-01 00:00:01+00';
do $$
begin
    perform pg_temp.claim('h-main', 't70-h');
    perform record_step(
        pg_temp.tid('h-main'), pg_temp.tok('h-main'), 1, 'activity', 'a', '[]', '1', null, null
    );
    perform entity_step(pg_temp.tid('h-main'), pg_temp.tok('h-main'), 2, 'set', null, '{"x": 1}');
end
$$;
set local "hotmesh.fake_now" = '2030-03-01 00:00:02+00';
select lives_ok(
    $$select entity_merge('v-hist', '{"y": 2}')$$, 'a SQL caller changes the entity'
);
set local "hotmesh.fake_now" = '2030-03-01 00:00:03+00';
do $$
begin
    perform hook('v-hist', 'helper', '[]', 't70-h');
    perform pg_temp.claim('h-hook', 't70-h');
end
$$;
set local "hotmesh.fake_now" = '2030-03-01 00:00:04+00';
do $$
begin
    perform complete_task(pg_temp.tid('h-hook'), pg_temp.tok('h-hook'), '"hooked"');
end
$$;
set local "hotmesh.fake_now" = '2030-03-01 00:00:05+00';
do $$
begin
    perform complete_task(pg_temp.tid('h-main'), pg_temp.tok('h-main'), '"done"');
end
$$;

select results_eq(
    $$select at, thread, seq, kind, name, status, entity_version
        from workflow_history('v-hist')$$,
    $$values
        ('2030-03-01 00:00:00+00'::timestamptz, 'main', null::integer, 'workflow', 'hist',
         'started', null::bigint),
        ('2030-03-01 00:00:01+00', 'main', 1, 'activity', 'a', 'completed', null),
        ('2030-03-01 00:00:01+00', 'main', 2, 'entity', 'set', 'completed', 1),
        ('2030-03-01 00:00:02+00', 'sql', 1, 'entity', 'merge', 'completed', 2),
        ('2030-03-01 00:00:03+00', 'h1', null, 'thread', 'helper', 'started', null),
        ('2030-03-01 00:00:04+00', 'h1', null, 'thread', 'helper', 'completed', null),
        ('2030-03-01 00:00:05+00', 'main', null, 'workflow', 'hist', 'completed', null)$$,
    'workflow_history: start, every thread''s steps with entity versions, hook threads, end'
);
select results_eq(
    $$select input, output from workflow_history('v-hist') where kind = 'workflow'$$,
    $$values ('["x"]'::jsonb, null::jsonb), (null, '"done"')$$,
    'the start carries the args, the end the result'
);
select is(
    (select output from workflow_history('v-hist') where thread = 'h1' and status = 'completed'),
    '"hooked"'::jsonb,
    'a hook thread''s end carries its result'
);
select results_eq(
    $$select at, seq, status from workflow_history('v-failed')$$,
    $$values ('2030-01-01 00:00:00+00'::timestamptz, null::integer, 'started'),
             ('2030-01-01 00:00:00+00', null, 'failed')$$,
    'recorded in the same instant: the start comes before the end (stable order)'
);
select is(
    (select error ->> 'message' from workflow_history('v-failed') where status = 'failed'),
    'nope',
    'the end of a failed workflow carries its error'
);
select throws_ok(
    $$select * from workflow_history('no-such-workflow')$$,
    'HM002', 'workflow "no-such-workflow" not found',
    'workflow_history of an unknown id: HM002'
);

-- blocked_by: the transaction that holds a workflow's row (here this one, with its own pid;
-- every row here was written by this transaction, so none is free of it).
select is(
    (
        select array_agg(l.id order by l.id)
        from (select id from jobs where id in ('v-pending', 'v-failed') for no key update) as l
    ),
    array['v-failed', 'v-pending'],
    'this transaction takes the row lock an entity_merge takes'
);
select matches(
    (select blocked_by from workflows where id = 'v-pending'),
    format('^pid %s since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$', pg_backend_pid()),
    'blocked_by names the pid holding the row and when its transaction began'
);
select is(
    (select blocked_by from workflows where id = 'v-failed'),
    null,
    'blocked_by: a finished workflow is blocked by nobody, even when its row is held'
);

select * from finish();

rollback;
