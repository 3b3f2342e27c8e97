-- start_workflows: many starts in one call, each item start_workflow's parameters. Its rows
-- are start_workflow's; options per item; ids in item order; all or nothing (a bad item, a
-- taken id, an id given twice: the error names it, nothing is started); idempotency keys and
-- debounces go the one-by-one way, in order.
begin;
\ir _preamble.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(22);

-- ------------------------------------------------------------------ the rows it creates

select is(
    start_workflows($$[
        {"workflow_name": "greet", "args": ["ann", 2], "task_queue": "t22-q",
         "workflow_id": "t22-a", "entity": "t22-entity"},
        {"workflow_name": "greet", "task_queue": "t22-q", "workflow_id": "t22-b",
         "options": {"priority": 5, "start_in": 60, "search": {"region": "eu"},
                     "execution_timeout": 30, "expire": 3600,
                     "retry_policy": {"maximum_attempts": 1}}}
    ]$$),
    array['t22-a', 't22-b'],
    'returns the workflow ids in item order'
);
select is(
    start_workflow('greet', '["ann", 2]', 't22-q', 't22-one', 't22-entity'),
    't22-one',
    'the same start, one at a time'
);
select is(
    (select to_jsonb(j) - 'id' from jobs as j where id = 't22-a'),
    (select to_jsonb(j) - 'id' from jobs as j where id = 't22-one'),
    'a batch item''s job row is the one start_workflow makes'
);
select is(
    (
        select to_jsonb(t) - array['id', 'job_id']
        from tasks as t where job_id = 't22-a'
    ),
    (
        select to_jsonb(t) - array['id', 'job_id']
        from tasks as t where job_id = 't22-one'
    ),
    'and so is its first activation'
);
select results_eq(
    $$
    select j.priority, t.priority, t.run_at, j.search, j.execution_timeout, j.timeout_at,
           j.retention, j.retry_policy ->> 'maximum_attempts'
    from jobs as j join tasks as t on t.job_id = j.id
    where j.id = 't22-b'
    $$,
    $$
    values (
        5::smallint, 5::smallint, '2020-01-01 00:01:00+00'::timestamptz,
        '{"region": "eu"}'::jsonb, interval '30 seconds',
        '2020-01-01 00:01:30+00'::timestamptz, interval '1 hour', '1'
    )
    $$,
    'each item has its own options: priority, start_in, search, execution_timeout, ...'
);
select ok(
    (start_workflows('[{"workflow_name": "greet", "task_queue": "t22-q"}]'))[1] ~ '^H[0-9a-f]{32}$',
    'no workflow_id: one is generated, as start_workflow does'
);
select is(start_workflows('[]'), '{}'::text[], 'an empty batch starts nothing');

-- ------------------------------------------------------------------ concurrency keys

select is(
    start_workflows($$[
        {"workflow_name": "w", "task_queue": "t22-k", "workflow_id": "k1",
         "options": {"concurrency_key": "acme"}},
        {"workflow_name": "w", "task_queue": "t22-k", "workflow_id": "k2",
         "options": {"concurrency_key": "other"}},
        {"workflow_name": "w", "task_queue": "t22-k", "workflow_id": "k3",
         "options": {"concurrency_key": "acme"}}
    ]$$),
    array['k1', 'k2', 'k3'],
    'keyed starts'
);
select results_eq(
    $$select job_id, concurrency_key, key_rank from tasks where task_queue = 't22-k'
      order by job_id$$,
    $$values ('k1', 'acme', 0::bigint), ('k2', 'other', 0), ('k3', 'acme', 1)$$,
    'a key''s starts in one batch rank one after another, as one by one'
);
select is(
    (
        start_workflows(
            '[{"workflow_name": "w", "task_queue": "t22-k", "workflow_id": "k4",'
            ' "options": {"concurrency_key": "acme"}}]'
        )
    )[1],
    'k4',
    'a later batch'
);
select is(
    (select key_rank from tasks where job_id = 'k4'),
    2::bigint,
    'ranks after the earlier batch''s starts of the key'
);

-- ------------------------------------------------------------------ the one-by-one starts

select is(
    start_workflows($$[
        {"workflow_name": "w", "task_queue": "t22-q", "workflow_id": "i1",
         "options": {"idempotency_key": "order-1"}},
        {"workflow_name": "w", "task_queue": "t22-q", "workflow_id": "i2",
         "options": {"idempotency_key": "order-1"}},
        {"workflow_name": "w", "task_queue": "t22-q", "workflow_id": "i3"}
    ]$$),
    array['i1', 'i1', 'i3'],
    'an idempotency key repeated in the batch: its later starts answer the first one''s run'
);
select is(
    start_workflows(
        '[{"workflow_name": "w", "task_queue": "t22-q", "workflow_id": "i4",'
        ' "options": {"idempotency_key": "order-1"}}]'
    ),
    array['i1'],
    'a key a run already holds: that run'
);
select is(
    (select count(*)::integer from jobs where id in ('i2', 'i4')),
    0,
    'and no run for them'
);
update jobs set status = 'completed' where id = 't22-one';
select is(
    start_workflows(
        '[{"workflow_name": "w", "args": [7], "task_queue": "t22-q", "workflow_id": "t22-one",'
        ' "options": {"id_reuse": "allow_finished"}}]'
    ),
    array['t22-one'],
    'id_reuse: a finished run gives its id to the new one'
);
select is((select args from jobs where id = 't22-one'), '[7]'::jsonb, 'the new run');

-- ------------------------------------------------------------------ all or nothing

select throws_ok(
    $$select start_workflows('[{"workflow_name": "w", "task_queue": "t22-q", "workflow_id": "n1"},
        {"workflow_name": "w", "task_queue": "t22-q", "workflow_id": "d1"},
        {"workflow_name": "w", "task_queue": "t22-q", "workflow_id": "d1"}]')$$,
    '22023',
    'workflow id "d1" is given more than once in the batch; nothing was started',
    'an id given twice in one batch refuses the batch, naming the id'
);
select throws_ok(
    $$select start_workflows('[{"workflow_name": "w", "task_queue": "t22-q", "workflow_id": "n1"},
        {"workflow_name": "w", "task_queue": "t22-q", "workflow_id": "t22-a"}]')$$,
    'HM001',
    'Duplicate job: workflow id "t22-a" is already taken (status pending)',
    'an id a live run holds refuses the batch (HM001), as start_workflow does'
);
select throws_ok(
    $$select start_workflows('[{"workflow_name": "w", "task_queue": "t22-q", "workflow_id": "n1"},
        {"workflow_name": "w", "task_queue": "t22-q", "options": {"priority": 1.5}}]')$$,
    '22023',
    'start 2 of 2: priority must be a whole number from -32768 to 32767, not 1.5',
    'a bad item refuses the batch; the message says which item'
);
select throws_ok(
    $$select start_workflows('[{"workflow_name": "w", "queue": "t22-q"}]')$$,
    '22023',
    'start 1 of 1: unknown field(s): queue (a start has workflow_name, args, task_queue, '
    'workflow_id, entity, options)',
    'an unknown field is named'
);
select throws_ok(
    $$select start_workflows('{"workflow_name": "w"}')$$,
    '22023',
    'items must be a JSON array of starts, not object',
    'not an array'
);
select is(
    (select count(*)::integer from jobs where id = 'n1'),
    0,
    'a refused batch starts nothing'
);

select * from finish();
rollback;
