-- Flow control in the claim: set_queue_limits (its bad input), max_running, the token bucket
-- (under the engine's fake clock), concurrency keys (per-key limit, rotation), priorities
-- with keys, removing a limit, next_due of a held-back queue, what get_queue_limits and
-- queue_backlog show.
begin;
\ir _preamble.psql

select plan(62);

set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';

create temporary table n (label text primary key, value bigint) on commit drop;

-- Starts p_count workflows on p_queue, with the given concurrency key and priority.
create function pg_temp.start_many(
    p_queue text, p_count integer, p_key text default null, p_priority integer default 0
) returns void
language sql as $$
    select count(start_workflow('w', '[]', p_queue, null, null,
                                jsonb_strip_nulls(jsonb_build_object('concurrency_key', p_key,
                                                                     'priority', p_priority))))
      from generate_series(1, p_count)
$$;

-- The tasks a claim of up to p_max hands out, by concurrency key (unkeyed: '-').
create function pg_temp.claim_keys(
    p_queue text, p_max integer, p_lease interval default '1 minute'
) returns text[]
language sql as $$
    select coalesce(array_agg(coalesce(j.concurrency_key, '-') order by c.task_id), '{}')
      from claim_tasks(array[p_queue], 'tester', p_max, p_lease) as c
      join jobs as j on j.id = c.job_id
$$;

-- Bad input: 22023 and nothing changed.
select throws_ok(
    $$select set_queue_limits('q34', max_running => 0)$$, '22023',
    'max_running must be >= 1 (null: no limit), not 0', 'a limit of 0 is refused'
);
select throws_ok(
    $$select set_queue_limits('q34', max_running => -4)$$, '22023', null,
    'a negative limit is refused'
);
select throws_ok(
    $$select set_queue_limits('q34', rate => 0, per => '1 minute')$$, '22023',
    'rate must be >= 1 (null: no limit), not 0', 'a rate of 0 is refused'
);
select throws_ok(
    $$select set_queue_limits('q34', rate => 60)$$, '22023', null,
    'a rate without per is refused'
);
select throws_ok(
    $$select set_queue_limits('q34', per => '1 minute')$$, '22023', null,
    'per without a rate is refused'
);
select throws_ok(
    $$select set_queue_limits('q34', rate => 1, per => '0 seconds')$$, '22023',
    'per must be from 1 millisecond to 366 days, not 00:00:00',
    'an empty interval is refused'
);
select throws_ok(
    $$select set_queue_limits('q34', rate => 1, per => '-1 minute')$$, '22023',
    null, 'a negative interval is refused'
);
select throws_ok(
    $$select set_queue_limits('q34', key_max_running => 0)$$, '22023', null,
    'a per-key limit of 0 is refused'
);
select throws_ok(
    $$select set_queue_limits(null, max_running => 1)$$, '22023',
    'task_queue is required', 'a queue is required'
);
select throws_ok(
    $$select set_queue_limits(repeat('q', 256), max_running => 1)$$, '22023',
    null, 'an overlong queue name is refused'
);
select is((select count(*) from queue_limits), 0::bigint, 'bad input changed nothing');
select throws_ok(
    $$select start_workflow('w', '[]', 'q34', null, null,
                                         '{"concurrency_key": 7}')$$, '22023',
    'concurrency_key must be a string, not 7', 'a key must be a string'
);
select throws_ok(
    $$select start_workflow('w', '[]', 'q34', null, null,
                                         '{"concurrency_key": ""}')$$, '22023', null,
    'a key must not be empty'
);
select is(
    (select count(*) from jobs where task_queue = 'q34'), 0::bigint,
    'a bad key starts nothing'
);

-- A limit on a queue that has no task yet is legal; it holds from the first start.
select lives_ok(
    $$select set_queue_limits('l-max', max_running => 2)$$,
    'a queue needs no task to be limited'
);
select pg_temp.start_many('l-max', 5);
select is(cardinality(pg_temp.claim_keys('l-max', 10)), 2, 'max_running bounds a claim');
select is(cardinality(pg_temp.claim_keys('l-max', 10)), 0, 'and the next one, while they run');
select is(
    next_due(array['l-max']), _now() + interval '1 second',
    'a queue held back by its limit is looked at again in a second, not at once'
);
select is(
    (select array[max_running, running] from queue_backlog where task_queue = 'l-max'),
    array[2, 2]::bigint[], 'queue_backlog shows running against the limit'
);
select
    is(
        release_tasks(array_agg(id), array_agg(lease_token)), 1,
        'one running task is given back'
    )
from (
    select
        id,
        lease_token
    from tasks where task_queue = 'l-max' and state = 'leased'
    order by id
    limit 1
) as t;
select is(cardinality(pg_temp.claim_keys('l-max', 10)), 1, 'its slot is taken again');
select lives_ok($$select set_queue_limits('l-max', max_running => 4)$$, 'a raised limit ...');
select is(cardinality(pg_temp.claim_keys('l-max', 10)), 2, '... applies to the next claim');
set local "hotmesh.fake_now" = '2020-01-01 00:02:00+00';
select is(
    cardinality(pg_temp.claim_keys('l-max', 10)), 4,
    'expired leases no longer count as running (their tasks are taken over)'
);

-- The token bucket: full (rate) at first, refilled at rate per `per`, never above rate.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';
select set_queue_limits('l-rate', rate => 3, per => '1 minute');
select pg_temp.start_many('l-rate', 10);
select is(cardinality(pg_temp.claim_keys('l-rate', 10, '1 day')), 3, 'a full bucket: rate starts');
select is(cardinality(pg_temp.claim_keys('l-rate', 10, '1 day')), 0, 'then none: no token left');
select is((
    select array[tokens::text, next_token_at::text] from get_queue_limits()
    where task_queue = 'l-rate'
),
array['0', '2020-01-01 00:00:20+00'], 'no token left; the next comes in per / rate');
select is(
    next_due(array['l-rate']), '2020-01-01 00:00:20+00'::timestamptz,
    'an idle worker sleeps until the next token'
);
set local "hotmesh.fake_now" = '2020-01-01 00:00:30+00';
select is(cardinality(pg_temp.claim_keys('l-rate', 10, '1 day')), 1, 'a token per 20 seconds');
set local "hotmesh.fake_now" = '2020-01-01 00:00:10+00';
select is(
    cardinality(pg_temp.claim_keys('l-rate', 10, '1 day')), 0,
    'a clock moved back refills nothing'
);
set local "hotmesh.fake_now" = '2020-01-01 01:00:00+00';
select is(
    cardinality(pg_temp.claim_keys('l-rate', 10, '1 day')), 3,
    'an hour later: never more than rate at once'
);
select lives_ok($$select set_queue_limits('l-rate')$$, 'no limit given removes the limits');
select is(cardinality(pg_temp.claim_keys('l-rate', 10, '1 day')), 3, 'and releases every waiting task');

-- Concurrency keys: a per-key limit, and the keys in rotation (every key's next task before
-- any key's one after it), however long one key's backlog.
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';
select set_queue_limits('l-key', key_max_running => 1);
select pg_temp.start_many('l-key', 20, 'big');
select pg_temp.start_many('l-key', 2, 'b');
select pg_temp.start_many('l-key', 2, 'c');
select pg_temp.start_many('l-key', 1);
select is(
    pg_temp.claim_keys('l-key', 10), array['big', 'b', 'c', '-'],
    'one task per key at its limit of 1 (unkeyed tasks have no key limit)'
);
select is(pg_temp.claim_keys('l-key', 10), '{}'::text[], 'every key is at its limit');

set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';
select set_queue_limits('l-fair', max_running => 100);
select pg_temp.start_many('l-fair', 20, 'big');
select pg_temp.start_many('l-fair', 2, 'b');
select is(
    (select array_agg(k order by k) from unnest(pg_temp.claim_keys('l-fair', 4)) as k),
    array['b', 'b', 'big', 'big'], 'keys alternate, whatever their backlog'
);
-- Without limits the plain claim orders keys the same way.
select pg_temp.start_many('plain-fair', 20, 'big');
select pg_temp.start_many('plain-fair', 2, 'b');
select is(
    (select array_agg(k order by k) from unnest(pg_temp.claim_keys('plain-fair', 4)) as k),
    array['b', 'b', 'big', 'big'], 'keys alternate on a queue without limits too'
);
-- A key that arrives late joins the rotation where it stands (big's 3rd task is next).
select pg_temp.start_many('plain-fair', 3, 'late');
select is((
    select array_agg(key_rank order by key_rank) from tasks
    where task_queue = 'plain-fair' and concurrency_key = 'late'
),
array[2, 3, 4]::bigint[], 'a late key is ranked from where the rotation stands');

-- Keys at their limit ahead of a free one: the claim reads further than its first window.
select set_queue_limits('l-win', key_max_running => 1);
select pg_temp.start_many('l-win', 2, 'k' || i) from generate_series(1, 40) as i;
select is(cardinality(pg_temp.claim_keys('l-win', 100)), 40, 'one task of each of 40 keys');
select pg_temp.start_many('l-win', 1, 'z');
select is(
    pg_temp.claim_keys('l-win', 1), array['z'],
    'a free key behind 40 keys at their limit still gets its turn'
);

-- A keyed workflow's hooks carry its key; an activity call carries its own.
select start_workflow('w', '[]', 'l-carry', 'keyed-wf', null, '{"concurrency_key": "acme"}');
select hook('keyed-wf', 'h', '[]', 'l-carry');
select is((
    select array_agg(concurrency_key order by thread) from tasks
    where job_id = 'keyed-wf'
),
array['acme', 'acme'], 'a keyed workflow''s activations (main, hook) carry its key');
select schedule_activity(c.task_id, c.lease_token, 1, 'act', '[]', 'l-acts', null, 'globex')
from claim_tasks(array['l-carry'], 'tester', 1) as c where c.thread = 'main';
select is(
    (select concurrency_key from tasks where job_id = 'keyed-wf' and kind = 'activity'),
    'globex', 'an activity call carries the key it was given'
);

-- Priorities compose: a key at its limit holds back its urgent task, not the other keys.
select set_queue_limits('l-prio', key_max_running => 1);
select pg_temp.start_many('l-prio', 1, 'a');
select is(pg_temp.claim_keys('l-prio', 1), array['a'], 'key a runs one task');
select pg_temp.start_many('l-prio', 1, 'a', 10);
select pg_temp.start_many('l-prio', 1, 'b', 0);
select is(
    pg_temp.claim_keys('l-prio', 1), array['b'],
    'a higher-priority task of a key at its limit waits; another key''s goes'
);

-- queue_keys: the per-key view, busiest first; an unkeyed task is not a key; bad input 22023.
select pg_temp.start_many('l-keys', 3, 'acme');
select pg_temp.start_many('l-keys', 1, 'globex');
select pg_temp.start_many('l-keys', 1);
select set_queue_limits('l-keys', key_max_running => 1);
select is(pg_temp.claim_keys('l-keys', 3), array['acme', 'globex', '-'], 'one task of each key');
select results_eq(
    $$select concurrency_key, running, ready, delayed from queue_keys('l-keys')$$,
    $$values ('acme', 1::bigint, 2::bigint, 0::bigint), ('globex', 1, 0, 0)$$,
    'queue_keys: running and ready per key, busiest first'
);
select is(
    (select array_agg(concurrency_key) from queue_keys('l-keys', 1)), array['acme'],
    'queue_keys: at most p_limit keys'
);
select throws_ok(
    $$select * from queue_keys('l-keys', 0)$$, '22023',
    'limit must be from 1 to 10000, not 0', 'queue_keys: a limit out of range is 22023'
);

-- A rate per concurrency key: each key draws on a bucket of its own (key_rate per key_per);
-- the other keys and unkeyed tasks are not held back; bad input 22023, nothing changed.
select throws_ok(
    $$select set_queue_limits('l-krate', key_rate => 0, key_per => '1 second')$$, '22023',
    'key_rate must be >= 1 (null: no limit), not 0', 'a key rate of 0: 22023'
);
select throws_ok(
    $$select set_queue_limits('l-krate', key_rate => 2)$$, '22023',
    'queue "l-krate": key_rate and key_per go together (key_rate => 60, key_per => '
    '''1 minute''), not key_rate 2 per null', 'a key rate without its interval: 22023'
);
select throws_ok(
    $$select set_queue_limits('l-krate', key_rate => 2, key_per => '0 seconds')$$, '22023',
    'key_per must be from 1 millisecond to 366 days, not 00:00:00', 'key_per of 0: 22023'
);
select is_empty(
    $$select from queue_limits where task_queue = 'l-krate'$$, 'bad input changed nothing'
);
set local "hotmesh.fake_now" = '2020-01-01 00:00:00+00';
select set_queue_limits('l-krate', key_rate => 2, key_per => '1 second');
select pg_temp.start_many('l-krate', 6, 'a');
select pg_temp.start_many('l-krate', 6, 'b');
select pg_temp.start_many('l-krate', 1);
select is(
    (select array_agg(k order by k) from unnest(pg_temp.claim_keys('l-krate', 20, '1 day')) as k),
    array['-', 'a', 'a', 'b', 'b'], 'a full bucket per key: two of each key, the unkeyed task too'
);
select is(
    pg_temp.claim_keys('l-krate', 20, '1 day'), '{}'::text[], 'then none: no key has a token'
);
select results_eq(
    $$select concurrency_key, running, ready, tokens, next_token_at from queue_keys('l-krate')$$,
    $$values ('a', 2::bigint, 4::bigint, 0::float8,
              '2020-01-01 00:00:00.5+00'::timestamptz),
             ('b', 2, 4, 0, '2020-01-01 00:00:00.5+00')$$,
    'queue_keys: each key''s tokens left and its next token'
);
select results_eq(
    $$select key_rate, key_per from get_queue_limits() where task_queue = 'l-krate'
      union all
      select key_rate, key_per from queue_backlog where task_queue = 'l-krate'$$,
    $$values (2, '1 second'::interval), (2, '1 second')$$,
    'get_queue_limits and queue_backlog show the key rate'
);
select is(
    next_due(array['l-krate']), '2020-01-01 00:00:00.5+00'::timestamptz,
    'an idle worker wakes for the next key token'
);
set local "hotmesh.fake_now" = '2020-01-01 00:00:00.5+00';
select is(
    (select array_agg(k order by k) from unnest(pg_temp.claim_keys('l-krate', 20, '1 day')) as k),
    array['a', 'b'], 'half a second later: one token per key'
);
set local "hotmesh.fake_now" = '2020-01-01 01:00:00+00';
select is(
    (select array_agg(k order by k) from unnest(pg_temp.claim_keys('l-krate', 20, '1 day')) as k),
    array['a', 'a', 'b', 'b'], 'an hour later: never more than key_rate at once per key'
);
select set_queue_limits('l-krate', max_running => 100);
select is(
    (select array_agg(k order by k) from unnest(pg_temp.claim_keys('l-krate', 20, '1 day')) as k),
    array['a', 'b'], 'the key rate lifted: the keys'' waiting tasks start at once'
);
select is_empty(
    $$select from key_buckets where task_queue = 'l-krate'$$,
    'and the claim dropped the queue''s key buckets'
);

-- Schedule-to-start through a limited queue: the seconds a task was due before the claim
-- that admitted it, on the engine's clock.
set local "hotmesh.fake_now" = '2020-01-02 00:00:00+00';
select set_queue_limits('l-wait', max_running => 1);
select start_workflow('w', '[]', 'l-wait', 'wait-34');
set local "hotmesh.fake_now" = '2020-01-02 00:01:30.25+00';
select is(
    (select payload -> 'schedule_to_start' from claim_tasks(array['l-wait'], 'tester', 5)),
    '90.25'::jsonb, 'an admitted task carries the 90.25 s it was due before its claim'
);

select * from finish(true);
rollback;
