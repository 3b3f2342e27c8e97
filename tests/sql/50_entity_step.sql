-- entity_step: an entity operation of workflow code at its code position (thread, seq), fenced
-- by the activation's lease. Exactly once: a recorded position returns its step and applies
-- nothing. The change and its step commit together; a failing operation is recorded as a
-- failed step (so a replay raises the same error) and changes nothing; get is recorded too.
begin;
\ir _preamble.psql
\ir _fixtures.psql
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(30);

create temp table claimed on commit drop as
select * from pg_temp.start_claimed('t50-step', 'e1');
create function pg_temp.version() returns bigint
language sql as $$ select entity_version from jobs where id = 'e1' $$;

-- a first run: applied and recorded
select is(
    pg_temp.step(1, 'set', null, '{"a": 1, "s": "x"}'),
    '{"seq": 1, "kind": "entity", "name": "set", "status": "completed", "output": {"a": 1, "s": "x"}, "error": null, "attempt": 1, "due": null}'::jsonb,
    'a new position: applied, the step returned with the result'
);
select is(pg_temp.doc(), '{"a": 1, "s": "x"}'::jsonb, 'the entity changed');
select is(pg_temp.version(), 1::bigint, 'entity_version 1');
select is(
    (select input from steps where job_id = 'e1' and thread = 'main' and seq = 1),
    '{"path": null, "value": {"a": 1, "s": "x"}, "by": "worker-1"}'::jsonb,
    'the step records the operation, its operand and the worker'
);

-- the same position again (a replay, or a second worker): nothing applied
select is(
    pg_temp.step(1, 'set', null, '{"something": "else"}') -> 'output', '{"a": 1, "s": "x"}'::jsonb,
    'a recorded position returns its recorded result'
);
select is(pg_temp.doc(), '{"a": 1, "s": "x"}'::jsonb, 'and applies nothing');
select is(pg_temp.version(), 1::bigint, 'entity_version unchanged');
select throws_ok(
    $$select pg_temp.step(1, 'merge', null, '{}')$$, 'HM006',
    'non-determinism in workflow "e1" thread main: step 1 was recorded as entity "set" but the code now calls entity "merge"',
    'another operation at a recorded position is non-determinism'
);

select is(pg_temp.step(2, 'increment', 'n', '2') -> 'output', '2'::jsonb, 'increment');
select is(pg_temp.step(2, 'increment', 'n', '2') -> 'output', '2'::jsonb, 'replayed: 2 again');
select is(pg_temp.doc() -> 'n', '2'::jsonb, 'applied once');

-- get is recorded: a replay sees the first run's snapshot
select is(pg_temp.step(3, 'get', 'n', null) -> 'output', '2'::jsonb, 'get returns the value');
do $$
begin
    perform entity_increment('e1', 'n', 40);  -- an outside change after the read
end
$$;
select is(
    pg_temp.step(3, 'get', 'n', null) -> 'output', '2'::jsonb,
    'a replayed get returns the recorded snapshot, not the current value'
);
select is(pg_temp.step(4, 'get', null, null) -> 'output', pg_temp.doc(), 'get without a path');
select is(pg_temp.version(), 3::bigint, 'reads do not count as changes');

-- failures are recorded and change nothing
create temp table before_errors on commit drop as select pg_temp.doc() as doc;
select is(
    pg_temp.step(5, 'increment', 's', '1') - 'error',
    '{"seq": 5, "kind": "entity", "name": "increment", "status": "failed", "output": null, "attempt": 1, "due": null}'::jsonb,
    'an operation that fails is a failed step'
);
select is(
    (select error from steps where job_id = 'e1' and seq = 5),
    '{"message": "entity increment: \"s\" is a string, not a number", "sqlstate": "HM008", "code": 598, "type": "EntityTypeError"}'::jsonb,
    'its error: message, SQLSTATE, type, and 598 (fatal: retrying cannot help)'
);
select is(
    pg_temp.step(5, 'increment', 's', '1') ->> 'status', 'failed',
    'a replay gets the same failure'
);
select is(
    pg_temp.step(6, 'delete', 'missing', null) #>> '{error,sqlstate}', 'HM007',
    'a missing path: HM007 recorded'
);
select is(
    pg_temp.step(7, 'get', 'a..b', null) #>> '{error,sqlstate}', 'HM007',
    'a malformed path: HM007 recorded'
);
select is(
    pg_temp.step(8, 'explode', 'a', null) #>> '{error,sqlstate}', '22023',
    'an unknown operation: 22023 recorded'
);
select is(
    pg_temp.step(9, 'append', 'l', null) #>> '{error,type}', 'InvalidArgument',
    'a missing value: InvalidArgument recorded'
);
select is(pg_temp.doc(), (select doc from before_errors), 'no failure changed the entity');
select is(pg_temp.version(), 3::bigint, 'nor counted as a change');
select is(
    (select count(*)::integer from steps where job_id = 'e1' and entity_version is not null), 3,
    'only changes carry an entity_version'
);

-- fencing
select throws_ok(
    $$select entity_step(c.task_id, gen_random_uuid(), 10, 'set', null, '{}') from claimed as c$$,
    'HM004', null, 'a stale lease token is refused'
);
select throws_ok(
    $$select entity_step(-1, gen_random_uuid(), 10, 'set', null, '{}')$$,
    'HM005', null, 'an unknown task is refused'
);
select is(pg_temp.doc(), (select doc from before_errors), 'refused calls changed nothing');
select is(
    (select count(*)::integer from steps where job_id = 'e1' and seq = 10), 0,
    'and recorded nothing'
);
select is(
    pg_temp.step(10, 'set', 'a', '5') ->> 'status', 'completed',
    'the lease holder goes on'
);

select * from finish();
rollback;
