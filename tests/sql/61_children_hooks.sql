-- Children, hooks, cancellation, search attributes and events: start_child (awaited or not,
-- replayed, a duplicate id recorded as a failed step), _settle_parent when a child completes,
-- fails or is cancelled; hook / start_hook (threads h1, h2, ..., bad input, finished targets)
-- and _end_thread handing a hook's result or error to its caller; cancel_workflow (410, tasks
-- removed, descend, finished workflows) and cancel_step; a claim drops tasks of finished
-- workflows; search_step operations and their failures; emit_step.
begin;
\ir _preamble.psql
\ir _fixtures.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(141);

create function pg_temp.child(
    p_key text, p_seq integer, p_name text, p_id text default null, p_await boolean default true,
    p_queue text default null, p_args jsonb default '[]', p_options jsonb default '{}'
) returns jsonb
language sql as $$
    select start_child(h.task_id, h.token, p_seq, p_name, p_args, p_queue, p_id, null,
                       p_options, p_await)
    from held as h where h.key = p_key
$$;

create function pg_temp.suspend(p_key text) returns timestamptz
language sql as $$
    select suspend_task(h.task_id, h.token) from held as h where h.key = p_key
$$;

create function pg_temp.complete(p_key text, p_result jsonb) returns void
language sql as $$
    select complete_task(h.task_id, h.token, p_result) from held as h where h.key = p_key
$$;

create function pg_temp.fail(p_key text, p_error jsonb) returns jsonb
language sql as $$
    select fail_task(h.task_id, h.token, p_error) from held as h where h.key = p_key
$$;

create function pg_temp.step(p_job text, p_seq integer, p_thread text default 'main')
returns jsonb
language sql as $$
    select jsonb_build_object('status', status, 'output', output, 'error', error)
    from steps where job_id = p_job and thread = p_thread and seq = p_seq
$$;

create function pg_temp.search(p_key text, p_seq integer, p_op text, p_args jsonb)
returns jsonb
language sql as $$
    select search_step(h.task_id, h.token, p_seq, p_op, p_args) - 'due' - 'attempt'
    from held as h where h.key = p_key
$$;

-- ================================================================== start_child

select lives_ok(
    $$select start_workflow('parent', '[]', 'q-p1', 'p1'), pg_temp.claim('p1', 'q-p1')$$,
    'setup: parent p1 claimed'
);
select is(
    pg_temp.child('p1', 1, 'kid', p_args => '[1]') - 'due',
    '{"seq": 1, "kind": "child", "name": "kid", "status": "scheduled", "output": null,
      "error": null, "attempt": 1}'::jsonb,
    'an awaited child: the step waits'
);
select results_eq(
    $$
    select id, workflow_name, task_queue, args, status, parent_id, parent_thread, parent_seq
    from jobs where parent_id = 'p1'
    $$,
    $$values ('p1-main-1', 'kid', 'q-p1', '[1]'::jsonb, 'pending', 'p1', 'main', 1)$$,
    '... the child: id <parent>-<thread>-<seq>, the parent''s queue, linked to the step'
);
select results_eq(
    $$select thread, kind, name, task_queue, state from tasks where job_id = 'p1-main-1'$$,
    $$values ('main', 'workflow', 'kid', 'q-p1', 'ready')$$,
    '... and its first activation is queued'
);
select is(
    pg_temp.child('p1', 1, 'kid', p_args => '[1]') ->> 'status', 'scheduled',
    'the same call again (a replay) returns the recorded step'
);
select is(
    (select count(*)::integer from jobs where parent_id = 'p1'), 1, '... and starts no child'
);
select throws_ok(
    $$select pg_temp.child('p1', 1, 'other')$$, 'HM006', null,
    'another child at a recorded position: HM006'
);
select is(
    pg_temp.child('p1', 2, 'kid', 'kid-2', false, 'q-kids') - 'due',
    '{"seq": 2, "kind": "child", "name": "kid", "status": "completed", "output": "kid-2",
      "error": null, "attempt": 1}'::jsonb,
    'a child not awaited: the step completes at once with the child''s id'
);
select results_eq(
    $$select task_queue, parent_id, parent_thread, parent_seq from jobs where id = 'kid-2'$$,
    $$values ('q-kids', 'p1', null::text, null::integer)$$,
    '... the child is linked to its parent (for cancellation) but to no step'
);
select is(
    pg_temp.child('p1', 3, 'kid', 'kid-2') -> 'error',
    '{"message": "Duplicate job: workflow id \"kid-2\" is already taken (status pending)",
      "type": "ChildWorkflowError", "code": 598, "sqlstate": "HM001"}'::jsonb,
    'a duplicate child id: the call fails (598, HM001) ...'
);
select is(pg_temp.step('p1', 3) ->> 'status', 'failed', '... recorded as a failed step');
select results_eq(
    $$select parent_seq, workflow_name from jobs where id = 'kid-2'$$,
    $$values (null::integer, 'kid')$$,
    '... the existing workflow is untouched'
);
select is(
    pg_temp.child('p1', 4, 'kid', p_options => '{"priority": "high"}') #>> '{error, sqlstate}',
    '22023', 'bad child options: a failed step (22023)'
);
select is(
    pg_temp.child('p1', 5, 'kid', p_args => '{"a": 1}') #>> '{error, sqlstate}',
    '22023', 'child args that are not an array: a failed step (22023)'
);
select is(
    (select count(*)::integer from jobs where parent_id = 'p1'), 2,
    '... neither started a child'
);
select lives_ok(
    $$select record_step(h.task_id, h.token, 6, 'activity', 'a', '[]', '1')
      from held as h where h.key = 'p1'$$,
    '... and the activation goes on (its lease is intact)'
);

