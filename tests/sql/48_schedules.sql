-- Schedules: the cron next-fire computation (steps, lists, ranges, names, month ends, DST in a
-- time zone), "@every", bad input (22023 naming the field, nothing changed), firing from the
-- claim under the fake clock: catch-up within the window, the overlap policies, pause and
-- resume (the schedule state machine), trigger, and run ids derived from the fire time.
begin;
\ir _preamble.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2030-01-01 00:00:00+00';

select plan(64);

-- ------------------------------------------------------------------ cron_next

select is(
    cron_next('*/15 * * * *', 'UTC', '2030-01-01 00:07:00+00'), '2030-01-01 00:15:00+00',
    '*/15: the next quarter hour'
);
select is(
    cron_next('*/15 * * * *', 'UTC', '2030-01-01 00:15:00+00'), '2030-01-01 00:30:00+00',
    'strictly after: a fire at p_after is not returned again'
);
select is(
    cron_next('5,20-22 * * * *', 'UTC', '2030-01-01 00:20:00+00'), '2030-01-01 00:21:00+00',
    'a list with a range'
);
select is(
    cron_next('10-50/20 * * * *', 'UTC', '2030-01-01 00:31:00+00'), '2030-01-01 00:50:00+00',
    'a range with a step'
);
select is(
    cron_next('0 9 * * mon-fri', 'Europe/Paris', '2030-01-04 09:00:00+01'),
    '2030-01-07 09:00:00+01', 'weekday names: Friday 09:00 in Paris -> Monday 09:00'
);
select is(
    cron_next('0 0 31 * *', 'UTC', '2030-02-01 00:00:00+00'), '2030-03-31 00:00:00+00',
    'day 31 skips the months that have none'
);
select is(
    cron_next('0 0 29 feb *', 'UTC', '2030-03-01 00:00:00+00'), '2032-02-29 00:00:00+00',
    'February 29 waits for a leap year'
);
select is(
    cron_next('0 0 1,15 * mon', 'UTC', '2030-01-02 00:00:00+00'), '2030-01-07 00:00:00+00',
    'day of month and day of week both restricted: either one fires (Vixie cron)'
);
select is(
    cron_next('0 0 */2 * mon', 'UTC', '2030-01-01 00:00:00+00'), '2030-01-07 00:00:00+00',
    'a day-of-month starting with * combines with the day of week: both must match'
);
select is(
    cron_next('0 0 * * 7', 'UTC', '2030-01-01 00:00:00+00'), '2030-01-06 00:00:00+00',
    'day of week 7 is Sunday'
);
select is(
    cron_next('@monthly', 'UTC', '2030-01-31 12:00:00+00'), '2030-02-01 00:00:00+00',
    '@monthly is 0 0 1 * *'
);
select is(
    cron_next('0 0 30 2 *', 'UTC', '2030-01-01 00:00:00+00'), null,
    'a date that never exists: null'
);
-- DST in New York: 2030-03-10 02:00 EST jumps to 03:00 EDT; 2030-11-03 02:00 EDT falls back
-- to 01:00 EST.
select is(
    cron_next('30 2 * * *', 'America/New_York', '2030-03-09 12:00:00+00'),
    '2030-03-10 07:30:00+00', 'a local time the clock skips (spring forward) fires once, shifted'
);
select is(
    cron_next('30 2 * * *', 'America/New_York', '2030-03-10 07:30:00+00'),
    '2030-03-11 06:30:00+00', '... and the day after at 02:30 EDT again'
);
select is(
    cron_next('0 12 * * *', 'America/New_York', '2030-03-09 17:00:00+00'),
    '2030-03-10 16:00:00+00', 'noon stays local noon across the change (UTC-5 -> UTC-4)'
);
select is(
    cron_next('30 1 * * *', 'America/New_York', '2030-11-03 04:00:00+00'),
    '2030-11-03 06:30:00+00', 'a local time that occurs twice (fall back) fires once...'
);
select is(
    cron_next('30 1 * * *', 'America/New_York', '2030-11-03 06:30:00+00'),
    '2030-11-04 06:30:00+00', '... not again an hour later'
);
select is(
    cron_next('0 * * * *', 'Europe/London', '2030-03-31 00:30:00+00'),
    '2030-03-31 01:00:00+00', 'hourly across the London change: 01:00 UTC is 02:00 BST'
);

-- ------------------------------------------------------------------ bad input

