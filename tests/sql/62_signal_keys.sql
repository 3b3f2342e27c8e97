-- Signal idempotency keys belong to the signal they came with (signal id and target
-- workflow): the same key for another workflow or another signal id is another send, never a
-- silently dropped duplicate; a repeat of the same send is a duplicate; the same key with
-- another payload is refused (22023) and changes nothing; a key recorded before keys had a
-- scope (migration 0007, signal_id null) still turns any send with it away.
begin;
\ir _preamble.psql
\ir _fixtures.psql
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

select plan(11);

select pg_temp.start('q62', 'k1', 'k2');

select is(
    signal('approve', '"yes"', 'k1', 'K') ->> 'status', 'kept',
    'approve "yes" for k1 with key K is kept for k1'
);
select is(
    signal('approve', '"no"', 'k2', 'K') ->> 'status', 'kept',
    'approve "no" for k2 with the same key K is another send: kept for k2 (it was dropped)'
);
select is(
    signal('approve', '"maybe"', null, 'K') ->> 'status', 'kept',
    '... and so is an untargeted approve with K'
);
select is(
    signal('reject', '"yes"', 'k1', 'K') ->> 'status', 'kept',
    '... and a reject for k1 with K'
);
select results_eq(
    $$select job_id, payload from signals order by id$$,
    $$values ('k1'::text, '"yes"'::jsonb), ('k2', '"no"'), (null, '"maybe"'), ('k1', '"yes"')$$,
    'all four are kept, each with its own payload and target'
);
select is(
    signal('approve', '"no"', 'k2', 'K'), '{"status": "duplicate"}'::jsonb,
    'the same send again (a retry): duplicate'
);
create temp table before_refusal on commit drop as
select
    (select count(*) from signals) as signals,
    (select count(*) from signal_keys) as keys;
select throws_ok(
    $$select signal('approve', '"yes"', 'k2', 'K')$$, '22023',
    'idempotency key "K" was already used for signal "approve" to workflow "k2" with another '
    || 'payload; a retry must repeat the same call',
    'the same key, signal and target with another payload: 22023 saying why'
);
select throws_ok(
    $$select signal('approve', '"no"', null, 'K')$$, '22023',
    'idempotency key "K" was already used for signal "approve" with another payload; a retry '
    || 'must repeat the same call',
    '... untargeted too'
);
select results_eq(
    $$select (select count(*) from signals), (select count(*) from signal_keys)$$,
    $$select signals, keys from before_refusal$$,
    'the refused sends changed nothing'
);

-- A key used before keys had a scope.
insert into signal_keys (idempotency_key, used_at) values ('legacy', _now());
select is(
    signal('anything', '1', 'k1', 'legacy'), '{"status": "duplicate"}'::jsonb,
    'a key recorded before migration 0007 turns any send with it away'
);
select is(
    (select count(*)::integer from signal_keys where idempotency_key = 'legacy'), 1,
    '... and no scoped key is added for it'
);

select * from finish();
rollback;