-- ------------------------------------------------------------------ _settle_parent

select is(pg_temp.suspend('p1'), null, 'setup: p1 suspends (nothing timed)');
set local "hotmesh.fake_now" = '2020-01-01 00:00:01+00';
select is(pg_temp.claim('c1', 'q-p1'), 'p1-main-1/main', 'setup: the child is claimed');
select lives_ok($$select pg_temp.complete('c1', '{"kid": "done"}')$$, 'the child completes');
select is(
    pg_temp.step('p1', 1),
    '{"status": "completed", "output": {"kid": "done"}, "error": null}'::jsonb,
    '... the parent''s step has its result'
);
select results_eq(
    $$select thread, state, run_at from tasks where job_id = 'p1'$$,
    $$values ('main', 'ready', '2020-01-01 00:00:01+00'::timestamptz)$$,
    '... and the parent is woken'
);
select lives_ok(
    $$select pg_temp.claim('k2', 'q-kids'), pg_temp.complete('k2', '"kid-2 done"')$$,
    'the child that was not awaited completes'
);
select is(
    pg_temp.step('p1', 2) -> 'output', '"kid-2"'::jsonb, '... and changes no step of the parent'
);

-- A child that fails for good: the parent's step fails with the child's error and code.
select lives_ok(
    $$select start_workflow('parent', '[]', 'q-p2', 'p2'), pg_temp.claim('p2', 'q-p2'),
             pg_temp.child('p2', 1, 'kid', p_queue => 'q-c2',
                           p_options => '{"retry_policy": {"maximum_attempts": 1}}'),
             pg_temp.suspend('p2'), pg_temp.claim('c2', 'q-c2')$$,
    'setup: p2 awaits child p2-main-1 (1 attempt), which is claimed'
);
select is(
    pg_temp.fail('c2', '{"message": "boom", "type": "ValueError", "code": 599}') ->> 'status',
    'failed', 'the child fails for good'
);
select is(
    pg_temp.step('p2', 1),
    '{"status": "failed", "output": null,
      "error": {"message": "boom", "type": "ValueError", "code": 597, "attempts": 1}}'::jsonb,
    '... the parent''s step fails with the child''s error and code (597)'
);
select is(
    (select state from tasks where job_id = 'p2'), 'ready', '... and the parent is woken'
);

-- A child that is cancelled: the parent's step fails with 410.
select lives_ok(
    $$select start_workflow('parent', '[]', 'q-p3', 'p3'), pg_temp.claim('p3', 'q-p3'),
             pg_temp.child('p3', 1, 'kid', p_queue => 'q-c3'), pg_temp.suspend('p3')$$,
    'setup: p3 awaits child p3-main-1'
);
select is(cancel_workflow('p3-main-1', 'not needed'), '{p3-main-1}', 'the child is cancelled');
select is(
    pg_temp.step('p3', 1),
    '{"status": "failed", "output": null,
      "error": {"message": "not needed", "type": "CancelledFailure", "code": 410,
                "workflow_id": "p3-main-1"}}'::jsonb,
    '... the parent''s step fails with 410'
);
select is((select state from tasks where job_id = 'p3'), 'ready', '... and the parent is woken');

