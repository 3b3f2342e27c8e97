-- entity_toggle: flips the boolean at a path (missing becomes true, with missing intermediate
-- objects created) and returns the new value. A non-boolean is HM008 (the seed swallowed the
-- error); nothing changes.
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(12);

select pg_temp.start('t50-q', 'e1');

select is(entity_toggle('e1', 'f'), true, 'seed 4.3: toggle(f) on {} gives true');
select is(pg_temp.doc(), '{"f": true}'::jsonb, 'stored as a JSON boolean');
select is(entity_toggle('e1', 'f'), false, 'true becomes false');
select is(entity_toggle('e1', 'f'), true, 'and back');
select is(entity_toggle('e1', 'flags.urgent'), true, 'missing parents are created');
select is(pg_temp.doc() -> 'flags', '{"urgent": true}'::jsonb, 'as objects');

do $$
begin
    perform entity_set('e1', '{"n": 0, "s": "true", "z": null}', 'bad');
end
$$;
create temp table before_errors on commit drop as select pg_temp.doc() as doc;
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select entity_toggle('e1', 'bad.n')$$, 'HM008', 'entity toggle: "bad.n" is a number, not a boolean', '0 is not false'),
    ($$select entity_toggle('e1', 'bad.s')$$, 'HM008', 'entity toggle: "bad.s" is a string, not a boolean', '"true" is not true'),
    ($$select entity_toggle('e1', 'bad.z')$$, 'HM008', 'entity toggle: "bad.z" is null, not a boolean', 'null is not false'),
    ($$select entity_toggle('e1', 'f.x')$$, 'HM008', 'entity toggle: cannot create path "f.x": "f" is a boolean, not an object', 'a boolean parent'),
    ($$select entity_toggle('nope', 'f')$$, 'HM002', 'workflow "nope" not found', 'unknown workflow')
) as t (call, sqlstate, message, description);
select is(pg_temp.doc(), (select doc from before_errors), 'the errors changed nothing');

select * from finish();
rollback;
