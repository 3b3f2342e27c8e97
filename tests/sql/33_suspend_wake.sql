-- suspend_task: the activation's task is deleted when nothing it awaits has a time, kept ready
-- at the earliest timer or retry otherwise, or at once when something arrived while it ran.
-- _wake: creates the activation, flags a leased one to run again, pulls a ready one forward;
-- a wake-up that arrives during an activation is never lost.
begin;
\ir _preamble.psql
\ir _fixtures.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(40);

-- ------------------------------------------------------------------ suspend: nothing timed

create temp table remote on commit drop as
select * from pg_temp.start_claimed('t33-q', 'sw-remote');
do $$
begin
    perform schedule_activity(r.task_id, r.lease_token, 1, 'a', '[]', 't33-acts') from remote as r;
    -- A zero-second sleep is completed at once; its wake_at (now) must not count.
    perform schedule_sleep(r.task_id, r.lease_token, 2, 0) from remote as r;
end
$$;

set local "hotmesh.fake_now" = '2020-01-01 00:00:01+00';
select
    is(
        suspend_task(r.task_id, r.lease_token), null,
        'awaiting only a remote activity: suspend_task returns null (no time to run again)'
    )
from remote as r;
select is(
    (select count(*)::integer from tasks where job_id = 'sw-remote' and kind = 'workflow'), 0,
    'the activation''s task is deleted'
);
select results_eq(
    $$select status, updated_at from jobs where id = 'sw-remote'$$,
    $$values ('waiting', '2020-01-01 00:00:01+00'::timestamptz)$$,
    'the workflow is waiting'
);
select
    throws_ok(
        format($$select suspend_task(%s, %L)$$, r.task_id, r.lease_token),
        'HM005',
        format('task %s not found: it finished, was cancelled or never existed', r.task_id),
        'a suspended activation cannot suspend again'
    )
from remote as r;

-- An activity cannot suspend.
create temp table activity on commit drop as
select * from claim_tasks(array['t33-acts'], 'worker-1', 1);
select
    throws_ok(
        format($$select suspend_task(%s, %L)$$, a.task_id, a.lease_token),
        'HM003',
        format('task %s is an activity; only a workflow activation can suspend', a.task_id),
        'suspend_task of an activity: HM003'
    )
from activity as a;
select is(
    (select t.state from tasks as t inner join activity as a on t.id = a.task_id), 'leased',
    '... and the activity is still leased'
);

-- ------------------------------------------------------------------ suspend: timers, retries

set local "hotmesh.fake_now" = '2020-01-01 00:01:00+00';
create temp table timers on commit drop as
select * from pg_temp.start_claimed('t33-timers', 'sw-timers');
do $$
begin
    perform schedule_sleep(t.task_id, t.lease_token, 1, 60) from timers as t;
    perform schedule_sleep(t.task_id, t.lease_token, 2, 30) from timers as t;
    perform schedule_activity(t.task_id, t.lease_token, 3, 'a', '[]', 't33-acts') from timers as t;
end
$$;
select
    is(
        suspend_task(t.task_id, t.lease_token), '2020-01-01 00:01:30+00'::timestamptz,
        'awaiting two timers (60 s, 30 s) and an activity: runs again at the earliest timer'
    )
from timers as t;
select results_eq(
    $$
    select state, run_at, lease_owner, lease_token, lease_expires_at, rerun
    from tasks where job_id = 'sw-timers' and kind = 'workflow'
    $$,
    $$
    values (
        'ready', '2020-01-01 00:01:30+00'::timestamptz, null::text, null::uuid,
        null::timestamptz, false
    )
    $$,
    'the activation''s task stays, ready at that time, unleased'
);
select is((select status from jobs where id = 'sw-timers'), 'waiting', 'the workflow is waiting');

set local "hotmesh.fake_now" = '2020-01-01 00:02:00+00';
create temp table retrying on commit drop as
select * from pg_temp.start_claimed('t33-retry', 'sw-retry');
do $$
begin
    perform schedule_sleep(r.task_id, r.lease_token, 1, 60) from retrying as r;
    perform record_step(
        r.task_id, r.lease_token, 2, 'activity', 'flaky', '[]', null, '{"message": "boom"}',
        '{"initial_interval": 10}'
    )
    from retrying as r;