-- ================================================================== cancel_workflow

select throws_ok(
    $$select cancel_workflow('nobody')$$, 'HM002', 'workflow "nobody" not found',
    'cancelling an unknown workflow: HM002'
);

-- A tree: cx awaits cx-main-1 (which runs an activity and started gc), started cx-kid, has
-- a hook thread, an activity and a child that already finished.
set local "hotmesh.fake_now" = '2020-01-01 00:01:00+00';
select lives_ok(
    $$select start_workflow('root', '[]', 'q-cx', 'cx'), pg_temp.claim('cx', 'q-cx'),
             pg_temp.child('cx', 1, 'kid', p_queue => 'q-cx-kids')$$,
    'setup: cx starts cx-main-1'
);
set local "hotmesh.fake_now" = '2020-01-01 00:01:01+00';
select lives_ok(
    $$select pg_temp.child('cx', 2, 'kid', 'cx-kid', false, 'q-cx-other'),
             pg_temp.child('cx', 3, 'kid', 'cx-done', false, 'q-cx-done'),
             schedule_activity(h.task_id, h.token, 4, 'work', '[]', 'q-acts'),
             pg_temp.suspend('cx'),
             hook('cx', 'side', '[]')
      from held as h where h.key = 'cx'$$,
    'setup: cx starts cx-kid and cx-done, schedules an activity, suspends, gets a hook'
);
select lives_ok(
    $$select pg_temp.claim('done', 'q-cx-done'), pg_temp.complete('done', '1')$$,
    'setup: cx-done completes'
);
set local "hotmesh.fake_now" = '2020-01-01 00:01:02+00';
select is(pg_temp.claim('cxk', 'q-cx-kids'), 'cx-main-1/main', 'setup: cx-main-1 claimed');
select lives_ok(
    $$select pg_temp.child('cxk', 1, 'grandkid', 'gc', false, 'q-gc'),
             schedule_activity(h.task_id, h.token, 2, 'work', '[]', 'q-acts'),
             pg_temp.suspend('cxk')
      from held as h where h.key = 'cxk'$$,
    'setup: cx-main-1 starts gc and schedules an activity'
);
-- A worker runs cx's activity right now.
select is(pg_temp.claim('act', 'q-acts'), 'cx/main', 'setup: cx''s activity is running');
select is(
    (
        select count(*)::integer from tasks
        where job_id in ('cx', 'cx-main-1', 'cx-kid', 'gc')
    ),
    5, 'setup: the tree has 5 tasks (two activities, two activations, the hook)'
);

set local "hotmesh.fake_now" = '2020-01-01 00:01:03+00';
select is(
    cancel_workflow('cx', 'shutdown'), '{cx, cx-main-1, gc, cx-kid}',
    'cancel_workflow returns every workflow it cancelled, depth first'
);
select results_eq(
    $$
    select id, status, error, completed_at from jobs
    where id in ('cx', 'cx-main-1', 'gc', 'cx-kid') order by id
    $$,
    $$
    values
        ('cx', 'cancelled', '{"message": "shutdown", "type": "CancelledFailure", "code": 410,
                              "workflow_id": "cx"}'::jsonb,
         '2020-01-01 00:01:03+00'::timestamptz),
        ('cx-kid', 'cancelled', '{"message": "shutdown", "type": "CancelledFailure",
                                  "code": 410, "workflow_id": "cx-kid"}'::jsonb,
         '2020-01-01 00:01:03+00'::timestamptz),
        ('cx-main-1', 'cancelled', '{"message": "shutdown", "type": "CancelledFailure",
                                     "code": 410, "workflow_id": "cx-main-1"}'::jsonb,
         '2020-01-01 00:01:03+00'::timestamptz),
        ('gc', 'cancelled', '{"message": "shutdown", "type": "CancelledFailure", "code": 410,
                              "workflow_id": "gc"}'::jsonb,
         '2020-01-01 00:01:03+00'::timestamptz)
    $$,
    'the workflow and all its descendants are cancelled with code 410'
);
select is(
    (select count(*)::integer from tasks where job_id in ('cx', 'cx-main-1', 'cx-kid', 'gc')),
    0, 'no task of any of them is left'
);
select is((select status from jobs where id = 'cx-done'), 'completed', 'a finished child stays');
select
    throws_ok(
        format($$select complete_task(%s, %L, '"late"')$$, h.task_id, h.token),
        'HM005', null,
        'the activity that was running cannot record its result'
    )
