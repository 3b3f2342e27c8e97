-- entity_history: every change of an entity, from workflow threads and SQL callers, in the
-- order applied (entity_version, assigned under the job's row lock), with the operation, its
-- operand and result, who made it, when, and the document after it. Reads and failed
-- operations are not changes.
begin;
\ir _preamble.psql
\ir _fixtures.psql
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(10);

create temp table claimed on commit drop as
select * from pg_temp.start_claimed('t50-hist', 'e1', 'worker-7');

do $$
begin
    perform pg_temp.step(1, 'set', null, '{"stage": "intake", "notes": []}');
    perform set_config('hotmesh.fake_now', '2020-01-01 00:00:01+00', true);
    perform entity_append('e1', 'notes', '"from sql"');
    perform entity_get('e1');
    perform pg_temp.step(2, 'get', null, null);
    perform set_config('hotmesh.fake_now', '2020-01-01 00:00:02+00', true);
    perform pg_temp.step(3, 'merge', null, '{"stage": "review"}');
    perform pg_temp.step(4, 'toggle', 'stage', null);  -- fails: a string
    perform entity_increment('e1', '["a.b"]', 2);
    perform pg_temp.step(5, 'delete', 'notes.0', null);
end
$$;

select results_eq(
    $$select version, thread, seq, op, path, value, result from entity_history('e1')$$,
    $$
    values
        (1::bigint, 'main', 1, 'set', null::text[], '{"stage": "intake", "notes": []}'::jsonb,
         '{"stage": "intake", "notes": []}'::jsonb),
        (2, 'sql', 1, 'append', array['notes'], '"from sql"', '["from sql"]'),
        (3, 'main', 3, 'merge', null, '{"stage": "review"}',
         '{"stage": "review", "notes": ["from sql"]}'),
        (4, 'sql', 2, 'increment', array['a.b'], '2', '2'),
        (5, 'main', 5, 'delete', array['notes', '0'], null,
         '{"stage": "review", "notes": [], "a.b": 2}')
    $$,
    'changes from both threads, in the order applied; reads and the failure are not listed'
);
select results_eq(
    $$select version, document from entity_history('e1')$$,
    $$
    values
        (1::bigint, '{"stage": "intake", "notes": []}'::jsonb),
        (2, '{"stage": "intake", "notes": ["from sql"]}'),
        (3, '{"stage": "review", "notes": ["from sql"]}'),
        (4, '{"stage": "review", "notes": ["from sql"], "a.b": 2}'),
        (5, '{"stage": "review", "notes": [], "a.b": 2}')
    $$,
    'the entity as it was after every change'
);
select is(
    (select document from entity_history('e1') order by version desc limit 1),
    (select context from jobs where id = 'e1'),
    'the last document is the entity'
);
select results_eq(
    $$select caller like 'worker-7', thread from entity_history('e1') where thread = 'main'$$,
    $$values (true, 'main'), (true, 'main'), (true, 'main')$$,
    'workflow changes name the worker that made them'
);
select results_eq(
    $$select caller from entity_history('e1') where thread = 'sql'$$,
    $$
    select (session_user::text collate "default") || coalesce(' (' || nullif(current_setting('application_name'), '') || ')', '')
    from generate_series(1, 2)
    $$,
    'SQL changes name the database user (and application)'
);
select results_eq(
    $$select recorded_at from entity_history('e1')$$,
    $$
    values
        ('2020-01-01 00:00:00+00'::timestamptz), ('2020-01-01 00:00:01+00'),
        ('2020-01-01 00:00:02+00'), ('2020-01-01 00:00:02+00'), ('2020-01-01 00:00:02+00')
    $$,
    'each change says when (the engine clock)'
);
select is(
    (select count(*)::integer from steps where job_id = 'e1' and kind = 'entity'), 7,
    'the steps also hold the recorded read and the failure (for replay)'
);
select throws_ok(
    $$select * from entity_history('nope')$$, 'HM002', 'workflow "nope" not found',
    'unknown workflow'
);

do $$
begin
    perform start_workflow('w', '[]', 't50-hist', 'e2');
end
$$;
select is_empty($$select * from entity_history('e2')$$, 'an untouched entity has no history');
select is(
    (select array_agg(version order by version) from entity_history('e1')),
    array[1, 2, 3, 4, 5]::bigint[], 'versions are 1..n without gaps'
);

select * from finish();
rollback;
