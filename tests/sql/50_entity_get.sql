-- entity_get: the whole entity, or the value at a path: SQL null when the path does not exist
-- (whatever stops it), JSON null when it holds null. A read takes no lock and records nothing.
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(17);

select pg_temp.start('t50-q', 'e1');

select is(entity_get('e1'), '{}'::jsonb, 'a new entity is {}');
do $$
begin
    perform entity_set('e1', '{"a": {"b": [10, {"c": "deep"}]}, "n": null, "a.b": 7, "s": "x"}');
end
$$;

select is(
    entity_get('e1'), '{"a": {"b": [10, {"c": "deep"}]}, "n": null, "a.b": 7, "s": "x"}'::jsonb,
    'no path: the whole entity'
);
select is(entity_get('e1', null), entity_get('e1'), 'a null path is the whole entity');
select is(entity_get('e1', 'a.b.0'), '10'::jsonb, 'an integer segment indexes an array');
select is(entity_get('e1', 'a.b.1.c'), '"deep"'::jsonb, 'through arrays and objects');
select is(entity_get('e1', '["a.b"]'), '7'::jsonb, 'a key with a dot, as a JSON array path');
select is(entity_get('e1', '["a", "b", 1, "c"]'), '"deep"'::jsonb, 'whole numbers in arrays');
select is(entity_get('e1', 'n'), 'null'::jsonb, 'a stored null is JSON null');
select ok(entity_get('e1', 'missing') is null, 'a missing key is SQL null');
select ok(entity_get('e1', 'a.b.5') is null, 'an index past the end is SQL null');
select ok(entity_get('e1', 'a.b.x') is null, 'a non-index segment on an array is SQL null');
select ok(entity_get('e1', 's.x') is null, 'a path through a string is SQL null');
select throws_ok(
    $$select entity_get('e1', 'a..b')$$, 'HM007',
    'entity path "a..b" has an empty segment', 'a malformed path is still an error'
);
select throws_ok(
    $$select entity_get('nope')$$, 'HM002', 'workflow "nope" not found', 'unknown workflow'
);
select is(
    (select count(*)::integer from steps where job_id = 'e1'), 1,
    'reads are not recorded (only the set is)'
);

select is(entity_get('e1', 'a'), '{"b": [10, {"c": "deep"}]}'::jsonb, 'a sub-object');

-- a finished workflow whose retention ran out no longer exists, for reads as for writes
update jobs set status = 'completed', expire_at = '2000-01-01' where id = 'e1';
select throws_ok(
    $$select entity_get('e1')$$, 'HM002', 'workflow "e1" not found',
    'an expired workflow is not found'
);

select * from finish();
rollback;