from held as h where h.key = 'act';
select is(
    (select status from steps where job_id = 'cx' and seq = 4), 'scheduled',
    '... its step stays as it was'
);
select throws_ok(
    $$select cancel_workflow('cx')$$, 'HM003',
    'workflow "cx" is cancelled; it cannot be cancelled',
    'cancelling a finished workflow: HM003'
);
select is(
    cancel_workflow('cx-done', null, true, true), '{}',
    '... unless finished ones are ignored: nothing cancelled'
);
select is((select status from jobs where id = 'cx-done'), 'completed', '... and nothing changed');

-- A task a finished workflow got late (a call recorded while it was being cancelled) never
-- runs: the claim drops it.
insert into tasks (job_id, thread, kind, seq, name, task_queue, run_at)
values ('cx', 'main', 'activity', 9, 'late', 'q-zombie', _now());
select is(
    (select count(*)::integer from claim_tasks(array['q-zombie'], 'tester', 5)), 0,
    'a task of a cancelled workflow is not handed out'
);
select is(
    (select count(*)::integer from tasks where task_queue = 'q-zombie'), 0, '... it is deleted'
);

-- Without descend only the workflow itself is cancelled.
select lives_ok(
    $$select start_workflow('root', '[]', 'q-nd', 'nd'), pg_temp.claim('nd', 'q-nd'),
             pg_temp.child('nd', 1, 'kid', p_queue => 'q-nd-kids')$$,
    'setup: nd awaits nd-main-1'
);
select is(cancel_workflow('nd', null, false), '{nd}', 'cancel without descend');
select results_eq(
    $$select id, status, error ->> 'message' from jobs where id like 'nd%' order by id$$,
    $$values ('nd', 'cancelled', 'workflow "nd" cancelled'), ('nd-main-1', 'pending', null)$$,
    '... the child runs on; the default reason names the workflow'
);
select throws_ok(
    $$select pg_temp.child('nd', 2, 'kid')$$, 'HM005', null,
    'the cancelled workflow''s running activation has lost its task'
);

-- cancel_step: a workflow cancels another, once.
select lives_ok(
    $$select start_workflow('w', '[]', 'q-cs', 'cs'), pg_temp.claim('cs', 'q-cs')$$,
    'setup: cs claimed'
);
select is(
    (
        select cancel_step(h.task_id, h.token, 1, 'nd-main-1', 'by cs', true) -> 'output'
        from held as h where h.key = 'cs'
    ),
    '["nd-main-1"]'::jsonb,
    'cancel_step cancels the other workflow and records the ids'
);
select is(
    (
        select cancel_step(h.task_id, h.token, 1, 'nd-main-1', 'by cs', true) -> 'output'
        from held as h where h.key = 'cs'
    ),
    '["nd-main-1"]'::jsonb,
    'the same call again returns the recorded step (no HM003)'
);
select is(
    (
        select cancel_step(h.task_id, h.token, 2, 'nobody', null, true) -> 'error'
        from held as h where h.key = 'cs'
    ),
    '{"message": "workflow \"nobody\" not found", "type": "CancelError", "code": 598,
      "sqlstate": "HM002"}'::jsonb,
    'cancelling an unknown workflow fails the call, not the activation'
);
select is(
    (
        select cancel_step(h.task_id, h.token, 3, 'nd', null, true) #>> '{error, sqlstate}'
        from held as h where h.key = 'cs'
    ),
    'HM003', 'cancelling a finished one too'
);

-- ================================================================== hooks

