-- entity_set: replaces the whole entity (a JSON object) or, with a path, the value there,
-- creating missing intermediate objects; returns the new entity. Arrays are never padded, a
-- scalar in the way is HM008, the entity itself must stay an object; every error changes
-- nothing and records nothing.
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(31);

select pg_temp.start('t50-q', 'e1');

select is(pg_temp.doc(), '{}'::jsonb, 'a new workflow has the empty entity {}');
select is(
    entity_set('e1', '{"caseId": "A42", "stage": "intake", "notes": [], "n": 1.50}'),
    '{"caseId": "A42", "stage": "intake", "notes": [], "n": 1.50}'::jsonb,
    'set returns the new entity'
);
select is(
    pg_temp.doc(), '{"caseId": "A42", "stage": "intake", "notes": [], "n": 1.50}'::jsonb,
    'the entity is jobs.context'
);
select is(
    (select jsonb_typeof(context -> 'n') || ' ' || (context ->> 'n') from jobs where id = 'e1'),
    'number 1.50', 'numbers stay JSON numbers, as written'
);
select is(
    entity_set('e1', '{"stage": "approval"}'), '{"stage": "approval"}'::jsonb,
    'set without a path replaces the whole entity (no merge)'
);

-- with a path: one set a row, in this order; part is what of the new entity is compared
select is(entity_set('e1', t.value::jsonb, t.path) #> t.part, t.expected::jsonb, t.description)
from (
    values
    ('5', 'a.b.c', '{}'::text[], '{"stage": "approval", "a": {"b": {"c": 5}}}', 'set with a path creates the missing intermediate objects'),
    ('"x"', 'a.b', '{}', '{"stage": "approval", "a": {"b": "x"}}', 'set with a path replaces an existing value (an object with it)'),
    ('null', 'a.b', '{}', '{"stage": "approval", "a": {"b": null}}', 'set to JSON null stores null (it does not delete the key)'),
    ('[1, 2, 3]', 'list', '{list}', '[1, 2, 3]', 'set can store an array under a key'),
    ('9', 'list.1', '{list}', '[1, 9, 3]', 'an integer segment indexes an array: list.1 replaces the second element')
) as t (value, path, part, expected, description);
select is(
    entity_set('e1', '{"k": 1}', 'list.2.deep') -> 'list', '[1, 9, {"deep": {"k": 1}}]'::jsonb,
    'a path goes through an array element (list.2, made an object first) and creates below it'
) from (select entity_set('e1', '{}', 'list.2')) as prepare;
select is(entity_set('e1', t.value::jsonb, t.path) #> t.part, t.expected::jsonb, t.description)
from (
    values
    ('true', '["a.b", "c"]', '{a.b}'::text[], '{"c": true}', 'a JSON array of segments addresses a key that contains a dot'),
    ('1', 'obj.0', '{obj}', '{"0": 1}', 'on an object a numeric segment is a key'),
    ('2', '["obj", 0]', '{obj}', '{"0": 2}', 'a whole number in a segment array is the same key')
) as t (value, path, part, expected, description);

select is(
    (select count(*)::integer from steps where job_id = 'e1' and thread = 'sql'), 12,
    'each set is one step of thread sql'
);

-- errors: nothing changes, nothing is recorded
create temp table before_errors on commit drop as select pg_temp.doc() as doc;

select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select entity_set('e1', '1', 'list.7')$$, 'HM007', 'entity set: path "list.7" does not exist: index 7 is out of range for "list" (length 3)', 'an index past the end of an array is HM007: arrays are never padded with nulls'),
    ($$select entity_set('e1', '1', 'list.x')$$, 'HM007', 'entity set: path "list.x" does not exist: "list" is an array and "x" is not an index', 'a non-index segment on an array is HM007'),
    ($$select entity_set('e1', '1', 'stage.x')$$, 'HM008', 'entity set: cannot create path "stage.x": "stage" is a string, not an object', 'a scalar in the way is HM008 naming the path and the type found'),
    ($$select entity_set('e1', '1', 'a.b.c')$$, 'HM008', 'entity set: cannot create path "a.b.c": "a.b" is null, not an object', 'JSON null in the way is a value, not a missing key: HM008'),
    ($$select entity_set('e1', '[1, 2]')$$, 'HM008', 'entity set: the entity must be a JSON object, not an array', 'the entity itself must be an object: an array is refused'),
    ($$select entity_set('e1', 'null')$$, 'HM008', 'entity set: the entity must be a JSON object, not null', 'JSON null cannot replace the entity'),
    ($$select entity_set('e1', '"text"')$$, 'HM008', 'entity set: the entity must be a JSON object, not a string', 'a string cannot replace the entity'),
    ($$select entity_set('e1', null)$$, '22023', 'entity set: a value is required (SQL null; JSON null is ''null''::jsonb)', 'SQL null is not a value'),
    ($$select entity_set('e1', '{bad json')$$, '22P02', null, 'invalid JSON is refused before anything runs'),
    ($$select entity_set('nope', '{}')$$, 'HM002', 'workflow "nope" not found', 'an unknown workflow id is HM002'),
    ($$select entity_set(null, '{}')$$, '22023', 'workflow id is required', 'a null workflow id is refused'),
    ($$select entity_set('e1', '1', '')$$, 'HM007', 'entity path is empty', 'an empty path is HM007')
) as t (call, sqlstate, message, description);
select is(pg_temp.doc(), (select doc from before_errors), 'no error changed the entity');
select is(
    (select count(*)::integer from steps where job_id = 'e1'), 12,
    'no failed call was recorded'
);
select is(
    (select entity_version from jobs where id = 'e1'), 12::bigint,
    'entity_version counts the changes'
);

-- the path is data, never SQL
select is(
    entity_set('e1', '1', 'x''); drop table jobs; --') -> 'x''); drop table jobs; --',
    '1'::jsonb, 'SQL-looking text in a path is just a key'
);

select * from finish();
rollback;
