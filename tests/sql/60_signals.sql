-- Signals: signal() delivers to the oldest wait for its id (only in its target workflow when
-- it has one) and wakes the waiter, or keeps the signal for the first matching wait;
-- wait_signal takes a kept signal at once; repeated idempotency keys change nothing; bad input
-- and unknown or finished targets are refused with nothing changed; a wait's timeout fails it
-- (596) in a claim of its thread once due, never before; send_signal sends once per position.
begin;
\ir _preamble.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(82);

-- The activation each test workflow holds right now (one queue per workflow: 'q-<id>').
create temp table held (
    job_id text primary key,
    task_id bigint not null,
    token uuid not null
) on commit drop;

create function pg_temp.claim(p_job text) returns void
language plpgsql as $$
declare
    v_claim claimed_task;
begin
    select * into v_claim from claim_tasks(array['q-' || p_job], 'tester', 1);
    if v_claim.task_id is null then
        raise exception 'nothing to claim for %', p_job;
    end if;
    delete from held where job_id = p_job;
    insert into held values (p_job, v_claim.task_id, v_claim.lease_token);
end
$$;

create function pg_temp.start(p_job text) returns void
language plpgsql as $$
begin
    perform start_workflow('w', '[]', 'q-' || p_job, p_job);
    perform pg_temp.claim(p_job);
end
$$;

create function pg_temp.wait(
    p_job text, p_seq integer, p_signal text, p_timeout numeric default null
) returns jsonb
language sql as $$
    select wait_signal(h.task_id, h.token, p_seq, p_signal, p_timeout)
    from held as h where h.job_id = p_job
$$;

create function pg_temp.suspend(p_job text) returns timestamptz
language sql as $$
    select suspend_task(h.task_id, h.token) from held as h where h.job_id = p_job
$$;

create function pg_temp.send(
    p_job text, p_seq integer, p_signal text, p_payload jsonb, p_target text default null
) returns jsonb
language sql as $$
    select send_signal(h.task_id, h.token, p_seq, p_signal, p_payload, p_target)
    from held as h where h.job_id = p_job
$$;

create function pg_temp.wait_step(p_job text, p_seq integer) returns jsonb
language sql as $$
    select jsonb_build_object('status', status, 'output', output, 'error', error,
                              'wake_at', wake_at, 'completed_at', completed_at)
    from steps where job_id = p_job and thread = 'main' and seq = p_seq
$$;

-- ------------------------------------------------------------------ bad input

select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select signal('', '1')$$, '22023', 'signal id is required', 'an empty signal id: 22023'),
    ($$select signal(null, '1')$$, '22023', 'signal id is required', 'a null signal id: 22023'),
    ($$select signal('go', 'not json')$$, '22P02', null, 'a payload that is not JSON: 22P02'),
    ($$select signal('go', '1', 'nobody', 'key-unknown')$$, 'HM002', 'signal "go": workflow "nobody" not found', 'a signal to an unknown workflow: HM002 naming it')
) as t (call, sqlstate, message, description);
select is(
    (select count(*)::integer from signals) + (select count(*)::integer from signal_keys), 0,
    '... nothing kept, the idempotency key not used'
);

-- ------------------------------------------------------------------ kept signals

select is(
    signal('early', '{"n": 1}') - 'id', '{"status": "kept"}'::jsonb,
    'a signal nobody waits for is kept'
);
select results_eq(
    $$select signal_id, job_id, payload, error, created_at from signals$$,
    $$values ('early', null::text, '{"n": 1}'::jsonb, null::jsonb,
              '2020-01-01 00:00:00+00'::timestamptz)$$,
    '... as a row of signals'
);

set local "hotmesh.fake_now" = '2020-01-01 00:00:01+00';
select lives_ok($$select pg_temp.start('sg-a')$$, 'setup: workflow sg-a claimed');
select is(
    pg_temp.wait('sg-a', 1, 'early') - 'due',
    '{"seq": 1, "kind": "signal", "name": "early", "status": "completed", "output": {"n": 1},
      "error": null, "attempt": 1}'::jsonb,
    'a wait for a kept signal takes it at once'
);
select is(
    pg_temp.wait_step('sg-a', 1),
    '{"status": "completed", "output": {"n": 1}, "error": null, "wake_at": null,
      "completed_at": "2020-01-01T00:00:01+00:00"}'::jsonb,
    '... its step is completed with the payload'
);
select is((select count(*)::integer from signals), 0, '... and the signal is no longer kept');
select is(
    pg_temp.wait('sg-a', 1, 'early') ->> 'status', 'completed',
    'the same wait again (a replay) returns the recorded step'
);
select throws_ok(
    $$select pg_temp.wait('sg-a', 1, 'other')$$, 'HM006', null,
    'a wait for another signal at a recorded position: HM006'
);

