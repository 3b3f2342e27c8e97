-- entity_append: adds a value as the last element of the array at a path (created, with any
-- missing intermediate objects, when the path does not exist); returns the new array. The seed
-- silently did nothing when a parent was missing and turned an object or scalar into
-- [old, value]; here both are asserted correct (created / HM008).
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(18);

select pg_temp.start('t50-q', 'e1');

select is(entity_append('e1', 'a.b', '1'), '[1]'::jsonb, 'seed defect 4.3: append(a.b) on {}');
select is(pg_temp.doc(), '{"a": {"b": [1]}}'::jsonb, 'creates the array and its parents');
-- One append a row, in this order.
select is(entity_append('e1', t.path, t.value::jsonb), t.result::jsonb, t.description)
from (
    values
    ('a.b', '"two"', '[1, "two"]', 'returns the new array'),
    ('a.b', '[3, 4]', '[1, "two", [3, 4]]', 'an array value is appended as one element'),
    ('a.b', '{"reviewer": "ops1"}', '[1, "two", [3, 4], {"reviewer": "ops1"}]', 'objects are elements too'),
    ('a.b', 'null', '[1, "two", [3, 4], {"reviewer": "ops1"}, null]', 'JSON null is appended as null'),
    ('a.b.2', '5', '[3, 4, 5]', 'an integer segment reaches a nested array'),
    ('["x.y"]', 'true', '[true]', 'a key with a dot')
) as t (path, value, result, description);

do $$
begin
    perform entity_set('e1', '{"o": {"k": 1}}', 'obj');
    perform entity_set('e1', '"text"', 's');
    perform entity_set('e1', 'null', 'n');
end
$$;
create temp table before_errors on commit drop as select pg_temp.doc() as doc;

select
    throws_ok(
        format($$select entity_append(%L, %L, %L)$$, t.id, t.path, t.value),
        t.sqlstate, t.message, t.description
    )
from (
    values
    ('e1', 'obj.o', '"n1"', 'HM008', 'entity append: "obj.o" is an object, not an array', 'seed defect 4.3: appending onto an object is HM008, not [old, value]'),
    ('e1', 's', '1', 'HM008', 'entity append: "s" is a string, not an array', 'appending onto a string is HM008'),
    ('e1', 'n', '1', 'HM008', 'entity append: "n" is null, not an array', 'appending onto null is HM008'),
    ('e1', 's.x', '1', 'HM008', 'entity append: cannot create path "s.x": "s" is a string, not an object', 'a scalar parent is HM008'),
    ('e1', 'a.b.9', '1', 'HM007', 'entity append: path "a.b.9" does not exist: index 9 is out of range for "a.b" (length 5)', 'an index past the end is HM007'),
    ('e1', 'a.b', null, '22023', null, 'SQL null is not a value'),
    ('e1', null, '1', 'HM007', 'entity append: a path is required', 'append needs a path'),
    ('nope', 'a', '1', 'HM002', 'workflow "nope" not found', 'unknown workflow')
) as t (id, path, value, sqlstate, message, description);
select is(pg_temp.doc(), (select doc from before_errors), 'the errors changed nothing');
select is(
    (select array_agg(name order by seq) from steps where job_id = 'e1' and name = 'append'),
    array['append', 'append', 'append', 'append', 'append', 'append', 'append'],
    'each successful append is recorded once, failures are not'
);

select * from finish();
rollback;
