-- entity_prepend: the mirror of append: adds a value as the first element of the array at a
-- path (created when missing); returns the new array. Same errors: HM008 onto a non-array.
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(12);

select pg_temp.start('t50-q', 'e1');

select is(entity_prepend('e1', 'a.b', '1'), '[1]'::jsonb, 'prepend(a.b) on {} creates it');
select is(pg_temp.doc(), '{"a": {"b": [1]}}'::jsonb, 'with its parents');
select is(entity_prepend('e1', 'a.b', '2'), '[2, 1]'::jsonb, 'the value comes first');
select is(
    entity_prepend('e1', 'a.b', '["x"]'), '[["x"], 2, 1]'::jsonb,
    'an array value is one element'
);
select is(entity_prepend('e1', 'a.b.0', 'null'), '[null, "x"]'::jsonb, 'into a nested array');

do $$
begin
    perform entity_set('e1', '{"k": 1}', 'obj');
    perform entity_set('e1', '7', 'num');
end
$$;
create temp table before_errors on commit drop as select pg_temp.doc() as doc;
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select entity_prepend('e1', 'obj', '1')$$, 'HM008', 'entity prepend: "obj" is an object, not an array', 'onto an object: HM008'),
    ($$select entity_prepend('e1', 'num', '1')$$, 'HM008', 'entity prepend: "num" is a number, not an array', 'onto a number: HM008'),
    ($$select entity_prepend('e1', 'num.x', '1')$$, 'HM008', 'entity prepend: cannot create path "num.x": "num" is a number, not an object', 'through a number: HM008'),
    ($$select entity_prepend('e1', 'a.b', null)$$, '22023', null, 'SQL null is not a value'),
    ($$select entity_prepend('nope', 'a', '1')$$, 'HM002', 'workflow "nope" not found', 'unknown workflow')
) as t (call, sqlstate, message, description);
select is(pg_temp.doc(), (select doc from before_errors), 'the errors changed nothing');
select is(
    (select count(*)::integer from steps where job_id = 'e1' and name = 'prepend'), 4,
    'each successful prepend is recorded once'
);

select * from finish();
rollback;
