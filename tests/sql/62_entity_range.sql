-- Entity numbers stay within the range of a double (README: Limits), also when an operation
-- computes them: an increment whose sum passes ±1.8e308 is refused with 22023 and changes
-- nothing (no document change, no step, no version), from SQL and from workflow code.
begin;
\ir _preamble.psql
\ir _fixtures.psql
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(10);

select pg_temp.start('t62-q', 'e1');
create function pg_temp.steps() returns bigint
language sql as $$ select count(*) from steps where job_id = 'e1' $$;

select is(entity_increment('e1', 'huge', 1e308), 1e308::numeric, 'the first 1e308 is stored');
create temp table before_errors on commit drop as
select
    pg_temp.doc() as doc,
    pg_temp.steps() as steps;

select throws_ok(
    $$select entity_increment('e1', 'huge', 1e308)$$, '22023',
    'entity increment: "huge" (1e+308) + 1e+308 is beyond the range of a double (1.8e308); '
    || 'nothing was changed',
    'a second 1e308 would make 2e308: refused'
);
select throws_ok(
    $$select entity_increment('e1', 'huge', 1e308, 'key-1')$$, '22023', null,
    '... also with an idempotency key (which stays unused)'
);
do $$
begin
    perform entity_set('e1', '-1.7976931348623157e308', 'low');
end
$$;
select throws_ok(
    $$select entity_increment('e1', 'low', -1e300)$$, '22023', null,
    'below -1.8e308 too'
);
select is(
    entity_increment('e1', 'low', 1e300), -1.7976931348623157e308 + 1e300,
    'a sum back inside the range is fine'
);
select is(
    entity_increment('e1', 'low', -1e300), -1.7976931348623157e308,
    '... and reaching the limit itself'
);
select is(
    pg_temp.doc() - 'low', (select doc from before_errors) - 'low',
    'the refused increments changed nothing'
);
select is(
    pg_temp.steps(), (select steps from before_errors) + 3,
    'only the set and the two accepted increments were recorded'
);

-- Workflow code: entity_step records the failed operation (a replay raises it again) and leaves
-- the document alone.
create temp table claimed on commit drop as
select * from claim_tasks(array['t62-q'], 'worker-1', 1);
select is(
    (
        select s -> 'error' ->> 'sqlstate'
        from claimed as c,
            entity_step(c.task_id, c.lease_token, 1, 'increment', 'huge', '1e308') as s
    ),
    '22023',
    'entity_step: the increment fails as a recorded step (22023)'
);
select is(pg_temp.doc() ->> 'huge', '1' || repeat('0', 308), 'the document still holds 1e308');

select * from finish();
rollback;
