-- Changing running code: record_patch (a marker step, answered again on replay, HM006 against
-- another call, bad ids), the workflow_patches view (runs with and without a marker, live and
-- finished, deprecated), export_workflow (the whole history as one document, HM002) and
-- export_workflows (selection, bad statuses and limits).
begin;
\ir _preamble.psql
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(29);

select start_workflow('order', '[1]', 'q', 'new');
select start_workflow('order', '[2]', 'q', 'old');
select start_workflow('other', '[]', 'q', 'other');
create temp table held on commit drop as
select
    job_id,
    task_id,
    lease_token
from claim_tasks(array['q'], 'tester', 3);

create function pg_temp.task(p_job text) returns bigint
language sql as $$ select task_id from held where job_id = p_job $$;
create function pg_temp.token(p_job text) returns uuid
language sql as $$ select lease_token from held where job_id = p_job $$;

select is(
    record_patch(pg_temp.task('new'), pg_temp.token('new'), 1, 'fraud-check', false)
    - 'due',
    '{"seq": 1, "kind": "patch", "name": "fraud-check", "status": "completed", '
    '"output": true, "error": null, "attempt": 1}',
    'record_patch records a completed marker step named by the patch id'
);
select is(
    (select input from steps where job_id = 'new' and seq = 1),
    '{"deprecated": false}',
    'its input says whether deprecate_patch recorded it'
);
select is(
    record_patch(pg_temp.task('new'), pg_temp.token('new'), 1, 'fraud-check', true) ->> 'kind',
    'patch',
    'asked again at a recorded position, the recorded marker answers (deprecated or not)'
);
select is(
    (select count(*)::integer from steps where job_id = 'new'), 1, 'and nothing new is recorded'
);
select throws_ok(
    format(
        'select record_patch(%s, %L, 1, %L, false)', pg_temp.task('new'),
        pg_temp.token('new'), 'other-patch'
    ),
    'HM006',
    'non-determinism in workflow "new" thread main: step 1 was recorded as patch '
    '"fraud-check" but the code now calls patch "other-patch"',
    'another patch at a recorded position is non-determinism'
);
select record_step(
    pg_temp.task('old'), pg_temp.token('old'), 1, 'activity', 'prepare', '[2]',
    '20'
);
select throws_ok(
    format(
        'select record_patch(%s, %L, 1, %L, false)', pg_temp.task('old'),
        pg_temp.token('old'), 'fraud-check'
    ),
    'HM006', null, 'a marker where the run recorded another call is non-determinism'
);
select throws_ok(
    format(
        'select record_patch(%s, %L, 2, %L, false)', pg_temp.task('old'),
        pg_temp.token('old'), ''
    ),
    '22023', 'patch id must be a non-empty text', 'an empty patch id is refused'
);
select throws_ok(
    format(
        'select record_patch(%s, %L, 2, null, false)', pg_temp.task('old'),
        pg_temp.token('old')
    ),
    '22023', 'patch id must be a non-empty text', 'a null patch id is refused'
);
select throws_ok(
    format(
        'select record_patch(%s, %L, 2, %L, false)', pg_temp.task('old'),
        pg_temp.token('old'), repeat('p', 256)
    ),
    '22023', 'patch id is 256 characters long; at most 255', 'a patch id over 255 characters'
);
select throws_ok(
    format(
        'select record_patch(%s, %L, 2, %L, null)', pg_temp.task('old'),
        pg_temp.token('old'), 'p'
    ),
    '22023', 'patch "p": deprecated must be true or false, not null', 'deprecated is required'
);
select throws_ok(
    format(
        'select record_patch(%s, %L, 2, %L, false)', pg_temp.task('old'),
        gen_random_uuid(), 'p'
    ),
    'HM004', null, 'a marker is fenced by the lease token like every step'
);
select is(
    (select count(*)::integer from steps where job_id = 'old'), 1, 'refused calls record nothing'
);