end
$$;
select
    is(
        suspend_task(r.task_id, r.lease_token), '2020-01-01 00:02:10+00'::timestamptz,
        'an inline activity retrying in 10 s comes before a 60 s timer'
    )
from retrying as r;
select results_eq(
    $$select state, run_at from tasks where job_id = 'sw-retry'$$,
    $$values ('ready', '2020-01-01 00:02:10+00'::timestamptz)$$,
    'the activation runs again when the retry is due'
);

-- A due timer that was scheduled during the activation: run again at once (its time passed).
set local "hotmesh.fake_now" = '2020-01-01 00:03:00+00';
create temp table past on commit drop as
select * from pg_temp.start_claimed('t33-past', 'sw-past');
do $$
begin
    perform schedule_sleep(p.task_id, p.lease_token, 1, 2) from past as p;
end
$$;
set local "hotmesh.fake_now" = '2020-01-01 00:03:05+00';
select
    is(
        suspend_task(p.task_id, p.lease_token), '2020-01-01 00:03:02+00'::timestamptz,
        'a timer that became due while the activation ran: ready at its (past) time'
    )
from past as p;
select results_eq(
    $$select job_id from claim_tasks(array['t33-past'], 'worker-1', 1)$$,
    $$values ('sw-past')$$,
    '... so it is claimable at once'
);

-- ------------------------------------------------------------------ _wake

set local "hotmesh.fake_now" = '2020-01-01 00:10:00+00';
do $$
begin
    perform start_workflow('w2', '[]', 't33-wake', 'sw-wake', null, '{"priority": 7}');
    delete from tasks where job_id = 'sw-wake';
    update jobs set status = 'waiting' where id = 'sw-wake';
end
$$;
set local "hotmesh.fake_now" = '2020-01-01 00:10:01+00';
select _wake('sw-wake', 'main');
select results_eq(
    $$
    select thread, kind, seq, name, task_queue, state, priority, run_at, attempt, rerun
    from tasks where job_id = 'sw-wake'
    $$,
    $$
    values (
        'main', 'workflow', null::integer, 'w2', 't33-wake', 'ready', 7::smallint,
        '2020-01-01 00:10:01+00'::timestamptz, 0, false
    )
    $$,
    '_wake creates the activation: ready now, on the workflow''s queue, with its priority'
);
select _wake('sw-wake', 'main');
select is(
    (select count(*)::integer from tasks where job_id = 'sw-wake'), 1,
    'a second _wake does not create a second activation'
);
set local "hotmesh.fake_now" = '2020-01-01 00:10:05+00';
select _wake('sw-wake', 'main');
select is(
    (select run_at from tasks where job_id = 'sw-wake'), '2020-01-01 00:10:01+00'::timestamptz,
    '_wake keeps an already due run_at (it does not push the task back)'
);
select pg_temp.wake_hook('sw-wake', 't33-wake');
select results_eq(
    $$select thread, state from tasks where job_id = 'sw-wake' order by thread$$,
    $$values ('h1', 'ready'), ('main', 'ready')$$,
    'another thread gets its own activation'
);

-- A ready activation waiting for a timer is pulled forward.
do $$
begin
    update tasks set run_at = '2020-01-01 01:00:00+00' where job_id = 'sw-wake';
    perform _wake('sw-wake', 'main');
end
$$;
select results_eq(
    $$select thread, run_at from tasks where job_id = 'sw-wake' order by thread$$,
    $$values ('h1', '2020-01-01 01:00:00+00'::timestamptz),
             ('main', '2020-01-01 00:10:05+00'::timestamptz)$$,
    '_wake pulls a ready activation due later forward to now (that thread only)'
);

-- A leased activation is flagged to run again; its lease is untouched.
create temp table woken on commit drop as
select * from claim_tasks(array['t33-wake'], 'worker-1', 1, interval '30 seconds');
select results_eq(
    'select job_id, thread from woken',
    $$values ('sw-wake', 'main')$$,
    'the activation is claimed'
);
select _wake('sw-wake', 'main');
select results_eq(
    $$
    select t.state, t.rerun, t.lease_token, t.run_at
    from tasks as t inner join woken as w on t.id = w.task_id
    $$,
    $$select 'leased', true, lease_token, '2020-01-01 00:10:35+00'::timestamptz from woken$$,
    '_wake during the lease flags rerun, leaving the lease and run_at alone'
);
set local "hotmesh.fake_now" = '2020-01-01 00:10:06+00';
select
    is(
        suspend_task(w.task_id, w.lease_token), '2020-01-01 00:10:06+00'::timestamptz,
        'suspending a flagged activation: it runs again now'
    )
