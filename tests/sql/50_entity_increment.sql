-- entity_increment: adds an amount to the number at a path (missing counts as 0; missing
-- intermediate objects are created) and returns the new number, keeping JSON numeric type.
-- The seed did nothing when a parent was missing and swallowed errors (returned 0); here a
-- non-number is HM008 naming the path and the type found, nothing changed.
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(19);

select pg_temp.start('t50-q', 'e1');

select is(entity_increment('e1', 'm.c', 5), 5::numeric, 'seed defect 4.3: increment(m.c) on {}');
select is(pg_temp.doc(), '{"m": {"c": 5}}'::jsonb, 'creates the number and its parents');
select is(entity_increment('e1', 'm.c'), 6::numeric, 'the amount defaults to 1');
-- One increment a row, in this order.
select is(entity_increment('e1', t.path, t.amount), t.result, t.description)
from (
    values
    ('m.c', -10, -4::numeric, 'negative amounts'),
    ('m.c', 0.5, -3.5, 'fractions'),
    ('f', 0.1, 0.1, 'a new fraction'),
    ('f', 0.2, 0.3, 'exact decimal arithmetic: 0.1 + 0.2 = 0.3'),
    ('big', 1e20, 1e20, 'large numbers')
) as t (path, amount, result, description);
select is(
    (select jsonb_typeof(context #> '{m,c}') from jobs where id = 'e1'), 'number',
    'stored as a JSON number'
);
do $$
begin
    perform entity_set('e1', '[10, 20]', 'arr');
end
$$;
select is(entity_increment('e1', 'arr.1', 2), 22::numeric, 'an array element');

do $$
begin
    perform entity_set('e1', '"seven"', 's');
    perform entity_set('e1', 'true', 'b');
    perform entity_set('e1', 'null', 'n');
end
$$;
create temp table before_errors on commit drop as select pg_temp.doc() as doc;
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select entity_increment('e1', 's')$$, 'HM008', 'entity increment: "s" is a string, not a number', 'a string is HM008 (the seed swallowed the error and returned 0)'),
    ($$select entity_increment('e1', 'b')$$, 'HM008', 'entity increment: "b" is a boolean, not a number', 'a boolean is not a number'),
    ($$select entity_increment('e1', 'n')$$, 'HM008', 'entity increment: "n" is null, not a number', 'null is not a missing value: HM008'),
    ($$select entity_increment('e1', 'arr')$$, 'HM008', 'entity increment: "arr" is an array, not a number', 'an array is not a number'),
    ($$select entity_increment('e1', 's.x')$$, 'HM008', 'entity increment: cannot create path "s.x": "s" is a string, not an object', 'a scalar parent'),
    ($$select entity_increment('e1', 'm.c', 'NaN')$$, '22023', 'entity increment: the amount must be a finite number, not NaN', 'NaN is refused'),
    ($$select entity_increment('e1', 'm.c', null)$$, '22023', 'entity increment: the amount must be a finite number, not null', 'a null amount'),
    ($$select entity_increment('e1', 'm.c', 'abc')$$, '22P02', null, 'a non-numeric amount')
) as t (call, sqlstate, message, description);
select is(pg_temp.doc(), (select doc from before_errors), 'the errors changed nothing');

select * from finish();
rollback;