-- Targeted kept signals only go to their workflow; untargeted ones to anyone.
select lives_ok($$select pg_temp.start('sg-b')$$, 'setup: workflow sg-b claimed');
select is(
    signal('for-b', '"b only"', 'sg-b') - 'id', '{"status": "kept"}'::jsonb,
    'a targeted signal nobody waits for is kept'
);
select is(
    pg_temp.wait('sg-a', 2, 'for-b') ->> 'status', 'scheduled',
    'another workflow''s wait does not take it'
);
select is(
    pg_temp.wait('sg-b', 1, 'for-b') -> 'output', '"b only"'::jsonb,
    'its own workflow''s wait takes it'
);
select is((select count(*)::integer from signals), 0, '... and it is no longer kept');

-- ------------------------------------------------------------------ delivery to waits

-- sg-a waits on 'for-b' (seq 2) since 00:00:01. sg-c and sg-d wait on 'go' later.
select lives_ok($$select pg_temp.suspend('sg-a')$$, 'setup: sg-a suspends');
select is(
    (select count(*)::integer from tasks where job_id = 'sg-a'), 0,
    'a suspended waiter has no task'
);
select is(
    signal('for-b', '"late"') - 'seq',
    '{"status": "delivered", "workflow_id": "sg-a", "thread": "main"}'::jsonb,
    'an untargeted signal is delivered to a waiting workflow'
);
select results_eq(
    $$select kind, thread, state, run_at from tasks where job_id = 'sg-a'$$,
    $$values ('workflow', 'main', 'ready', '2020-01-01 00:00:01+00'::timestamptz)$$,
    '... and the waiter''s activation is enqueued, due now'
);
select is(
    pg_temp.wait_step('sg-a', 2) -> 'output', '"late"'::jsonb, '... its step has the payload'
);

set local "hotmesh.fake_now" = '2020-01-01 00:00:02+00';
select lives_ok(
    $$select pg_temp.start('sg-c'), pg_temp.wait('sg-c', 1, 'go'), pg_temp.suspend('sg-c')$$,
    'setup: sg-c waits for go'
);
set local "hotmesh.fake_now" = '2020-01-01 00:00:03+00';
select lives_ok(
    $$select pg_temp.start('sg-d'), pg_temp.wait('sg-d', 1, 'go'), pg_temp.suspend('sg-d')$$,
    'setup: sg-d waits for go (later)'
);
select lives_ok(
    $$select pg_temp.start('sg-e'), pg_temp.wait('sg-e', 1, 'go'), pg_temp.suspend('sg-e')$$,
    'setup: sg-e waits for go (latest)'
);
select is(
    signal('go', '"to d"', 'sg-d') ->> 'workflow_id', 'sg-d',
    'a targeted signal goes to its workflow, even when an older wait exists'
);
select is(
    signal('go', '"first"') ->> 'workflow_id', 'sg-c',
    'an untargeted signal goes to the oldest wait'
);
select is(signal('go', '"second"') ->> 'workflow_id', 'sg-e', '... the next one to the next');
select is(signal('go', '"third"') ->> 'status', 'kept', '... and with nobody left it is kept');
select results_eq(
    $$select job_id, output from steps where name = 'go' order by job_id$$,
    $$values ('sg-c', '"first"'::jsonb), ('sg-d', '"to d"'::jsonb), ('sg-e', '"second"'::jsonb)$$,
    'each wait got exactly one signal'
);
select results_eq(
    $$select job_id, state from tasks where job_id in ('sg-c', 'sg-d', 'sg-e') order by job_id$$,
    $$values ('sg-c', 'ready'), ('sg-d', 'ready'), ('sg-e', 'ready')$$,
    'each waiter was woken'
);
delete from signals;

-- A wait left behind by a finished workflow takes nothing.
select lives_ok(
    $$select pg_temp.start('sg-gone'), pg_temp.wait('sg-gone', 1, 'orphan'),
             pg_temp.suspend('sg-gone'), cancel_workflow('sg-gone')$$,
    'setup: sg-gone waits for orphan, then is cancelled'
);
set local "hotmesh.fake_now" = '2020-01-01 00:00:04+00';
select lives_ok(
    $$select pg_temp.start('sg-live'), pg_temp.wait('sg-live', 1, 'orphan'),
             pg_temp.suspend('sg-live')$$,
    'setup: sg-live waits for orphan (later)'
);
select is(
    signal('orphan', '1') ->> 'workflow_id', 'sg-live',
    'a signal skips the (older) wait of a cancelled workflow'
);
select is(signal('orphan', '2') ->> 'status', 'kept', '... and is kept rather than lost there');
select is(
    pg_temp.wait_step('sg-gone', 1) ->> 'status', 'scheduled',
    '... the cancelled workflow''s wait is untouched'
);
select throws_ok(
    $$select signal('orphan', '3', 'sg-gone')$$,
    'HM003', 'signal "orphan": workflow "sg-gone" is cancelled and waits for no more signals',
    'a signal to a finished workflow: HM003'
);
select is(
    (select count(*)::integer from signals where payload = '3'), 0,
    '... and it is not kept'
);
delete from signals;

