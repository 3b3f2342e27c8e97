-- start_workflow: the job row and its first activation task, defaults, options, validation
-- (22023 naming the field, nothing inserted), duplicate ids (HM001), reuse of an expired id;
-- workflow_status and workflow_outcome.
begin;
\ir _preamble.psql
-- The engine clock (_now); the name is quoted only because sqlfluff cannot parse it bare.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(50);

-- ------------------------------------------------------------------ the rows it creates

select is(
    start_workflow('greet', '["ann", 2]', 't20-q', 't20-a', 't20-entity'),
    't20-a',
    'returns the workflow id it was given'
);
select is(
    (
        select
            jsonb_build_object(
                'entity', entity, 'workflow_name', workflow_name, 'task_queue', task_queue,
                'status', status, 'args', args, 'context', context, 'result', result,
                'error', error, 'parent_id', parent_id, 'attempt', attempt, 'priority', priority,
                'retention', retention, 'created_at', created_at, 'updated_at', updated_at,
                'completed_at', completed_at, 'expire_at', expire_at
            )
        from jobs
        where id = 't20-a'
    ),
    jsonb_build_object(
        'entity', 't20-entity', 'workflow_name', 'greet', 'task_queue', 't20-q',
        'status', 'pending', 'args', '["ann", 2]'::jsonb, 'context', '{}'::jsonb,
        'result', null, 'error', null, 'parent_id', null, 'attempt', 1, 'priority', 0,
        'retention', interval '7 days',
        'created_at', '2020-01-01 00:00:00+00'::timestamptz,
        'updated_at', '2020-01-01 00:00:00+00'::timestamptz,
        'completed_at', null, 'expire_at', null
    ),
    'the job row: pending, attempt 1, priority 0, kept 7 days after finishing'
);
select is(
    (select retry_policy from jobs where id = 't20-a'),
    _retry_policy(null),
    'no retry_policy option: the default policy is stored, complete'
);
select results_eq(
    $$
    select
        thread, kind, seq, name, task_queue, state, priority, run_at, attempt, payload,
        lease_owner, lease_token, lease_expires_at, rerun, error
    from tasks
    where job_id = 't20-a'
    $$,
    $$
    values (
        'main', 'workflow', null::integer, 'greet', 't20-q', 'ready', 0::smallint,
        '2020-01-01 00:00:00+00'::timestamptz, 0, '{}'::jsonb, null::text, null::uuid,
        null::timestamptz, false, null::jsonb
    )
    $$,
    'one activation task: main thread, ready now on the queue, not yet attempted'
);

-- ------------------------------------------------------------------ defaults

select matches(
    start_workflow('greet', '[]', 't20-q'), '^H[0-9a-f]{32}$',
    'no id: a generated one, H + 32 hex digits'
);
select isnt(
    start_workflow('greet', '[]', 't20-q'), start_workflow('greet', '[]', 't20-q'),
    'two generated ids differ'
);

do $$
begin
    perform start_workflow('greet', '[]', 't20-q', 't20-entity-default');
end
$$;
select is(
    (select entity from jobs where id = 't20-entity-default'), 'greet',
    'entity defaults to the workflow name'
);

do $$
begin
    perform start_workflow('greet', '[]', null, 't20-queue-default', 't20-user-7');
end
$$;
select results_eq(
    $$
    select j.entity, j.task_queue, t.task_queue
    from jobs as j inner join tasks as t on j.id = t.job_id
    where j.id = 't20-queue-default'
    $$,
    $$values ('t20-user-7', 't20-user-7', 't20-user-7')$$,
    'task_queue defaults to the entity, for the job and its task'
);

do $$
begin
    perform start_workflow('greet', null, 't20-q', 't20-null-args', null, null);
end
$$;
select results_eq(
    $$select args, priority, retention from jobs where id = 't20-null-args'$$,
    $$values ('[]'::jsonb, 0::smallint, interval '7 days')$$,
    'null args and null options: no arguments, default options'
);

-- ------------------------------------------------------------------ options

do $$
begin
    perform start_workflow(
        'greet', '[]', 't20-q', 't20-options', null,
        '{"priority": 5, "expire": 90.5, "retry_policy": {"maximum_attempts": 7}}'
    );
end
$$;
select results_eq(
    $$
    select j.priority, t.priority, j.retention, j.retry_policy
    from jobs as j inner join tasks as t on j.id = t.job_id
    where j.id = 't20-options'
    $$,
    $$
    values (
        5::smallint, 5::smallint, interval '90.5 seconds',
        '{"maximum_attempts": 7, "initial_interval": 1, "backoff_coefficient": 10,
         "maximum_interval": 120, "non_retryable_errors": []}'::jsonb
    )
    $$,
    'options: priority (job and task), expire (retention), retry_policy (completed)'
);
do $$
begin
    perform start_workflow(
        'greet', '[]', 't20-q', 't20-bounds', null, '{"priority": -32768, "expire": 0}'
    );
end
$$;
select results_eq(
    $$select priority, retention from jobs where id = 't20-bounds'$$,
    $$values ((-32768)::smallint, interval '0')$$,
    'the lowest priority and expire 0 are accepted'
);

