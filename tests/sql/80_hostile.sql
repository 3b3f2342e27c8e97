-- Hostile input and the limits (README: Limits): JSON values from callers are at most 1 MiB,
-- nested at most 100 levels, with numbers in a double's range; names at most 255 characters;
-- entity paths at most 100 segments and 10000 characters; leases at most 1 day. Each is a
-- 22023 (HM007 for paths) that names the problem and changes nothing. Injection strings are
-- data: stored and found verbatim.
begin;
\ir _preamble.psql

select plan(28);

select start_workflow('w', '[]', 'h80-q', 'h80');

-- ------------------------------------------------------------------ JSON values

select throws_ok(
    $$select start_workflow('w', jsonb_build_array(repeat('x', 1048576)), 'h80-q')$$,
    '22023', null,
    'workflow args over 1 MiB'
);
select throws_like(
    $$select start_workflow('w', jsonb_build_array(repeat('x', 1048576)), 'h80-q')$$,
    'the args of workflow "w" is % bytes; the limit is 1 MiB (1048576 bytes)',
    '... the message says how large it is and what the limit is'
);
select lives_ok(
    $$select start_workflow('w', jsonb_build_array(repeat('x', 1048000)), 'h80-q')$$,
    'workflow args just under 1 MiB'
);
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select signal('s', to_jsonb(repeat('x', 1048576)))$$, '22023', null, 'a signal payload over 1 MiB'),
    ($$select entity_set('h80', to_jsonb(repeat('x', 1048576)), 'big')$$, '22023', null, 'an entity value over 1 MiB'),
    ($$select hook('h80', 'h', jsonb_build_array(repeat('x', 1048576)))$$, '22023', null, 'hook args over 1 MiB')
) as t (call, sqlstate, message, description);
select throws_ok(
    format('select signal(%L, %L::jsonb)', 's', repeat('[', 101) || repeat(']', 101)),
    '22023', 'the payload of signal "s" is nested more than 100 levels deep',
    '101 levels of nesting'
);
select lives_ok(
    format('select signal(%L, %L::jsonb)', 's', repeat('[', 100) || repeat(']', 100)),
    '100 levels of nesting'
);
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select entity_merge('h80', '{"a": 1e309}')$$, '22023', 'the value of entity merge holds a number beyond the range of a double (1.8e308)', 'a number beyond a double'),
    ($$select entity_increment('h80', 'n', 1e400)$$, '22023', 'the value of entity increment holds a number beyond the range of a double (1.8e308)', 'an increment beyond a double'),
    ($$select signal('s', '"a\u0000b"')$$, '22P05', null, 'NUL in JSON: Postgres refuses it before any function runs'),
    ($$select cancel_workflow('h80', repeat('r', 1048576))$$, '22023', null, 'a cancel reason over 1 MiB')
) as t (call, sqlstate, message, description);

-- ------------------------------------------------------------------ names

select throws_ok(
    format('select start_workflow(%L, %L, %L)', repeat('n', 256), '[]', 'h80-q'),
    '22023', 'workflow_name is 256 characters long; at most 255', 'a long workflow name'
);
select throws_ok(
    format('select start_workflow(%L, %L, %L)', 'w', '[]', repeat('q', 256)),
    '22023', 'task_queue is 256 characters long; at most 255', 'a long task queue'
);
select throws_ok(
    format('select signal(%L)', repeat('s', 256)),
    '22023', 'signal id is 256 characters long; at most 255', 'a long signal id'
);
select throws_ok(
    format('select signal(%L, %L, null, %L)', 's', '1', repeat('k', 256)),
    '22023', 'idempotency key is 256 characters long; at most 255', 'a long idempotency key'
);
select throws_ok(
    format('select * from claim_tasks(array[%L], %L)', 'h80-q', repeat('w', 256)),
    '22023', 'worker id is 256 characters long; at most 255', 'a long worker id'
);

-- ------------------------------------------------------------------ paths and leases

select throws_ok(
    format('select entity_get(%L, %L)', 'h80', array_to_string(array_fill('a'::text, array[101]), '.')),
    'HM007', 'entity path has 101 segments; at most 100', 'a path of 101 segments'
);
select throws_ok(
    format('select entity_get(%L, %L)', 'h80', repeat('a', 10001)),
    'HM007', 'entity path is 10001 characters long; at most 10000', 'a path of 10001 characters'
);
select is(
    entity_set('h80', '1', array_to_string(array_fill('a'::text, array[100]), '.')) #> '{a,a,a}'
    is not null,
    true,
    'a path of 100 segments'
);
select throws_ok(
    $$select * from claim_tasks(array['h80-q'], 'w', 1, interval '1 day 1 second')$$,
    '22023', 'lease must be at most 1 day, not 1 day 00:00:01', 'a lease over a day'
);
select throws_ok(
    $$select heartbeat(array[1]::bigint [], array[gen_random_uuid()], interval '1000000 years')$$,
    '22023', 'lease must be at most 1 day, not 1000000 years', 'a heartbeat lease over a day'
);

-- ------------------------------------------------------------------ injection is data

create temp table injections on commit drop as
select s
from unnest(array[
    $i$'; drop table jobs; --$i$,
    $i$' or '1'='1$i$,
    $i$$$; select pg_sleep(30); $$$i$,
    $i$%s %I %L$i$,
    $i$\$i$,
    $i$"; drop schema public cascade; --$i$
]) as i (s);

select is(
    (select count(*) from injections as i where start_workflow(i.s, '[]', i.s, i.s, i.s) = i.s),
    6::bigint,
    'injection strings start workflows under exactly those ids'
);
select is(
    (
        select count(*) from injections as i inner join jobs as j on i.s = j.id
        where j.workflow_name = i.s and j.task_queue = i.s and j.entity = i.s
    ),
    6::bigint,
    '... stored verbatim as name, queue and entity'
);
select is(
    (
        select count(*) from injections as i
        where entity_set(i.s, jsonb_build_object(i.s, i.s)) ->> i.s = i.s
    ),
    6::bigint,
    'injection strings as entity keys and values'
);
select is(
    (
        select count(*) from injections as i
        where exists (select from entity_find(i.s, jsonb_build_object(to_jsonb(array[i.s])::text, i.s)))
    ),
    6::bigint,
    'entity_find finds them by an injection-string path and value'
);
select is(
    (
        select count(*) from injections as i
        where entity_create_index(i.s, to_jsonb(array[i.s])::text) ~ '^jobs_btree_[a-z0-9_]*_[0-9a-f]{8}$'
    ),
    6::bigint,
    'entity_create_index names its indexes from [a-z0-9_] and a hash only'
);
select has_table(:'app', 'jobs', 'and jobs is still there');

select * from finish();
rollback;