select throws_ok(
    $$select cron_next('61 * * * *', 'UTC', now())$$, '22023',
    'cron "61 * * * *": minute field: "61" is not a value from 0 to 59',
    'a minute out of range: 22023 naming the field'
);
select throws_like(
    $$select cron_next('0 0 * 13 *', 'UTC', now())$$,
    '%month field: "13" is not a value from 1 to 12%', 'a month out of range names the month'
);
select throws_like(
    $$select cron_next('0 0 * * 1 2', 'UTC', now())$$,
    '%has 6 fields; it needs 5%', 'six fields'
);
select throws_like(
    $$select cron_next('0 */0 * * *', 'UTC', now())$$,
    '%hour field "*/0": step 0 is out of range%', 'a zero step names the hour field'
);
select throws_like(
    $$select cron_next('0 0 5-1 * *', 'UTC', now())$$,
    '%day-of-month field "5-1": range 5-1 runs backwards%', 'a backwards range'
);
select throws_like(
    $$select create_schedule('s', '0 0 * * frday', 'w', '[]', 'q')$$,
    '%day-of-week field: "frday" is not a value from 0 to 7 or a name%',
    'a misspelt day name'
);
select throws_ok(
    $$select create_schedule('s', '@every 0s', 'w', '[]', 'q')$$, '22023',
    '"@every 0s": the interval must be at least 1 second', '@every below a second'
);
select throws_ok(
    $$select create_schedule('s', '@every 10 minutes', 'w', '[]', 'q')$$, '22023', null,
    '@every with an unknown duration form'
);
select throws_ok(
    $$select create_schedule('s', '@daily', 'w', '[]', 'q', '{"timezone": "Mars/Olympus"}')$$,
    '22023', 'schedule "s": unknown time zone "Mars/Olympus"', 'an unknown time zone'
);
select throws_ok(
    $$select create_schedule('s', '@daily', 'w', '[]', 'q', '{"overlap": "queue"}')$$,
    '22023', 'schedule "s": overlap must be skip, buffer_one or allow, not "queue"',
    'an unknown overlap policy'
);
select throws_ok(
    $$select create_schedule('s', '0 0 30 2 *', 'w', '[]', 'q')$$,
    '22023', 'schedule "s": cron "0 0 30 2 *" never fires', 'a cron that never fires'
);
select throws_like(
    $$select create_schedule('s', '@daily', 'w', '[]', 'q', '{"priority": 1e6}')$$,
    '%priority must be a whole number%', 'the start options are checked by start_workflow'
);
select is(
    (select count(*)::integer from schedules) + (select count(*)::integer from jobs), 0,
    'nothing was created by the refused calls (the trial start was undone)'
);

-- ------------------------------------------------------------------ firing from the claim

select is(
    create_schedule(
        'tick', '@every 10s', 'w', '[1]', 't48-q',
        '{"overlap": "allow", "catchup_window": 30}'
    ),
    '2030-01-01 00:00:10+00', '@every 10s fires on multiples of 10 s'
);
select throws_ok(
    $$select create_schedule('tick', '@daily', 'w', '[]', 'q')$$, 'HM001',
    'schedule "tick" already exists', 'a taken schedule id'
);

-- No worker ran for 65 s: the fires inside the 30 s catch-up window start, older ones not.
set local "hotmesh.fake_now" = '2030-01-01 00:01:05+00';
select is_empty(
    $$select * from claim_tasks(array['t48-other'], 'w1', 1)$$,
    'a claim on any queue fires the due schedules'
);
select results_eq(
    $$select id, schedule_id from jobs order by id$$,
    $$values ('tick@2030-01-01T00:00:40Z', 'tick'), ('tick@2030-01-01T00:00:50Z', 'tick'),
             ('tick@2030-01-01T00:01:00Z', 'tick')$$,
    'caught up: the fires of the last 30 s, each run id the schedule id and its fire time'
);
select results_eq(
    $$select next_fire_at, last_fire_at, fires from schedule_fires where id = 'tick'$$,
    $$values ('2030-01-01 00:01:10+00'::timestamptz, '2030-01-01 00:01:00+00'::timestamptz,
              3::bigint)$$,
    'schedule_fires: the next and the last fire'
);
select is(
    next_due(array['t48-other']), '2030-01-01 00:01:10+00',
    'next_due wakes an idle worker for the next fire'
);
select is_empty($$select * from claim_tasks(array['t48-other'], 'w1', 1)$$, 'claimed again');
select is((select count(*)::integer from jobs), 3, 'a second claim at the same time fires nothing');