from woken as w;
select results_eq(
    $$select state, run_at, rerun, lease_token from tasks as t
      where t.id = (select task_id from woken)$$,
    $$values ('ready', '2020-01-01 00:10:06+00'::timestamptz, false, null::uuid)$$,
    '... ready now, the flag cleared'
);
select is((select status from jobs where id = 'sw-wake'), 'waiting', 'the workflow is waiting');

-- Finished, unknown and dead: nothing to wake.
do $$
begin
    perform start_workflow('w', '[]', 't33-fin', id) from unnest(
        array['sw-completed', 'sw-failed', 'sw-cancelled', 'sw-dead']
    ) as id;
    delete from tasks where job_id in ('sw-completed', 'sw-failed', 'sw-cancelled');
    update jobs set status = 'running' where id in ('sw-completed', 'sw-failed');
    perform _transition('sw-completed', 'completed', '1');
    perform _transition('sw-failed', 'failed', null, '{}');
    perform _transition('sw-cancelled', 'cancelled');
    perform bury_task(c.task_id, c.lease_token, '{"message": "parked"}')
    from claim_tasks(array['t33-fin'], 'setup', 1) as c;
    perform _wake(id, 'main') from unnest(
        array['sw-completed', 'sw-failed', 'sw-cancelled', 'sw-dead', 'sw-unknown']
    ) as id;
end
$$;
select is_empty(
    $$
    select job_id from tasks
    where job_id in ('sw-completed', 'sw-failed', 'sw-cancelled', 'sw-unknown')
    $$,
    '_wake of a completed, failed, cancelled or unknown workflow creates nothing'
);
select results_eq(
    $$select state, rerun from tasks where job_id = 'sw-dead'$$,
    $$values ('dead', false)$$,
    '_wake leaves a dead activation dead'
);

-- ------------------------------------------------------------------ no wake-up is lost

-- An activity completes while the activation that awaits it is still running: the activation
-- is not deleted on suspend but runs again, and sees the outcome.
set local "hotmesh.fake_now" = '2020-01-01 00:20:00+00';
create temp table race on commit drop as
select * from pg_temp.start_claimed('t33-race', 'sw-race');
do $$
begin
    perform schedule_activity(r.task_id, r.lease_token, 1, 'a', '[5]', 't33-race-acts')
    from race as r;
    perform complete_task(c.task_id, c.lease_token, '"fast"')
    from claim_tasks(array['t33-race-acts'], 'worker-2', 1) as c;
end
$$;
select results_eq(
    $$select t.state, t.rerun from tasks as t where t.id = (select task_id from race)$$,
    $$values ('leased', true)$$,
    'the activity completed during the activation: the activation is flagged'
);
select
    is(
        suspend_task(r.task_id, r.lease_token), '2020-01-01 00:20:00+00'::timestamptz,
        'the activation suspends and is due again at once'
    )
from race as r;
create temp table race2 on commit drop as
select * from claim_tasks(array['t33-race'], 'worker-1', 1);
select results_eq(
    $$select job_id, steps from race2$$,
    $$values ('sw-race', '[{"seq": 1, "kind": "activity", "name": "a", "status": "completed",
                          "output": "fast", "error": null, "attempt": 1, "due": null}]'::jsonb)$$,
    'the next activation sees the activity''s outcome'
);
select is(
    (select status from jobs where id = 'sw-race'), 'running', 'and the workflow runs again'
);

-- A thread other than main suspends without moving the workflow.
select pg_temp.wake_hook('sw-race', 't33-race');
select
    is(
        suspend_task(c.task_id, c.lease_token), null,
        'another thread suspends'
    )
from claim_tasks(array['t33-race'], 'worker-1', 1) as c;
select is(
    (select status from jobs where id = 'sw-race'), 'running',
    '... and the workflow stays running'
);

-- ------------------------------------------------------------------ suspend_tasks
-- An activation's outcome in one call: its activity calls, then its suspension; a batch of
-- activations in one transaction, a lost lease failing only its item.

