-- start_workflow's start options (p_options): id_reuse (reject, allow_finished, terminate),
-- idempotency_key (a repeated key returns the run that holds it), debounce (starts of one id
-- within the window collapse into one run with the last arguments), start_at / start_in (the
-- first activation's due time), search (seeded attributes), execution_timeout (its deadline).
-- Bad options: 22023 naming the option, nothing changed.
begin;
\ir _preamble.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(29);

-- ------------------------------------------------------------------ id_reuse

do $$
begin
    perform start_workflow('w', '[1]', 't21-q', 'r-1');
    update jobs set status = 'completed' where id = 'r-1';
    perform start_workflow('w', '[]', 't21-q', 'r-2');
end
$$;
select throws_ok(
    $$select start_workflow('w', '[2]', 't21-q', 'r-1')$$,
    'HM001',
    'Duplicate job: workflow id "r-1" is already taken (status completed)',
    'reject (the default): a finished run still holds its id until its retention ends'
);
select is(
    start_workflow('w', '[2]', 't21-q', 'r-1', null, '{"id_reuse": "allow_finished"}'),
    'r-1',
    'allow_finished: a finished run gives its id to a new one'
);
select results_eq(
    $$select status, args from jobs where id = 'r-1'$$,
    $$values ('pending', '[2]'::jsonb)$$,
    'the new run, with its own arguments'
);
select throws_ok(
    $$select start_workflow('w', '[2]', 't21-q', 'r-2', null, '{"id_reuse": "allow_finished"}')$$,
    'HM001',
    'Duplicate job: workflow id "r-2" is already taken (status pending)',
    'allow_finished: a running one keeps it'
);
do $$
begin
    perform start_child(t.task_id, t.lease_token, 1, 'c', '[]', 't21-c', 'r-2-child', null,
                        '{}', true)
    from claim_tasks(array['t21-q'], 'wf', 5) as t where t.job_id = 'r-2';
end
$$;
select is(
    start_workflow('w', '[3]', 't21-q', 'r-2', null, '{"id_reuse": "terminate"}'),
    'r-2',
    'terminate: the running one is ended and a new run takes its id'
);
select results_eq(
    $$select id, status, args from jobs where id like 'r-2%' order by id$$,
    $$values ('r-2', 'pending', '[3]'::jsonb), ('r-2-child', 'cancelled', '[]'::jsonb)$$,
    'the new run is pending; the old one''s child was cancelled with it'
);
select is(
    (select count(*)::integer from tasks where job_id = 'r-2' and run_at = _now()),
    1,
    'only the new run''s activation is queued'
);

-- ------------------------------------------------------------------ idempotency_key

select is(
    start_workflow('w', '["a"]', 't21-q', 'k-1', null, '{"idempotency_key": "order-7"}'),
    'k-1',
    'the first start with a key starts a run'
);
select is(
    start_workflow('w', '["b"]', 't21-q', null, null, '{"idempotency_key": "order-7"}'),
    'k-1',
    'a start with the same key returns that run'
);
select results_eq(
    $$select id, args from jobs where idempotency_key = 'order-7'$$,
    $$values ('k-1', '["a"]'::jsonb)$$,
    'and changes nothing'
);

-- ------------------------------------------------------------------ debounce

select is(
    start_workflow('w', '[1]', 't21-q', 'd-1', null, '{"debounce": 5}'),
    'd-1',
    'a debounced start'
);
select is(
    (select run_at from tasks where job_id = 'd-1'),
    '2020-01-01 00:00:05+00',
    'runs when the window has passed'
);
set local "hotmesh.fake_now" = '2020-01-01 00:00:03+00';
select is(
    start_workflow('w', '[2]', 't21-q', 'd-1', null, '{"debounce": 5}'),
    'd-1',
    'another start inside the window'
);
select results_eq(
    $$
    select j.args, t.run_at, (select count(*)::integer from jobs where id like 'd-%')
    from jobs as j inner join tasks as t on j.id = t.job_id where j.id = 'd-1'
    $$,
    $$values ('[2]'::jsonb, '2020-01-01 00:00:08+00'::timestamptz, 1)$$,
    'collapses into the one run: the last arguments, the window from the last start'
);
set local "hotmesh.fake_now" = '2020-01-01 00:00:08+00';
do $$
begin
    perform claim_tasks(array['t21-q'], 'wf', 10);
end
$$;
select throws_ok(
    $$select start_workflow('w', '[3]', 't21-q', 'd-1', null, '{"debounce": 5}')$$,
    'HM001',
    null,
    'once the run started, a debounced start is a start like any other (here rejected)'
);

-- ------------------------------------------------------------------ start_at, start_in, search

do $$
begin
    perform start_workflow('w', '[]', 't21-q', 'at-1', null,
                           '{"start_at": "2020-06-01 12:00:00+00", "execution_timeout": 60}');
    perform start_workflow('w', '[]', 't21-q', 'in-1', null, '{"start_in": 90}');
    perform start_workflow('w', '[]', 't21-q', 's-1', null,
                           '{"search": {"region": "eu", "tier": 2}}');
end
$$;
select is(
    (select run_at from tasks where job_id = 'at-1'),
    '2020-06-01 12:00:00+00',
    'start_at: the first activation is due then'
);
select is(
    (select timeout_at from jobs where id = 'at-1'),
    '2020-06-01 12:01:00+00',
    'and the execution_timeout counts from then'
);
select is(
    (select run_at from tasks where job_id = 'in-1'),
    '2020-01-01 00:01:38+00',
    'start_in: due that many seconds from now'
);
select is(
    (select search from jobs where id = 's-1'),
    '{"region": "eu", "tier": 2}',
    'search attributes seeded at start'
);
select is(
    (get_workflow('s-1') -> 'search'),
    '{"region": "eu", "tier": 2}',
    'and shown by get_workflow'
);

-- ------------------------------------------------------------------ bad options

select
    throws_ok(
        format($$select start_workflow('w', '[]', 't21-q', 'bad', null, %L)$$, b.options),
        '22023',
        b.message,
        b.what
    )
from (
    values
    (
        '{"id_reuse": "sometimes"}',
        'id_reuse must be reject, allow_finished or terminate, not "sometimes"',
        'an unknown id_reuse policy'
    ),
    ('{"idempotency_key": 7}', 'idempotency_key must be a non-empty string, not 7', 'a key'),
    (
        '{"start_at": "2020-01-01", "start_in": 5}', 'give start_at or start_in, not both',
        'start_at with start_in'
    ),
    (
        '{"start_at": "soon"}',
        'start_at must be a timestamp with a time zone, at most 1e10 seconds ahead, '
        || 'not "soon"',
        'a start_at that is no time'
    ),
    (
        '{"start_at": "200000-01-01 00:00:00+00"}',
        'start_at must be a timestamp with a time zone, at most 1e10 seconds ahead, '
        || 'not "200000-01-01 00:00:00+00"',
        'a start_at too far ahead'
    ),
    (
        '{"start_in": -1}', 'start_in must be a number of seconds from 0 to 1e10, not -1',
        'a negative start_in'
    ),
    (
        '{"debounce": 0}',
        'debounce must be a number of seconds from 0.001 (1 ms) to the retention (7 days), not 0',
        'a debounce under 1 ms'
    ),
    (
        '{"search": [1]}', 'search must be an object of {attribute: value}, not array',
        'search that is no object'
    )
) as b (options, message, what);
select is(
    (select count(*)::integer from jobs where id = 'bad'),
    0,
    'a refused start changes nothing'
);

select * from finish();
rollback;
