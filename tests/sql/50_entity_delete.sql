-- entity_delete: removes the key or array element at a path and returns the new entity. A path
-- that does not exist is HM007 (not a silent no-op); nothing is ever nulled.
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(14);

select pg_temp.start('t50-q', 'e1');
do $$
begin
    perform entity_set('e1', '{"a": {"b": 1, "c": [1, 2, 3]}, "k": null, "x.y": 1, "s": "t"}');
end
$$;

select is(
    entity_delete('e1', 'a.b'), '{"a": {"c": [1, 2, 3]}, "k": null, "x.y": 1, "s": "t"}'::jsonb,
    'deletes a nested key and returns the new entity'
);
select is(
    entity_delete('e1', 'a.c.1') -> 'a', '{"c": [1, 3]}'::jsonb,
    'an integer segment deletes an array element'
);
select is(entity_delete('e1', 'k') ? 'k', false, 'a key holding null is deleted');
select is(entity_delete('e1', '["x.y"]') ? 'x.y', false, 'a key with a dot, by array path');
select is(
    entity_delete('e1', 'a'), '{"s": "t"}'::jsonb, 'deleting a whole subtree'
);

select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select entity_delete('e1', 'gone')$$, 'HM007', 'entity delete: path "gone" does not exist: the entity has no key "gone"', 'a missing key is HM007'),
    ($$select entity_delete('e1', 'a.b.c')$$, 'HM007', 'entity delete: path "a.b.c" does not exist: the entity has no key "a"', 'a missing intermediate is HM007 naming the first missing key'),
    ($$select entity_delete('e1', 's.x')$$, 'HM007', 'entity delete: path "s.x" does not exist: "s" is a string', 'a path through a scalar does not exist'),
    ($$select entity_delete('e1', null)$$, 'HM007', 'entity delete: a path is required', 'delete needs a path (the entity itself cannot be deleted)'),
    ($$select entity_delete('e1', '[]')$$, 'HM007', 'entity path is empty', 'an empty path'),
    ($$select entity_delete('nope', 'a')$$, 'HM002', 'workflow "nope" not found', 'unknown workflow')
) as t (call, sqlstate, message, description);
select is(pg_temp.doc(), '{"s": "t"}'::jsonb, 'the errors changed nothing');
select is(entity_delete('e1', 's'), '{}'::jsonb, 'deleting the last key leaves {} (never null)');
select is(
    (select count(*)::integer from steps where job_id = 'e1' and name = 'delete'), 6,
    'each successful delete is recorded, failures are not'
);

select * from finish();
rollback;