select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select hook('cs', '')$$, '22023', 'hook workflow_name is required', 'a hook without a function: 22023'),
    ($$select hook('cs', 'fa', '{"a": 1}')$$, '22023', 'args of hook "fa" must be a JSON array, not object', 'hook args that are not an array: 22023'),
    ($$select hook('nobody', 'fa')$$, 'HM002', 'hook "fa": workflow "nobody" not found', 'a hook into an unknown workflow: HM002'),
    ($$select hook('cx', 'fa')$$, 'HM003', 'hook "fa": workflow "cx" is cancelled and takes no more hooks', 'a hook into a finished workflow: HM003')
) as t (call, sqlstate, message, description);
select is(
    (select count(*)::integer from threads where job_id in ('cs', 'nobody', 'cx')), 1,
    '... none of them started a thread (cx has its one hook from before)'
);

-- hw: its main thread starts hook fc and waits for its signal; more hooks come from outside.
set local "hotmesh.fake_now" = '2020-01-01 00:02:00+00';
select lives_ok(
    $$select start_workflow('w', '[]', 'q-hw', 'hw', null,
                            '{"retry_policy": {"maximum_attempts": 2, "initial_interval": 1}}'),
             pg_temp.claim('hw', 'q-hw')$$,
    'setup: hw claimed (2 attempts)'
);
select is(
    (
        select start_hook(h.task_id, h.token, 1, 'fc', '[3]', null, null, 'sig-c') - 'due'
        from held as h where h.key = 'hw'
    ),
    '{"seq": 1, "kind": "hook", "name": "fc", "status": "completed",
      "output": {"workflow_id": "hw", "thread": "h1"}, "error": null, "attempt": 1}'::jsonb,
    'start_hook starts thread h1 and records it'
);
select is(
    (
        select start_hook(h.task_id, h.token, 1, 'fc', '[3]', null, null, 'sig-c') -> 'output'
        from held as h where h.key = 'hw'
    ),
    '{"workflow_id": "hw", "thread": "h1"}'::jsonb,
    'the same call again returns the recorded step ...'
);
select is(
    (select count(*)::integer from threads where job_id = 'hw'), 1, '... and starts no thread'
);
select is(
    (
        select start_hook(h.task_id, h.token, 2, 'fc', '[]', null, 'cx', null) -> 'error'
        from held as h where h.key = 'hw'
    ),
    '{"message": "hook \"fc\": workflow \"cx\" is cancelled and takes no more hooks",
      "type": "HookError", "code": 598, "sqlstate": "HM003"}'::jsonb,
    'a hook into a finished workflow fails the call, not the activation'
);
select is(
    (
        select wait_signal(h.task_id, h.token, 3, 'sig-c', null) ->> 'status'
        from held as h where h.key = 'hw'
    ),
    'scheduled', 'setup: hw waits for sig-c'
);
select is(pg_temp.suspend('hw'), null, 'setup: hw suspends');
select is(hook('hw', 'fb', '[2]', 'q-fb', 'sig-b'), 'h2', 'a hook from outside: thread h2');
select is(hook('hw', 'fd', '[]', 'q-fd', 'sig-d'), 'h3', '... the next one h3');
select results_eq(
    $$
    select thread, name, task_queue, args, status, attempt, signal_id from threads
    where job_id = 'hw' order by thread
    $$,
    $$
    values ('h1', 'fc', 'q-hw', '[3]'::jsonb, 'running', 1, 'sig-c'),
           ('h2', 'fb', 'q-fb', '[2]'::jsonb, 'running', 1, 'sig-b'),
           ('h3', 'fd', 'q-fd', '[]'::jsonb, 'running', 1, 'sig-d')
    $$,
    'the threads: function, queue (default the caller''s), args, signal'
);
select results_eq(
    $$select thread, kind, name, task_queue, state from tasks where job_id = 'hw' order by thread$$,
    $$values ('h1', 'workflow', 'fc', 'q-hw', 'ready'), ('h2', 'workflow', 'fb', 'q-fb', 'ready'),
             ('h3', 'workflow', 'fd', 'q-fd', 'ready')$$,
    '... each has its activation queued'
);

-- _end_thread: h1 returns; its caller's wait gets the result.
select results_eq(
    $$
    select c.job_id, c.thread, c.name, c.args, c.steps
    from claim_tasks(array['q-hw'], 'tester', 1) as c
    $$,
    $$values ('hw', 'h1', 'fc', '[3]'::jsonb, null::jsonb)$$,
    'a hook''s activation: its thread, its function, its args, its own (empty) history'
);
select is((select status from jobs where id = 'hw'), 'waiting', '... the workflow stays waiting');
insert into held (key, job_id, thread, task_id, token)
select
    'h1' as key,
    job_id,
    thread,
    id,
    lease_token