-- ------------------------------------------------------------------ validation: 22023

select
    throws_ok(
        format(
            'select start_workflow(%L, %L, %L, %L, %L, %L)',
            c.workflow_name, c.args, c.task_queue, c.workflow_id, c.entity, c.options
        ),
        '22023',
        c.message,
        c.description
    )
from (
    values
    (
        '', '[]', 't20-q', 't20-bad-1', null, '{}', 'workflow_name is required',
        'an empty workflow name'
    ),
    (
        null, '[]', 't20-q', 't20-bad-2', null, '{}', 'workflow_name is required',
        'no workflow name'
    ),
    (
        'w', '[]', null, 't20-bad-3', null, '{}',
        'workflow "w": task_queue (or entity) is required', 'no task queue and no entity'
    ),
    (
        'w', '[]', '', 't20-bad-4', null, '{}',
        'workflow "w": task_queue (or entity) is required', 'an empty task queue'
    ),
    (
        'w', '[]', 't20-q', '', null, '{}', 'workflow id must be 1 to 255 characters, got 0',
        'an empty workflow id'
    ),
    (
        'w', '[]', 't20-q', 't20-bad-' || repeat('x', 248), null, '{}',
        'workflow id must be 1 to 255 characters, got 256', 'a workflow id of 256 characters'
    ),
    (
        'w', '{"a": 1}', 't20-q', 't20-bad-5', null, '{}',
        'args of workflow "w" must be a JSON array (positional arguments), not object',
        'args as an object'
    ),
    (
        'w', '"ann"', 't20-q', 't20-bad-6', null, '{}',
        'args of workflow "w" must be a JSON array (positional arguments), not string',
        'args as a string'
    ),
    (
        'w', 'null', 't20-q', 't20-bad-7', null, '{}',
        'args of workflow "w" must be a JSON array (positional arguments), not null',
        'args as JSON null'
    ),
    (
        'w', '[]', 't20-q', 't20-bad-8', null, '[]', 'options must be a JSON object',
        'options as an array'
    ),
    (
        'w', '[]', 't20-q', 't20-bad-9', null, '{"priority": "high"}',
        'priority must be a whole number from -32768 to 32767, not "high"',
        'priority as a string'
    ),
    (
        'w', '[]', 't20-q', 't20-bad-10', null, '{"priority": 1.5}',
        'priority must be a whole number from -32768 to 32767, not 1.5',
        'a fractional priority'
    ),
    (
        'w', '[]', 't20-q', 't20-bad-11', null, '{"priority": 32768}',
        'priority must be a whole number from -32768 to 32767, not 32768',
        'a priority beyond smallint'
    ),
    (
        'w', '[]', 't20-q', 't20-bad-12', null, '{"expire": -1}',
        'expire must be a number of seconds from 0 to 1e10, not -1', 'a negative expire'
    ),
    (
        'w', '[]', 't20-q', 't20-bad-13', null, '{"expire": "7 days"}',
        'expire must be a number of seconds from 0 to 1e10, not "7 days"', 'expire as text'
    ),
    (
        'w', '[]', 't20-q', 't20-bad-14', null, '{"expire": 1e20}',
        'expire must be a number of seconds from 0 to 1e10, not 100000000000000000000',
        'an expire too large for an interval'
    ),
    (
        'w', '[]', 't20-q', 't20-bad-15', null, '{"retry_policy": {"maximum_attempts": 0}}',
        'retry policy maximum_attempts must be a whole number from 1 to 2147483647, not 0',
        'a bad retry policy'
    ),
    (
        'w', '[]', 't20-q', 't20-bad-16', null, '{"retry_policy": {"tries": 3}}',
        'retry policy has unknown field(s): tries', 'a retry policy with an unknown field'
    ),
    (
        'w', '[]', 't20-q', 't20-bad-17', null, '{"retry_policy": []}',
        'retry policy must be a JSON object, not array', 'a retry policy that is not an object'
    )
) as c (workflow_name, args, task_queue, workflow_id, entity, options, message, description);

select is(
    (select count(*)::integer from jobs where id like 't20-bad-%' or id = ''),
    0,
    'no job row after any bad input'
);
select is(
    (select count(*)::integer from tasks where job_id like 't20-bad-%' or job_id = ''),
    0,
    'no task row after any bad input'
);

-- ------------------------------------------------------------------ duplicate ids: HM001

do $$
begin
    perform start_workflow('greet', '["first"]', 't20-q', 't20-dup');
end
$$;
select throws_ok(
    $$select start_workflow('greet', '["second"]', 't20-q', 't20-dup')$$,
    'HM001',
    'Duplicate job: workflow id "t20-dup" is already taken (status pending)',
    'a pending workflow holds its id'
);
update jobs set status = 'waiting' where id = 't20-dup';
select throws_ok(
    $$select start_workflow('other', '[]', 't20-other-q', 't20-dup')$$,
    'HM001',
    'Duplicate job: workflow id "t20-dup" is already taken (status waiting)',
    'a waiting workflow holds its id, whatever the new name and queue'
);
select results_eq(
    $$
    select
        j.workflow_name, j.args, j.status,
        (select count(*)::integer from tasks as t where t.job_id = j.id)
    from jobs as j where j.id = 't20-dup'
    $$,
    $$values ('greet', '["first"]'::jsonb, 'waiting', 1)$$,
    'a refused duplicate changes nothing'
);