-- ------------------------------------------------------------------ idempotency keys

select lives_ok(
    $$select pg_temp.start('sg-k'), pg_temp.wait('sg-k', 1, 'approve'), pg_temp.suspend('sg-k')$$,
    'setup: sg-k waits for approve'
);
select is(
    signal('approve', '"yes"', 'sg-k', 'approval-1') ->> 'status', 'delivered',
    'a signal with an idempotency key is delivered'
);
select is(
    signal('approve', '"yes"', 'sg-k', 'approval-1'), '{"status": "duplicate"}'::jsonb,
    'the same send again: duplicate'
);
select throws_ok(
    $$select signal('approve', '"again"', 'sg-k', 'approval-1')$$, '22023',
    'idempotency key "approval-1" was already used for signal "approve" to workflow "sg-k" '
    || 'with another payload; a retry must repeat the same call',
    'the same key with another payload: 22023 (a retry must repeat the same call)'
);
select is(
    (select count(*)::integer from signals), 0, '... neither was kept'
);
select is(pg_temp.wait_step('sg-k', 1) -> 'output', '"yes"'::jsonb, '... nor delivered');
select is(
    signal('other', '"x"', null, 'approval-1') ->> 'status', 'kept',
    'the same key on another signal id is another send (keys belong to their signal)'
);
delete from signals where signal_id = 'other';
select is(
    signal('later', '1', null, 'early-key') ->> 'status', 'kept',
    'a kept signal with a key'
);
select is(
    signal('later', '1', null, 'early-key') ->> 'status', 'duplicate',
    'its send again before anyone waits: duplicate'
);
select results_eq(
    $$select payload from signals where signal_id = 'later'$$, $$values ('1'::jsonb)$$,
    '... only the first is kept'
);
-- sg-k finishes: a retry of its signal is still a duplicate, not an error.
do $$
begin
    perform pg_temp.claim('sg-k');
    perform complete_task(h.task_id, h.token, '"done"') from held as h where h.job_id = 'sg-k';
end
$$;
select is(
    signal('approve', '"yes"', 'sg-k', 'approval-1'), '{"status": "duplicate"}'::jsonb,
    'a retried send after the workflow finished: duplicate'
);
select throws_ok(
    $$select signal('approve', '"new"', 'sg-k', 'approval-2')$$, 'HM003', null,
    'a new send to the finished workflow: HM003'
);
select is(
    (select count(*)::integer from signal_keys where idempotency_key = 'approval-2'), 0,
    '... and its key is not used up'
);

-- ------------------------------------------------------------------ timeouts

set local "hotmesh.fake_now" = '2020-01-01 00:01:00+00';
select lives_ok($$select pg_temp.start('sg-t')$$, 'setup: sg-t claimed');
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select pg_temp.wait('sg-t', 1, 'slow', -1)$$, '22023', 'wait_for timeout must be from 0 to 1e10 seconds, not -1', 'a negative timeout: 22023'),
    ($$select pg_temp.wait('sg-t', 1, 'slow', 'NaN')$$, '22023', null, 'a NaN timeout: 22023'),
    ($$select pg_temp.wait('sg-t', 1, '', 1)$$, '22023', 'signal id is required', 'a wait without a signal id: 22023')
) as t (call, sqlstate, message, description);
select is(
    (select count(*)::integer from steps where job_id = 'sg-t'), 0,
    '... none of them recorded anything'
);
select is(
    pg_temp.wait('sg-t', 1, 'slow', 10) - 'due',
    '{"seq": 1, "kind": "signal", "name": "slow", "status": "scheduled", "output": null,
      "error": null, "attempt": 1}'::jsonb,
    'a wait with a 10 s timeout is scheduled'
);
select is(
    pg_temp.suspend('sg-t'), '2020-01-01 00:01:10+00'::timestamptz,
    '... the activation suspends until the timeout'
);
-- Woken early (something else arrived for it): the claim leaves the wait alone.
set local "hotmesh.fake_now" = '2020-01-01 00:01:09.999+00';
select lives_ok(
    $$select _wake('sg-t', 'main'), pg_temp.claim('sg-t')$$, 'sg-t woken and claimed at 9.999 s'
);
select is(
    pg_temp.wait_step('sg-t', 1) ->> 'status', 'scheduled',
    'a claim before the timeout is due leaves the wait scheduled'
);
select is(
    pg_temp.wait('sg-t', 1, 'slow', 10) -> 'due', 'false'::jsonb, '... and not due'
);
select is(pg_temp.suspend('sg-t'), '2020-01-01 00:01:10+00'::timestamptz, '... suspends again');
set local "hotmesh.fake_now" = '2020-01-01 00:01:10+00';
select lives_ok($$select pg_temp.claim('sg-t')$$, 'sg-t claimed at 10 s');
select is(
    pg_temp.wait_step('sg-t', 1),
    '{"status": "failed", "output": null, "wake_at": "2020-01-01T00:01:10+00:00",
      "completed_at": "2020-01-01T00:01:10+00:00",
      "error": {"message": "signal \"slow\" did not arrive within 10 seconds",
                "type": "TimeoutFailure", "code": 596}}'::jsonb,
    'a claim once the timeout is due fails the wait with 596'
);
select is(
    signal('slow', '"too late"') ->> 'status', 'kept',
    'a signal after the timeout is not delivered to the failed wait (it is kept)'
);
delete from signals;