from tasks where job_id = 'hw' and thread = 'h1';
select lives_ok($$select pg_temp.complete('h1', '"fc result"')$$, 'h1 returns');
select results_eq(
    $$select status, result, error from threads where job_id = 'hw' and thread = 'h1'$$,
    $$values ('completed', '"fc result"'::jsonb, null::jsonb)$$,
    '... its thread is completed'
);
select is(
    pg_temp.step('hw', 3),
    '{"status": "completed", "output": "fc result", "error": null}'::jsonb,
    '... and the caller''s wait has its return value'
);
select results_eq(
    $$select thread, state from tasks where job_id = 'hw' and thread in ('main', 'h1')$$,
    $$values ('main', 'ready')$$,
    '... the caller is woken, the hook''s task is gone'
);

-- h2 signals sig-b itself: its return value is not delivered too.
select is(pg_temp.claim('hw', 'q-hw'), 'hw/main', 'setup: hw claimed');
select is(
    (
        select wait_signal(h.task_id, h.token, 4, 'sig-b', null) ->> 'status'
        from held as h where h.key = 'hw'
    ),
    'scheduled', 'setup: hw waits for sig-b'
);
select is(pg_temp.suspend('hw'), null, 'setup: hw suspends');
select is(pg_temp.claim('h2', 'q-fb'), 'hw/h2', 'setup: h2 claimed');
select is(
    (
        select send_signal(h.task_id, h.token, 1, 'sig-b', '"from h2"') #>> '{output, thread}'
        from held as h where h.key = 'h2'
    ),
    'main', 'h2 signals sig-b: delivered to its workflow''s main thread'
);
select lives_ok($$select pg_temp.complete('h2', '"h2 return"')$$, 'h2 returns');
select is(pg_temp.step('hw', 4) -> 'output', '"from h2"'::jsonb, '... the wait has the signal');
select is(
    (select count(*)::integer from signals where signal_id = 'sig-b'), 0,
    '... and the return value was not sent as a second sig-b'
);

-- h3 fails: retried under the workflow's policy, then its error reaches the caller (kept
-- until the caller waits).
select is(pg_temp.claim('h3', 'q-fd'), 'hw/h3', 'setup: h3 claimed');
select is(
    pg_temp.fail('h3', '{"message": "nope", "type": "KeyError", "code": 599}'),
    '{"status": "retrying", "run_at": "2020-01-01T00:02:01+00:00"}'::jsonb,
    'a failing hook is retried under the workflow''s policy'
);
select results_eq(
    $$select t.state, t.run_at, th.attempt, j.status, j.attempt
      from tasks as t
      inner join threads as th on t.job_id = th.job_id and t.thread = th.thread
      inner join jobs as j on t.job_id = j.id
      where t.job_id = 'hw' and t.thread = 'h3'$$,
    $$values ('ready', '2020-01-01 00:02:01+00'::timestamptz, 2, 'waiting', 1)$$,
    '... its thread counts the attempt; the workflow''s own attempt and status do not move'
);
set local "hotmesh.fake_now" = '2020-01-01 00:02:01+00';
select is(pg_temp.claim('h3', 'q-fd'), 'hw/h3', 'h3 claimed again');
select is(
    pg_temp.fail('h3', '{"message": "nope", "type": "KeyError", "code": 599}') ->> 'status',
    'failed', '... fails for good'
);
select results_eq(
    $$select status, error from threads where job_id = 'hw' and thread = 'h3'$$,
    $$values ('failed', '{"message": "nope", "type": "KeyError", "code": 597,
                         "attempts": 2}'::jsonb)$$,
    '... its thread is failed (597)'
);
select results_eq(
    $$select signal_id, job_id, payload, error from signals$$,
    $$values ('sig-d', 'hw', null::jsonb, '{"message": "nope", "type": "KeyError", "code": 597,
                                          "attempts": 2}'::jsonb)$$,
    '... its error is kept for the caller as sig-d'
);
select is(pg_temp.claim('hw', 'q-hw'), 'hw/main', 'setup: hw claimed');
select is(
    (
        select wait_signal(h.task_id, h.token, 5, 'sig-d', null) - 'due' - 'seq'
        from held as h where h.key = 'hw'
    ),
    '{"kind": "signal", "name": "sig-d", "status": "failed", "output": null, "attempt": 1,
      "error": {"message": "nope", "type": "KeyError", "code": 597, "attempts": 2}}'::jsonb,
    'the caller''s wait takes it: the wait fails with the hook''s error'
);

