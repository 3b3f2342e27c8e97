-- Idempotency keys of the SQL API: a retried call with the same key returns the first call's
-- result and changes nothing (even where repeating would now fail, e.g. a delete); the same
-- key with another operation or operand is refused; keys are per workflow; a failed call
-- records nothing, so its key stays free.
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(17);

select pg_temp.start('t50-q', 'e1', 'e2');

select is(entity_increment('e1', 'n', 5, 'pay-1'), 5::numeric, 'the first call applies');
select is(entity_increment('e1', 'n', 5, 'pay-1'), 5::numeric, 'a retry returns the same result');
select is(pg_temp.doc(), '{"n": 5}'::jsonb, 'and changes nothing');
select is(entity_increment('e1', 'n', 5, 'pay-2'), 10::numeric, 'another key applies again');
select is(entity_increment('e2', 'n', 5, 'pay-1'), 5::numeric, 'keys are per workflow');

select is(entity_append('e1', 'l', '"a"', 'k-app'), '["a"]'::jsonb, 'append with a key');
select is(entity_append('e1', 'l', '"a"', 'k-app'), '["a"]'::jsonb, 'retried: not appended twice');
select is(
    entity_delete('e1', 'l', 'k-del'), '{"n": 10}'::jsonb, 'delete with a key'
);
select is(
    entity_delete('e1', 'l', 'k-del'), '{"n": 10}'::jsonb,
    'a retried delete returns its first result instead of failing on the missing key'
);
select is(entity_toggle('e1', 'f', 'k-tog'), true, 'toggle with a key');
select is(entity_toggle('e1', 'f', 'k-tog'), true, 'retried: not toggled back');

select throws_ok(
    $$select entity_increment('e1', 'n', 6, 'pay-1')$$, '22023',
    'idempotency key "pay-1" of workflow "e1" was already used for entity increment {"path": ["n"], "value": 5}; a retry must repeat the same call',
    'the same key with another operand is refused'
);
select throws_ok(
    $$select entity_toggle('e1', 'f', 'pay-1')$$, '22023', null,
    'the same key with another operation is refused'
);

-- a failed call records nothing: its key is still free
do $$
begin
    perform entity_set('e1', '"x"', 's');
end
$$;
select throws_ok(
    $$select entity_increment('e1', 's', 1, 'k-fail')$$, 'HM008', null, 'the call fails'
);
do $$
begin
    perform entity_set('e1', '1', 's');
end
$$;
select is(entity_increment('e1', 's', 1, 'k-fail'), 2::numeric, 'the fixed retry applies');
select is(
    (select count(*)::integer from steps where job_id = 'e1' and idempotency_key is not null), 6,
    'one step per key'
);
select is(
    pg_temp.doc(), '{"n": 10, "f": true, "s": 2}'::jsonb, 'every keyed change applied once'
);

select * from finish();
rollback;