-- A signal that comes first: the timeout never fires.
select lives_ok(
    $$select pg_temp.wait('sg-t', 2, 'quick', 5), pg_temp.suspend('sg-t')$$,
    'setup: sg-t waits for quick, 5 s'
);
set local "hotmesh.fake_now" = '2020-01-01 00:01:12+00';
select is(signal('quick', '"in time"', 'sg-t') ->> 'status', 'delivered', 'quick arrives at 2 s');
set local "hotmesh.fake_now" = '2020-01-01 00:01:20+00';
select lives_ok($$select pg_temp.claim('sg-t')$$, 'sg-t claimed after the timeout would be due');
select is(
    pg_temp.wait_step('sg-t', 2) - 'completed_at',
    '{"status": "completed", "output": "in time", "error": null, "wake_at": null}'::jsonb,
    '... the wait keeps the signal: no timeout'
);

-- ------------------------------------------------------------------ send_signal

select lives_ok(
    $$select pg_temp.start('sg-r'), pg_temp.wait('sg-r', 1, 'ping'), pg_temp.suspend('sg-r')$$,
    'setup: sg-r waits for ping'
);
select is(
    pg_temp.send('sg-t', 3, 'ping', '{"from": "sg-t"}', 'sg-r') -> 'output' ->> 'workflow_id',
    'sg-r',
    'send_signal delivers to the target workflow'
);
select is(
    pg_temp.send('sg-t', 3, 'ping', '{"from": "sg-t"}', 'sg-r') - 'due',
    jsonb_build_object(
        'seq', 3, 'kind', 'send', 'name', 'ping', 'status', 'completed', 'error', null,
        'attempt', 1, 'output', (select output from steps where job_id = 'sg-t' and seq = 3)
    ),
    'the same send again (a replay) returns the recorded step'
);
select is(
    (
        select count(*)::integer from steps
        where name = 'ping' and kind = 'signal' and status = 'completed'
    )
    + (select count(*)::integer from signals),
    1,
    '... and sends nothing: one delivery, nothing kept'
);
select throws_ok(
    $$select pg_temp.send('sg-t', 3, 'pong', '1', 'sg-r')$$, 'HM006', null,
    'another send at a recorded position: HM006'
);
select is(
    pg_temp.send('sg-t', 4, 'self', '"mine"') #>> '{output, status}', 'kept',
    'a send without target targets the sender''s own workflow (kept for it)'
);
select results_eq(
    $$select signal_id, job_id from signals$$, $$values ('self', 'sg-t')$$,
    '... the kept signal is targeted at the sender'
);
select is(
    pg_temp.send('sg-t', 5, 'self', '"anyone"', '*') #>> '{output, status}', 'kept',
    'workflow_id "*": untargeted'
);
select is(
    (select count(*)::integer from signals where job_id is null), 1, '... kept for anyone'
);
select is(
    pg_temp.send('sg-t', 6, 'x', '1', 'nobody') -> 'error',
    '{"message": "signal \"x\": workflow \"nobody\" not found", "type": "SignalError",
      "code": 598, "sqlstate": "HM002"}'::jsonb,
    'a send to an unknown workflow fails the call (598, HM002), not the activation'
);
select is(
    pg_temp.send('sg-t', 7, 'x', '1', 'sg-gone') #>> '{error, sqlstate}', 'HM003',
    'a send to a finished workflow fails the call (HM003)'
);
select results_eq(
    $$select seq, status from steps where job_id = 'sg-t' and kind = 'send' order by seq$$,
    $$values (3, 'completed'), (4, 'completed'), (5, 'completed'), (6, 'failed'),
             (7, 'failed')$$,
    'every send is one step'
);

select * from finish();
rollback;