-- A hook thread waits for a signal: the signal wakes that thread.
select is(hook('hw', 'fe', '[]', 'q-fe'), 'h4', 'setup: hook h4');
select is(pg_temp.claim('h4', 'q-fe'), 'hw/h4', 'setup: h4 claimed');
select is(
    (
        select wait_signal(h.task_id, h.token, 1, 'to-h4', null) ->> 'status'
        from held as h where h.key = 'h4'
    ),
    'scheduled', 'setup: h4 waits for to-h4'
);
select is(pg_temp.suspend('h4'), null, 'setup: h4 suspends');
select is(
    signal('to-h4', '"hi"', 'hw') - 'seq',
    '{"status": "delivered", "workflow_id": "hw", "thread": "h4"}'::jsonb,
    'a signal for a hook''s wait is delivered to that thread'
);
select results_eq(
    $$select name, task_queue, state from tasks where job_id = 'hw' and thread = 'h4'$$,
    $$values ('fe', 'q-fe', 'ready')$$,
    '... and wakes it with its own function and queue'
);

-- The workflow completes while h4 runs: its hook tasks go, no more hooks.
select is(pg_temp.claim('h4', 'q-fe'), 'hw/h4', 'setup: h4 claimed');
select lives_ok($$select pg_temp.complete('hw', '"hw done"')$$, 'hw completes while h4 runs');
select is((select count(*)::integer from tasks where job_id = 'hw'), 0, '... no task is left');
select throws_ok(
    $$select pg_temp.complete('h4', '"late"')$$, 'HM005', null,
    '... h4 cannot finish afterwards'
);
select throws_ok(
    $$select hook('hw', 'fa')$$, 'HM003', null, 'a hook into the completed workflow: HM003'
);

-- ================================================================== search attributes

