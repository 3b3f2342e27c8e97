-- entity_merge: a recursive deep merge (objects merge at every depth, anything else replaces),
-- returning the new entity. The seed merged two levels only (deeper keys were lost) and
-- merge({}) into {} set the whole context to NULL: both are asserted correct here.
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(16);

select pg_temp.start('t50-q', 'e1');

select is(entity_merge('e1', '{}'), '{}'::jsonb, 'merge({}) into {} leaves {} (the seed: NULL)');
select is(pg_temp.doc(), '{}'::jsonb, 'the stored entity is {} too, never NULL');

do $$
begin
    perform entity_set('e1', '{"a": {"b": {"c": 1, "d": 2}}, "x": [1, 2], "keep": true}');
end
$$;
select is(
    entity_merge('e1', '{"a": {"b": {"c": 9}}, "x": [3]}'),
    '{"a": {"b": {"c": 9, "d": 2}}, "x": [3], "keep": true}'::jsonb,
    'seed defect 4.3: objects merge at every depth (d survives); arrays replace'
);
select is(
    entity_merge('e1', '{}'), '{"a": {"b": {"c": 9, "d": 2}}, "x": [3], "keep": true}'::jsonb,
    'merge({}) changes nothing'
);
select is(
    entity_merge('e1', '{"a": {"b": {"e": {"f": {"g": 1}}}}}') #> '{a,b}',
    '{"c": 9, "d": 2, "e": {"f": {"g": 1}}}'::jsonb,
    'new nested objects are added as they are'
);
select is(
    entity_merge('e1', '{"a": {"b": 5}}') -> 'a', '{"b": 5}'::jsonb,
    'a scalar replaces an object'
);
select is(
    entity_merge('e1', '{"a": {"b": {"z": 1}}}') -> 'a', '{"b": {"z": 1}}'::jsonb,
    'an object replaces a scalar'
);
select is(
    entity_merge('e1', '{"keep": null}') -> 'keep', 'null'::jsonb,
    'null is a value: it replaces (use entity_delete to remove a key)'
);
select is(
    entity_merge('e1', '{"stage": "approval", "aiSummary": {"result": "ok", "confidence": 0.93}}')
    -> 'aiSummary',
    '{"result": "ok", "confidence": 0.93}'::jsonb,
    'the seed README example merges in'
);

create temp table before_errors on commit drop as select pg_temp.doc() as doc;
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select entity_merge('e1', '[1]')$$, 'HM008', 'entity merge: the value must be a JSON object, not an array', 'merging an array is HM008'),
    ($$select entity_merge('e1', '3')$$, 'HM008', 'entity merge: the value must be a JSON object, not a number', 'merging a number is HM008'),
    ($$select entity_merge('e1', null)$$, '22023', null, 'SQL null is refused'),
    ($$select entity_merge('e1', '{"a": ')$$, '22P02', null, 'invalid JSON is refused'),
    ($$select entity_merge('ghost', '{}')$$, 'HM002', 'workflow "ghost" not found', 'unknown workflow: HM002')
) as t (call, sqlstate, message, description);
select is(pg_temp.doc(), (select doc from before_errors), 'errors changed nothing');
select is(
    (select count(*)::integer from steps where job_id = 'e1' and name = 'merge'), 8,
    'each successful merge is one recorded step, failures none'
);

select * from finish();
rollback;
