-- Trace context on tasks (docs/tracing.md): a claim hands each task the W3C traceparent it
-- continues: an activity's, that of the activation that scheduled it (schedule_activity's
-- p_traceparent, kept in the task's payload); a hook thread's, that of the step that started
-- it (hook's "traceparent" option, threads.traceparent); else the workflow's
-- (jobs.traceparent). A traceparent that is not a W3C trace context is refused with 22023.
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(9);

-- One clock for the whole file: no task waits before its claim (no schedule_to_start).
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

create temp table main_claim on commit drop as
select * from pg_temp.start_claimed(
    't67', 'tc-1', 'worker-1', interval '30 seconds',
    '{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"}'
);
select is(
    (select payload ->> 'traceparent' from main_claim),
    '00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01',
    'an activation carries the workflow''s traceparent'
);

select
    throws_ok(
        format(
            $$select schedule_activity(%s, %L, 1, 'a', '[]', 't67-acts', null, null, '00-xyz')$$,
            c.task_id, c.lease_token
        ),
        '22023', null, 'schedule_activity with a traceparent that is not W3C: 22023'
    )
from main_claim as c;
select is_empty(
    $$select from steps where job_id = 'tc-1'$$, '... and nothing was recorded'
);

select
    schedule_activity(
        c.task_id, c.lease_token, 1, 'a', '[]', 't67-acts', null, null,
        '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
    ) - 'due'
from main_claim as c;
select schedule_activity(c.task_id, c.lease_token, 2, 'b', '[]', 't67-acts') - 'due'
from main_claim as c;
select results_eq(
    $$select name, payload ->> 'traceparent' from claim_tasks(array['t67-acts'], 'w', 5)
       order by name$$,
    $$values ('a', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'),
             ('b', '00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01')$$,
    'an activity carries the traceparent of the activation that scheduled it, else the '
    || 'workflow''s'
);

select throws_ok(
    $$select hook('tc-1', 'side', '[]', null, null, '{"traceparent": 7}')$$,
    '22023', null, 'a hook with a traceparent that is not W3C: 22023'
);
select throws_ok(
    $$select hook('tc-1', 'side', '[]', null, null, '{"trace": "x"}')$$,
    '22023', 'unknown option "trace" of hook "side" (a hook takes execution_timeout, traceparent)',
    'an unknown hook option names the ones there are'
);
select is(
    hook(
        'tc-1', 'side', '[]', 't67-hooks', null,
        '{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-53995c3f42cd8ad8-01"}'
    ),
    'h1', 'a hook with the traceparent of the step that started it'
);
select is(hook('tc-1', 'plain', '[]', 't67-hooks'), 'h2', 'a hook without one');
select results_eq(
    $$select thread, payload ->> 'traceparent' from claim_tasks(array['t67-hooks'], 'w', 5)
       order by thread$$,
    $$values ('h1', '00-0af7651916cd43dd8448eb211c80319c-53995c3f42cd8ad8-01'),
             ('h2', '00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01')$$,
    'a hook''s activation carries its thread''s traceparent, else the workflow''s'
);

select * from finish(true);
rollback;