select results_eq(
    'select workflow_name, patch_id, with_marker, without_marker, finished_with_marker,
            deprecated from workflow_patches',
    $$values ('order', 'fraud-check', 1::bigint, 1::bigint, 0::bigint, false)$$,
    'workflow_patches: one live run on the new branch, one without the marker'
);
select complete_task(pg_temp.task('old'), pg_temp.token('old'), '"done"');
select results_eq(
    'select with_marker, without_marker, finished_with_marker from workflow_patches',
    $$values (1::bigint, 0::bigint, 0::bigint)$$,
    'a run without the marker that finished is not counted: the old branch has no run left'
);
select start_workflow('order', '[3]', 'q', 'newer');
select record_patch(task_id, lease_token, 1, 'fraud-check', true)
from claim_tasks(array['q'], 'tester', 1);
select complete_task(pg_temp.task('new'), pg_temp.token('new'), '"done"');
select results_eq(
    'select with_marker, without_marker, finished_with_marker, deprecated
       from workflow_patches',
    $$values (1::bigint, 0::bigint, 1::bigint, true)$$,
    'runs that recorded the marker, live and finished; deprecate_patch recorded one'
);

select entity_set('new', '{"stage": "approved"}');
select is(
    (select
        jsonb_build_object(
            'format', d -> 'format', 'version', d -> 'version',
            'id', d -> 'workflow' -> 'id',
            'status', d -> 'workflow' -> 'status'
        )
    from export_workflow('new') as d),
    '{"format": "hotmesh-export", "version": 1, "id": "new", "status": "completed"}',
    'export_workflow: the workflow row as it is'
);
select is(
    (select jsonb_path_query_array(d, '$.steps[*].kind') from export_workflow('new') as d),
    '["patch", "entity"]',
    'every step of every thread (the SQL caller''s entity change in thread "sql")'
);
select is(
    (select
        d -> 'steps' -> 0 ?& array[
            'thread', 'seq', 'input', 'output', 'error', 'attempt',
            'created_at', 'completed_at'
        ]
    from export_workflow('new') as d),
    true,
    'steps carry their inputs, outcomes, attempts and times'
);
select is(
    (select d -> 'entity_history' -> 0 -> 'document' from export_workflow('new') as d),
    '{"stage": "approved"}',
    'every entity version'
);
select is(
    (select jsonb_build_array(d -> 'threads', d -> 'children') from export_workflow('new') as d),
    '[[], []]',
    'its hook threads and children (none here)'
);
select throws_ok(
    'select export_workflow(''nope'')', 'HM002', 'workflow "nope" not found',
    'an unknown workflow is HM002'
);

select is(
    (
        select array_agg(d -> 'workflow' ->> 'id' order by d -> 'workflow' ->> 'id')
        from export_workflows(array['order'], array['completed']) as d
    ),
    array['new', 'old'],
    'export_workflows selects by workflow name and status'
);
select is(
    (select count(*)::integer from export_workflows(null, null, null, 1)), 1,
    'at most p_limit of them'
);
select throws_ok(
    'select export_workflows(null, array[''parked''])', '22023',
    'unknown workflow status "parked" (known: pending, running, waiting, completed, failed, '
    'cancelled)',
    'an unknown status is refused'
);
select throws_ok(
    'select export_workflows(null, null, null, 0)', '22023', 'limit must be >= 1, not 0',
    'a limit below 1 is refused'
);

-- Build ids: the claim that starts a main activation records the worker's build and hands
-- the worker the one it replaces.
select start_workflow('order', '[4]', 'bq', 'built');
select is(
    (select payload ->> 'build_id' from claim_tasks(array['bq'], 'tester', 1, '30 seconds', 'build-1')),
    null,
    'a first activation replaces no build'
);
select is(
    (select build_id from workflows where id = 'built'), 'build-1',
    'the workflows view shows the build of the last activation'
);
select wait_signal(t.id, t.lease_token, 1, 'go', null)
from tasks as t where t.job_id = 'built';
select suspend_task(t.id, t.lease_token)
from tasks as t where t.job_id = 'built';
select signal('go', '1', 'built');
select is(
    (select payload ->> 'build_id' from claim_tasks(array['bq'], 'tester', 1, '30 seconds', 'build-2')),
    'build-1',
    'the next activation is handed the build that recorded the history so far'
);
select throws_ok(
    format(
        'select claim_tasks(array[%L], %L, 1, %L, %L)', 'bq', 'tester', '30 seconds',
        repeat('b', 256)
    ),
    '22023', 'build id is 256 characters long; at most 255', 'a build id over 255 characters'
);

select * from finish();
rollback;
