-- entity_remove: removes element `index` (negative counts from the end) of the array at a path
-- and returns the new array. The seed set the WHOLE context to NULL when removing the only
-- element or removing at a missing path; here removing the last element leaves [] and a
-- missing path or index is HM007, the entity unchanged.
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(17);

select pg_temp.start('t50-q', 'e1');
do $$
begin
    perform entity_set('e1', '{"o": [1], "z": 1}');
end
$$;

select is(entity_remove('e1', 'o', 0), '[]'::jsonb, 'seed defect 4.3: removing the only element');
select is(pg_temp.doc(), '{"o": [], "z": 1}'::jsonb, 'leaves [] and the rest of the entity');

do $$
begin
    perform entity_set('e1', '["a", "b", "c", "d"]', 'l');
    perform entity_set('e1', '{"k": [[1, 2], [3]]}', 'deep');
end
$$;
select is(entity_remove('e1', 'l', 1), '["a", "c", "d"]'::jsonb, 'removes by index');
select is(entity_remove('e1', 'l', -1), '["a", "c"]'::jsonb, 'a negative index counts from the end');
select is(entity_remove('e1', 'l', -2), '["c"]'::jsonb, '-length is the first element');
select is(entity_remove('e1', 'deep.k.0', 0), '[2]'::jsonb, 'an array inside an array');
select is(pg_temp.doc() #> '{deep,k}', '[[2], [3]]'::jsonb, 'stored where it was');

create temp table before_errors on commit drop as select pg_temp.doc() as doc;
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select entity_remove('e1', 'missing', 0)$$, 'HM007', 'entity remove: path "missing" does not exist: the entity has no key "missing"', 'seed defect 4.3: a missing path is HM007, the entity is not nulled'),
    ($$select entity_remove('e1', 'l', 1)$$, 'HM007', 'entity remove: index 1 is out of range for "l" (length 1)', 'an index past the end is HM007 (the seed: silently unchanged)'),
    ($$select entity_remove('e1', 'l', -2)$$, 'HM007', 'entity remove: index -2 is out of range for "l" (length 1)', 'a negative index before the start is HM007'),
    ($$select entity_remove('e1', 'o', 0)$$, 'HM007', 'entity remove: index 0 is out of range for "o" (length 0)', 'an empty array has no element 0'),
    ($$select entity_remove('e1', 'z', 0)$$, 'HM008', 'entity remove: "z" is a number, not an array', 'removing from a number is HM008'),
    ($$select entity_remove('e1', 'deep', 0)$$, 'HM008', 'entity remove: "deep" is an object, not an array', 'removing from an object is HM008'),
    ($$select entity_remove('e1', 'l', null)$$, '22023', null, 'the index is required'),
    ($$select entity_remove('nope', 'l', 0)$$, 'HM002', 'workflow "nope" not found', 'unknown workflow')
) as t (call, sqlstate, message, description);
select is(pg_temp.doc(), (select doc from before_errors), 'no error changed (or nulled) anything');
select isnt(pg_temp.doc(), null, 'the entity is never null');

select * from finish();
rollback;
