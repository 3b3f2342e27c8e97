-- The installed app schema (hotmesh migrate --app $(APP)): its tables, keys and indexes, the
-- engine's API with its exact signatures, every function pinned to the schema, the engine
-- clock (_now) that tests move with hotmesh.fake_now.
begin;
\ir _preamble.psql

select plan(49);

select has_schema(:'app', 'the app schema exists');
select has_table(:'app', 'schema_migrations', 'schema_migrations');
select has_table(:'app', 'jobs', 'jobs');
select has_table(:'app', 'steps', 'steps');
select has_table(:'app', 'tasks', 'tasks');
select has_type(:'app', 'claimed_task', 'the claimed_task type');
select results_eq(
    $$select version, name from schema_migrations where version = 1$$,
    $$values (1, '0001_init.sql')$$,
    'migration 1 is recorded'
);

-- ------------------------------------------------------------------ keys and indexes

select col_is_pk(:'app', 'jobs', array['id'], 'jobs are keyed by the workflow id');
select col_is_pk(
    :'app', 'steps', array['job_id', 'thread', 'seq'], 'steps are keyed (job_id, thread, seq)'
);
select has_index(
    :'app', 'tasks', 'tasks_claim', array['task_queue', 'priority', 'key_rank', 'run_at', 'id'],
    'the claim index: (task_queue, priority, key_rank, run_at, id)'
);
select ok(
    (
        select
            pg_get_indexdef(indexrelid) like '%(task_queue, priority DESC, key_rank NULLS FIRST, run_at, id)%'
            and pg_get_expr(indpred, indrelid) = '(state <> ''dead''::text)'
        from pg_index where indexrelid = 'tasks_claim'::regclass
    ),
    'the claim index is ordered as claims are (priority desc) and leaves dead tasks out'
);
select index_is_unique(
    :'app', 'tasks', 'tasks_job', 'one task per (job, thread, step); one activation per thread'
);
select throws_ok(
    $$insert into tasks (job_id, thread, kind, name, task_queue)
      values ('twice', 'main', 'workflow', 'w', 'q'), ('twice', 'main', 'workflow', 'w', 'q')$$,
    '23505', null, 'a second activation task for the same thread is refused (nulls not distinct)'
);
select throws_ok(
    $$insert into tasks (job_id, thread, kind, name, task_queue)
      values ('noseq', 'main', 'activity', 'a', 'q')$$,
    '23514', null, 'an activity task names its step (seq); an activation has none'
);
select has_index(:'app', 'jobs', 'jobs_expire_at', 'jobs_expire_at (retention)');

-- ------------------------------------------------------------------ the API

select
    has_function(
        :'app', f.name, f.args, format('%s(%s)', f.name, array_to_string(f.args, ', '))
    )
from (
    values
    ('start_workflow', array['text', 'jsonb', 'text', 'text', 'text', 'jsonb']),
    ('workflow_status', array['text']),
    ('workflow_outcome', array['text']),
    (
        'claim_tasks',
        array['text[]', 'text', 'integer', 'interval', 'text', 'integer', 'interval']
    ),
    ('next_due', array['text[]']),
    ('complete_task', array['bigint', 'uuid', 'jsonb']),
    ('fail_task', array['bigint', 'uuid', 'jsonb']),
    ('suspend_task', array['bigint', 'uuid']),
    ('suspend_tasks', array['jsonb']),
    ('bury_task', array['bigint', 'uuid', 'jsonb']),
    ('heartbeat', array['bigint[]', 'uuid[]', 'interval']),
    ('release_tasks', array['bigint[]', 'uuid[]']),
    (
        'record_step',
        array['bigint', 'uuid', 'integer', 'text', 'text', 'jsonb', 'jsonb', 'jsonb', 'jsonb']
    ),
    (
        'schedule_activity',
        array['bigint', 'uuid', 'integer', 'text', 'jsonb', 'text', 'jsonb', 'text']
    ),
    ('schedule_sleep', array['bigint', 'uuid', 'integer', 'numeric']),
    ('retry_delay', array['jsonb', 'integer'])
) as f (name, args);

