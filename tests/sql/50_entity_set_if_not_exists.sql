-- entity_set_if_not_exists: sets the value only when the path does not exist and returns the
-- value at the path afterwards. An existing JSON null counts as existing (as in the seed).
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(12);

select pg_temp.start('t50-q', 'e1');

select is(entity_set_if_not_exists('e1', 'k', '1'), '1'::jsonb, 'sets a missing key');
select is(entity_set_if_not_exists('e1', 'k', '2'), '1'::jsonb, 'keeps an existing one');
select is(pg_temp.doc(), '{"k": 1}'::jsonb, 'and does not change it');
select is(
    entity_set_if_not_exists('e1', 'owner.name', '"ops1"'), '"ops1"'::jsonb,
    'creates missing intermediate objects'
);
do $$
begin
    perform entity_set('e1', 'null', 'nul');
    perform entity_set('e1', '[1]', 'arr');
end
$$;
select is(
    entity_set_if_not_exists('e1', 'nul', '"x"'), 'null'::jsonb,
    'seed 4.3: an existing JSON null counts as existing'
);
select is(pg_temp.doc() -> 'nul', 'null'::jsonb, 'the null is kept');
select is(
    entity_set_if_not_exists('e1', 'arr.0', '5'), '1'::jsonb, 'an existing array element'
);

create temp table before_errors on commit drop as select pg_temp.doc() as doc;
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select entity_set_if_not_exists('e1', 'arr.3', '5')$$, 'HM007', 'entity set_if_not_exists: path "arr.3" does not exist: index 3 is out of range for "arr" (length 1)', 'array elements are never created'),
    ($$select entity_set_if_not_exists('e1', 'k.x', '5')$$, 'HM008', 'entity set_if_not_exists: cannot create path "k.x": "k" is a number, not an object', 'a scalar parent'),
    ($$select entity_set_if_not_exists('e1', 'new', null)$$, '22023', null, 'SQL null is not a value'),
    ($$select entity_set_if_not_exists('nope', 'k', '1')$$, 'HM002', 'workflow "nope" not found', 'unknown workflow')
) as t (call, sqlstate, message, description);
select is(pg_temp.doc(), (select doc from before_errors), 'the errors changed nothing');

select * from finish();
rollback;