create temp table batch on commit drop as
select * from pg_temp.start_claimed('t33-batch', 'sw-batch');
select
    is(
        suspend_tasks(jsonb_build_array(
            jsonb_build_object(
                'task_id', b.task_id, 'token', b.lease_token,
                'schedules', jsonb_build_array(
                    jsonb_build_object(
                        'seq', 1, 'name', 'a', 'args', '[1]'::jsonb,
                        'task_queue', 't33-batch-acts',
                        'traceparent', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
                    ),
                    jsonb_build_object(
                        'seq', 2, 'name', 'b', 'args', '[2]'::jsonb,
                        'task_queue', 't33-batch-acts',
                        'retry_policy', '{"maximum_attempts": 1}'::jsonb
                    )
                )
            ),
            jsonb_build_object('task_id', b.task_id, 'token', gen_random_uuid())
        )),
        jsonb_build_array(
            '{"next_run": null}'::jsonb,
            _lease_lost_item(b.task_id::text)
        ),
        'suspend_tasks: the calls are recorded and the activation suspended; a stale token '
        'fails only its item'
    )
from batch as b;
select results_eq(
    $$select seq, kind, name, status, input from steps where job_id = 'sw-batch' order by seq$$,
    $$values (1, 'activity', 'a', 'scheduled', '[1]'::jsonb),
             (2, 'activity', 'b', 'scheduled', '[2]'::jsonb)$$,
    '... both calls recorded as scheduled steps'
);
select results_eq(
    $$select kind, seq, task_queue, payload -> 'retry_policy' ->> 'maximum_attempts',
             payload ->> 'traceparent'
        from tasks where job_id = 'sw-batch' order by id$$,
    $$values ('activity', 1, 't33-batch-acts', '3',
              '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'),
             ('activity', 2, 't33-batch-acts', '1', null)$$,
    '... their activity tasks queued with their retry policies and trace context; the '
    'activation''s deleted'
);
select is(
    (select status from jobs where id = 'sw-batch'), 'waiting', '... the workflow waits'
);

create temp table batch2 on commit drop as
select * from pg_temp.start_claimed('t33-batch', 'sw-batch2');
select
    throws_ok(
        format($$select suspend_tasks(jsonb_build_array(jsonb_build_object(
                     'task_id', %s, 'token', %L, 'schedules', '[{"seq": 1, "name": "a",
                     "args": [], "task_queue": ""}]'::jsonb)))$$, b.task_id, b.lease_token),
        '22023', 'activity "a": task_queue is required',
        'a bad call refuses the whole batch'
    )
from batch2 as b;
select is(
    (select status from jobs where id = 'sw-batch2')
    || (select count(*)::text from steps where job_id = 'sw-batch2'),
    'running0',
    '... and nothing of it changed: the workflow runs, no step is recorded'
);

-- complete_tasks: activities of one thread completed in one batch (a fan-out) record their
-- steps and wake the thread once (_wake_threads).
create temp table fan on commit drop as
select * from pg_temp.start_claimed('t33-fan', 'sw-fan');
select
    suspend_tasks(jsonb_build_array(jsonb_build_object(
        'task_id', f.task_id, 'token', f.lease_token,
        'schedules', jsonb_build_array(
            jsonb_build_object(
                'seq', 1, 'name', 'a', 'args', '[]'::jsonb,
                'task_queue', 't33-fan-acts'
            ),
            jsonb_build_object(
                'seq', 2, 'name', 'b', 'args', '[]'::jsonb,
                'task_queue', 't33-fan-acts'
            )
        )
    )))
from fan as f;
create temp table fan_acts on commit drop as
select * from claim_tasks(array['t33-fan-acts'], 'worker-2', 2);
select is(
    complete_tasks((select jsonb_agg(jsonb_build_object(
        'task_id', a.task_id, 'token', a.lease_token, 'result', a.name
    )) from fan_acts as a)),
    '[null, null]'::jsonb,
    'complete_tasks: two activities of one thread in one batch'
);
select results_eq(
    $$select seq, status, output from steps where job_id = 'sw-fan' order by seq$$,
    $$values (1, 'completed', '"a"'::jsonb), (2, 'completed', '"b"'::jsonb)$$,
    '... both steps recorded'
);
select results_eq(
    $$select kind, thread, state from tasks where job_id = 'sw-fan'$$,
    $$values ('workflow', 'main', 'ready')$$,
    '... their tasks gone, the thread woken once'
);

select * from finish();

rollback;