select function_returns(
    :'app', 'start_workflow', array['text', 'jsonb', 'text', 'text', 'text', 'jsonb'], 'text',
    'start_workflow returns the workflow id'
);
select function_returns(
    :'app', 'claim_tasks',
    array['text[]', 'text', 'integer', 'interval', 'text', 'integer', 'interval'],
    'setof claimed_task', 'claim_tasks returns claimed_task rows'
);
select function_returns(
    :'app', 'heartbeat', array['bigint[]', 'uuid[]', 'interval'], 'bigint[]',
    'heartbeat returns the ids still held'
);
select function_returns(
    :'app', 'retry_delay', array['jsonb', 'integer'], 'interval',
    'retry_delay returns an interval'
);

-- ------------------------------------------------------------------ engine_version

select results_eq(
    $$select migration from engine_version()$$,
    $$select max(version) from schema_migrations$$,
    'engine_version() names the newest migration applied'
);
select matches(
    (select version from engine_version()), '^[0-9]+\.[0-9]+\.[0-9]+',
    'engine_version() names the hotmesh release'
);
select ok(
    has_function_privilege(:'app' || '_app', 'engine_version()', 'execute')
    and has_function_privilege(:'app' || '_worker', 'engine_version()', 'execute'),
    'the application and worker roles may call engine_version()'
);

-- Every function a caller can reach runs with the app schema as its search_path, whoever
-- calls it. Procedures that COMMIT cannot have a SET clause; their bodies name the schema
-- instead (prune: see 71_retention.sql). Private helpers (`_name`) that no role may execute
-- inherit the pinned path of the engine function that calls them (99_grants.sql).
select is_empty(
    $$
    select p.oid::regprocedure::text
    from pg_proc as p
    where
        p.pronamespace = current_schema()::regnamespace
        and p.prokind <> 'p'
        and not coalesce(format('search_path=%s, pg_temp', current_schema()) = any(p.proconfig), false)
        and (
            p.proname !~ '^_'
            or exists (
                select from aclexplode(p.proacl) as a
                where a.grantee <> p.proowner
            )
        )
    $$,
    'every function a caller can reach pins search_path to the app schema, pg_temp'
);

-- Called by its qualified name from a session whose search_path does not include the schema.
set local search_path = public;
select lives_ok(
    format($$select %I.start_workflow('w', '[]', 't10-q', 't10-elsewhere')$$, :'app'),
    'start_workflow works from any search_path'
);
select results_eq(
    format($$select job_id, thread from %I.claim_tasks(array['t10-q'], 'worker-1', 1)$$, :'app'),
    $$values ('t10-elsewhere', 'main')$$,
    'so does claim_tasks'
);
set local search_path = :"app", public;

-- ------------------------------------------------------------------ constraints

select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$update jobs set status = 'done' where id = 't10-elsewhere'$$, '23514', null, 'a job status outside the state machine is refused by the table'),
    ($$update tasks set state = 'done' where job_id = 't10-elsewhere'$$, '23514', null, 'a task state outside the state machine is refused by the table'),
    ($$insert into tasks (job_id, thread, kind, name, task_queue) values ('t10-elsewhere', 'main', 'workflow', 'w', 't10-q')$$, '23505', null, 'a second activation task for a thread is refused by the table')
) as t (call, sqlstate, message, description);
select lives_ok(
    $$insert into tasks (job_id, thread, kind, name, task_queue, seq)
      values ('t10-elsewhere', 'main', 'activity', 'a', 't10-q', 1),
             ('t10-elsewhere', 'main', 'activity', 'b', 't10-q', 2)$$,
    'a thread may have many activity tasks'
);

-- ------------------------------------------------------------------ the engine clock

select is(_now(), now(), '_now() is now() when hotmesh.fake_now is not set');
set local "hotmesh.fake_now" = '2001-02-03 04:05:06.789+00';
select is(_now(), '2001-02-03 04:05:06.789+00'::timestamptz, '_now() follows hotmesh.fake_now');
set local "hotmesh.fake_now" = '2031-02-03 04:05:06+00';
select is(_now(), '2031-02-03 04:05:06+00'::timestamptz, '... forwards and backwards');
set local "hotmesh.fake_now" = '';
select is(_now(), now(), 'an empty hotmesh.fake_now is unset');

select * from finish();

rollback;