-- ------------------------------------------------------------------ reuse after expiry

-- A finished workflow keeps its id until expire_at (completed_at + retention).
do $$
begin
    perform start_workflow('greet', '["old"]', 't20-q', 't20-reuse', null, '{"expire": 60}');
    perform _transition('t20-reuse', 'running');
    perform _transition('t20-reuse', 'completed', '"old result"');
end
$$;
insert into steps (job_id, thread, seq, kind, name, status, output)
values ('t20-reuse', 'main', 1, 'activity', 'old_step', 'completed', '1');
select is(
    (select expire_at from jobs where id = 't20-reuse'),
    '2020-01-01 00:01:00+00'::timestamptz,
    'the finished job expires 60 s after completing'
);

set local "hotmesh.fake_now" = '2020-01-01 00:00:59.999999+00';
select throws_ok(
    $$select start_workflow('greet', '["new"]', 't20-q', 't20-reuse')$$,
    'HM001',
    'Duplicate job: workflow id "t20-reuse" is already taken (status completed)',
    'a finished workflow holds its id until it expires'
);

set local "hotmesh.fake_now" = '2020-01-01 00:01:00+00';
select throws_ok(
    $$select start_workflow('greet', '["new"]', 't20-q', 't20-reuse', null,
                            '{"retry_policy": {"maximum_attempts": -1}}')$$,
    '22023',
    'retry policy maximum_attempts must be a whole number from 1 to 2147483647, not -1',
    'bad input on an expired id is refused ...'
);
select results_eq(
    $$
    select j.args, j.status, (select count(*)::integer from steps as s where s.job_id = j.id)
    from jobs as j where j.id = 't20-reuse'
    $$,
    $$values ('["old"]'::jsonb, 'completed', 1)$$,
    '... and the expired job is still there'
);

select is(
    start_workflow('greet2', '["new"]', 't20-q2', 't20-reuse'),
    't20-reuse',
    'once expired, the id can be used again'
);
select results_eq(
    $$
    select workflow_name, task_queue, args, status, result, created_at, completed_at, expire_at
    from jobs where id = 't20-reuse'
    $$,
    $$
    values (
        'greet2', 't20-q2', '["new"]'::jsonb, 'pending', null::jsonb,
        '2020-01-01 00:01:00+00'::timestamptz, null::timestamptz, null::timestamptz
    )
    $$,
    'the new job replaced the expired one'
);
select is(
    (select count(*)::integer from steps where job_id = 't20-reuse'),
    0,
    'the expired job''s steps are gone'
);
select results_eq(
    $$select name, task_queue, state from tasks where job_id = 't20-reuse'$$,
    $$values ('greet2', 't20-q2', 'ready')$$,
    'the new job has its own single activation task'
);

-- A failed workflow is reusable after expiry too.
do $$
begin
    perform start_workflow('greet', '[]', 't20-q', 't20-reuse-failed', null, '{"expire": 0}');
    perform _transition('t20-reuse-failed', 'running');
    perform _transition('t20-reuse-failed', 'failed', null, '{"code": 597}');
end
$$;
select lives_ok(
    $$select start_workflow('greet', '[]', 't20-q', 't20-reuse-failed')$$,
    'a failed workflow with expire 0 frees its id at once'
);
select is(workflow_status('t20-reuse-failed'), 'pending', 'the new run is pending');

-- ------------------------------------------------------------------ status and outcome

select is(workflow_status('t20-a'), 'pending', 'workflow_status of a new workflow');
do $$
begin
    perform start_workflow('greet', '[]', 't20-q', 't20-done');
    perform _transition('t20-done', 'running');
    perform _transition('t20-done', 'completed', '{"greeting": "hi"}');
end
$$;
select results_eq(
    $$select * from workflow_outcome('t20-done')$$,
    $$values ('completed', '{"greeting": "hi"}'::jsonb, null::jsonb)$$,
    'workflow_outcome of a completed workflow: its result'
);
do $$
begin
    perform start_workflow('greet', '[]', 't20-q', 't20-failed');
    perform _transition('t20-failed', 'running');
    perform _transition('t20-failed', 'failed', null, '{"code": 597, "message": "boom"}');
end
$$;
select results_eq(
    $$select * from workflow_outcome('t20-failed')$$,
    $$values ('failed', null::jsonb, '{"code": 597, "message": "boom"}'::jsonb)$$,
    'workflow_outcome of a failed workflow: its error'
);
select throws_ok(
    $$select workflow_status('t20-nope')$$, 'HM002', 'workflow "t20-nope" not found',
    'workflow_status of an unknown workflow'
);
select throws_ok(
    $$select * from workflow_outcome('t20-nope')$$, 'HM002', 'workflow "t20-nope" not found',
    'workflow_outcome of an unknown workflow'
);

select * from finish();

rollback;