-- skip: a fire whose previous run has not ended is skipped.
select pause_schedule('tick');
select create_schedule('sk', '* * * * *', 'w', '[]', 't48-q', '{"overlap": "skip"}');
select create_schedule('buf', '* * * * *', 'w', '[]', 't48-q', '{"overlap": "buffer_one"}');
set local "hotmesh.fake_now" = '2030-01-01 00:03:30+00';
select is_empty($$select * from claim_tasks(array['t48-other'], 'w1', 1)$$, 'fires 00:02, 00:03');
select results_eq(
    $$select id, fires, skipped, buffered_at from schedule_fires where id in ('sk', 'buf')
      order by id$$,
    $$values ('buf', 1::bigint, 0::bigint, '2030-01-01 00:03:00+00'::timestamptz),
             ('sk', 1::bigint, 1::bigint, null)$$,
    'skip: the 00:03 fire is skipped; buffer_one keeps it'
);
select is(
    (select due_at from schedules where id = 'buf'), '2030-01-01 00:04:00+00',
    'buffer_one: while its run lives, a kept fire is not polled for: due at the next fire'
);
-- The runs of 00:02 run and end: the transition that ends the run makes the schedule due at
-- once, and the next claim, on the same clock, starts the kept fire.
select is(
    (
        select count(complete_task(c.task_id, c.lease_token, '"done"'))::integer
        from claim_tasks(array['t48-q'], 'w1', 10) as c
        where c.job_id in ('sk@2030-01-01T00:02:00Z', 'buf@2030-01-01T00:02:00Z')
    ),
    2, 'the runs of 00:02 are claimed and completed'
);
select results_eq(
    $$select id, due_at from schedules where id in ('sk', 'buf') order by id$$,
    $$values ('buf', '2030-01-01 00:03:30+00'::timestamptz),
             ('sk', '2030-01-01 00:04:00+00'::timestamptz)$$,
    'the end of the run made buffer_one due now; skip, which keeps nothing, is unchanged'
);
select is_empty($$select * from claim_tasks(array['t48-other'], 'w1', 1)$$, 'claimed');
select results_eq(
    $$select j.id, s.buffered_at, s.due_at from jobs as j, schedules as s
       where s.id = 'buf' and j.id = 'buf@2030-01-01T00:03:00Z'$$,
    $$values ('buf@2030-01-01T00:03:00Z', null::timestamptz,
              '2030-01-01 00:04:00+00'::timestamptz)$$,
    'buffer_one: the kept fire started when the previous run ended, no clock tick later'
);
set local "hotmesh.fake_now" = '2030-01-01 00:03:31+00';

-- pause / resume: the schedule state machine.
select throws_ok(
    $$select pause_schedule('tick')$$, 'HM003',
    'schedule "tick" is paused; it cannot become paused', 'paused twice: HM003'
);
select is(
    resume_schedule('tick'), '2030-01-01 00:03:40+00',
    'resumed: the next fire after now, the paused ones not caught up'
);
select is(
    trigger_schedule('sk'), 'sk@2030-01-01T00:03:31Z',
    'trigger: a run now, whatever the overlap policy'
);
select throws_ok(
    $$select update_schedule('tick', '@every 5s', 'w', '[]', 't48-q', '{"paused": false}')$$,
    '22023',
    'schedule "tick": update_schedule keeps the status; pause_schedule and resume_schedule '
    'change it',
    'update does not move the status'
);
select pause_schedule('tick');
select results_eq(
    $$select update_schedule('tick', '@every 5s', 'w', '[]', 't48-q'),
             (select row(status, due_at) from schedules where id = 'tick')::text$$,
    $$values ('2030-01-01 00:03:35+00'::timestamptz, '(paused,)')$$,
    'a paused schedule stays paused across an update; its next fire follows the new spec'
);
select resume_schedule('tick');
select throws_ok(
    $$select delete_schedule('nope')$$, 'HM002', 'schedule "nope" not found',
    'an unknown schedule: HM002'
);

-- ------------------------------------------------------------------ edges of a fire