select lives_ok(
    $$select start_workflow('w', '[]', 'q-sa', 'sa'), pg_temp.claim('sa', 'q-sa')$$,
    'setup: sa claimed'
);
select is(
    pg_temp.search('sa', 1, 'set', '{"region": "eu", "score": 1, "tier": "gold"}'),
    '{"seq": 1, "kind": "search", "name": "set", "status": "completed", "output": 3,
      "error": null}'::jsonb,
    'set: the number of fields set'
);
select is(
    (select search from jobs where id = 'sa'),
    '{"region": "eu", "score": 1, "tier": "gold"}'::jsonb,
    '... stored in jobs.search'
);
-- One search operation a row, in this order: the part of its step that says what it did.
select is(pg_temp.search('sa', t.seq, t.op, t.args::jsonb) #> t.path, t.expected::jsonb, t.description)
from (
    values
    (2, 'get', '["region"]', '{output}'::text[], '"eu"', 'get'),
    (3, 'get', '["missing"]', '{output}', 'null', 'get of a missing field: null'),
    (4, 'mget', '["region", "missing", "score"]', '{output}', '["eu", null, 1]', 'mget: values in order'),
    (5, 'incr', '["score", 2.5]', '{output}', '3.5', 'incr: the new value'),
    (5, 'incr', '["score", 2.5]', '{output}', '3.5', 'the same incr again (a replay) returns the recorded value ...')
) as t (seq, op, args, path, expected, description);
select is(
    (select search -> 'score' from jobs where id = 'sa'), '3.5'::jsonb, '... and adds nothing'
);
select is(pg_temp.search('sa', t.seq, t.op, t.args::jsonb) #> t.path, t.expected::jsonb, t.description)
from (
    values
    (6, 'incr', '["n", 1]', '{output}'::text[], '1', 'incr of a missing field starts from 0'),
    (7, 'mult', '["score", 2]', '{output}', '7.0', 'mult: the new value (stored as is, not as a logarithm)'),
    (8, 'mult', '["m", 3]', '{output}', '3', 'mult of a missing field starts from 1'),
    (9, 'del', '["m", "nope"]', '{output}', '1', 'del: the number of fields that existed')
) as t (seq, op, args, path, expected, description);
select is(
    (select search from jobs where id = 'sa'),
    '{"region": "eu", "score": 7.0, "tier": "gold", "n": 1}'::jsonb,
    'the attributes after these operations'
);
select is(pg_temp.search('sa', t.seq, t.op, t.args::jsonb) #> t.path, t.expected::jsonb, t.description)
from (
    values
    (
        10, 'incr', '["region", 1]', '{error}'::text[],
        '{"message": "search incr \"region\": needs numbers, found string and number",
          "type": "SearchError", "code": 598, "sqlstate": "HM008"}',
        'incr of a string: a failed step (HM008)'
    ),
    (11, 'incr', '["score"]', '{error, sqlstate}', '"HM008"', 'incr without an amount: a failed step (HM008)'),
    (12, 'set', '["region", "us"]', '{error, sqlstate}', '"22023"', 'set of an array: a failed step (22023)'),
    (13, 'get', '[]', '{error, sqlstate}', '"22023"', 'get without a key: a failed step (22023)'),
    (14, 'mget', '{"a": 1}', '{error, sqlstate}', '"22023"', 'mget of an object: a failed step (22023)'),
    (15, 'set', '{"big": 1e300}', '{status}', '"completed"', 'setup: a large number'),
    (16, 'mult', '["big", 1e300]', '{error, sqlstate}', '"22023"', 'a product beyond the range of a double (README: Limits): a failed step (22023)')
) as t (seq, op, args, path, expected, description);
select is(
    (select search - 'big' from jobs where id = 'sa'),
    '{"region": "eu", "score": 7.0, "tier": "gold", "n": 1}'::jsonb,
    'the failed operations changed nothing'
);
select results_eq(
    $$select seq, status from steps where job_id = 'sa' and seq >= 10 order by seq$$,
    $$values (10, 'failed'), (11, 'failed'), (12, 'failed'), (13, 'failed'), (14, 'failed'),
             (15, 'completed'), (16, 'failed')$$,
    '... each is one recorded step'
);
select throws_ok(
    $$select pg_temp.search('sa', 17, 'hset', '[]')$$, '22023',
    'unknown search operation "hset" (set, get, mget, del, incr, mult)',
    'an unknown operation: 22023, nothing recorded'
);
select is(
    (select array_agg(id order by id) from jobs where search @> '{"region": "eu"}'),
    '{sa}', 'SQL filters on search attributes with @>'
);
select is(
    (select indexdef from pg_indexes where schemaname = :'app' and indexname = 'jobs_search'),
    format('CREATE INDEX jobs_search ON %s.jobs USING gin (search jsonb_path_ops)', :'app'),
    '... served by a GIN index'
);

-- ================================================================== emit_step

select is(
    (
        select emit_step(h.task_id, h.token, 20, '{"progress": {"pct": 50}}') - 'due'
        from held as h where h.key = 'sa'
    ),
    '{"seq": 20, "kind": "emit", "name": "", "status": "completed", "output": true,
      "error": null, "attempt": 1}'::jsonb,
    'emit_step records a completed step'
);
select is(
    (select input from steps where job_id = 'sa' and seq = 20),
    '{"progress": {"pct": 50}}'::jsonb, '... with the events'
);
select is(
    (
        select emit_step(h.task_id, h.token, 20, '{"progress": {"pct": 50}}') ->> 'status'
        from held as h where h.key = 'sa'
    ),
    'completed', 'the same emit again returns the recorded step'
);
select
    throws_ok(
        format($$select emit_step(%s, %L, 21, '[1]')$$, h.task_id, h.token),
        '22023', 'emit takes an object of {topic: data}', 'emit of a non-object: 22023'
    )
from held as h where h.key = 'sa';
select
    throws_ok(
        format(
            $$select emit_step(%s, %L, 21, jsonb_build_object('big', repeat('x', 8000)))$$,
            h.task_id, h.token
        ),
        '22023', 'event "big" is too large for NOTIFY (keep it under 7800 bytes)',
        'an event too large for NOTIFY: 22023'
    )
from held as h where h.key = 'sa';
select is(
    (select count(*)::integer from steps where job_id = 'sa' and seq = 21), 0,
    '... neither was recorded'
);

select * from finish();
rollback;