-- The window's edge: a fire exactly catchup_window old still starts.
select pause_schedule(id) from schedules where status = 'active';
set local "hotmesh.fake_now" = '2030-01-02 00:00:00+00';
select create_schedule(
    'edge', '@every 1s', 'w', '[]', 't48-q',
    '{"overlap": "allow", "catchup_window": 5}'
);
set local "hotmesh.fake_now" = '2030-01-02 00:00:20+00';
select is_empty($$select * from claim_tasks(array['t48-other'], 'w1', 1)$$, 'claimed');
select results_eq(
    $$select min(id), max(id), count(*)::integer from jobs where schedule_id = 'edge'$$,
    $$values ('edge@2030-01-02T00:00:15Z', 'edge@2030-01-02T00:00:20Z', 6)$$,
    'window 5 s at 00:00:20: the fires of 00:00:15 to 00:00:20'
);

-- Jitter: each fire is due up to the jitter later, the same for every worker; a schedule that
-- missed many fires still moves on.
select pause_schedule('edge');
select create_schedule(
    'jit', '@every 1m', 'w', '[]', 't48-q',
    '{"jitter": 30, "catchup_window": 60}'
);
select ok(
    (select
        due_at - next_fire_at between interval '0' and interval '30 seconds'
        -- The row rebuilt as a schedules row: on a distributed app (docs/citus.md) the
        -- query runs on the table's shard, whose rows have the shard's type.
        and due_at = _schedule_due(
            jsonb_populate_record(null::schedules, to_jsonb(s)),
            next_fire_at
        )
    from schedules as s where id = 'jit'),
    'due_at is the next fire plus a fixed share of the jitter'
);
set local "hotmesh.fake_now" = '2030-01-03 00:00:00+00';
select is_empty($$select * from claim_tasks(array['t48-other'], 'w1', 1)$$, 'claimed');
select ok(
    (
        select due_at > '2030-01-03 00:00:00+00' and fires between 1 and 2
        from schedules where id = 'jit'
    ),
    'a day of missed fires: caught up inside the window only, and the schedule moved on'
);

-- A run that cannot start leaves its error and does not stop the claim; a fire whose run
-- id is taken already counts as skipped.
select pause_schedule('jit');
select create_schedule('broken', '@every 1m', 'w', '[]', 't48-q');
-- Options a later engine refuses: only an upgrade gets them there, so they are written here.
update schedules set start_options = '{"priority": "high"}' where id = 'broken';
select create_schedule('taken', '@every 1m', 'w', '[]', 't48-q');
select start_workflow('w', '[]', 't48-q', 'taken@2030-01-03T00:01:00Z');
set local "hotmesh.fake_now" = '2030-01-03 00:01:00+00';
select is_empty(
    $$select * from claim_tasks(array['t48-other'], 'w1', 1)$$,
    'the claim goes on past a schedule whose run cannot start'
);
select results_eq(
    $$select id, last_error ->> 'sqlstate', fires, skipped, next_fire_at from schedules
      where id in ('broken', 'taken') order by id$$,
    $$values ('broken', '22023', 0::bigint, 0::bigint, '2030-01-03 00:02:00+00'::timestamptz),
             ('taken', null, 0::bigint, 1::bigint, '2030-01-03 00:02:00+00'::timestamptz)$$,
    'its error is kept and it moved on; the taken run id counts as skipped'
);

-- buffer_one behind a run that is cancelled (or fails): its end starts the kept fire too.
select create_schedule('buf2', '@every 1m', 'w', '[]', 't48-q', '{"overlap": "buffer_one"}');
set local "hotmesh.fake_now" = '2030-01-03 00:02:00+00';
select is_empty($$select * from claim_tasks(array['t48-other'], 'w1', 1)$$, 'fires 00:02');
set local "hotmesh.fake_now" = '2030-01-03 00:03:00+00';
select is_empty($$select * from claim_tasks(array['t48-other'], 'w1', 1)$$, 'keeps 00:03');
select is(
    (select buffered_at from schedules where id = 'buf2'), '2030-01-03 00:03:00+00',
    'the 00:03 fire is kept behind the 00:02 run'
);
select cancel_workflow('buf2@2030-01-03T00:02:00Z');
select is_empty($$select * from claim_tasks(array['t48-other'], 'w1', 1)$$, 'claimed');
select ok(
    exists (select from jobs where id = 'buf2@2030-01-03T00:03:00Z'),
    'buffer_one: cancelling the run started the kept fire at the next claim'
);

select * from finish();
rollback;
