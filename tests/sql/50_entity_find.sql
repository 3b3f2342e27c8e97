-- Querying entities: entity_find (a where object), entity_find_by_condition (one path, one
-- operator), entity_find_by_id, entity_create_index. Nested paths, typed comparisons, `in`,
-- like, pagination newest first; operators from a fixed list; values and paths are parameters
-- (no SQL text of the caller's is ever run). The seed matched nothing for a dotted key and
-- produced invalid SQL for $in: both are asserted correct here.
begin;
\ir _preamble.psql

select plan(42);

do $$
declare
    v_people jsonb := '[
        ["alice", {"name": "Alice", "age": 30, "status": "active", "tags": ["admin"],
                   "preferences": {"notifications": true, "theme": "dark"}}],
        ["bob", {"name": "Bob", "age": "30", "status": "active",
                 "preferences": {"notifications": false}}],
        ["carol", {"name": "Carol", "age": 45, "status": "inactive", "tags": ["ops"],
                   "preferences": {"notifications": true}, "a.b": {"c": 1}}],
        ["dave", {"name": "Dave", "age": 17, "status": "active", "items": [{"sku": "X1"}]}]
    ]';
    v_person jsonb;
    v_i integer := 0;
begin
    for v_person in select e.value from jsonb_array_elements(v_people) as e loop
        v_i := v_i + 1;
        perform set_config('hotmesh.fake_now', format('2020-01-01 00:00:0%s+00', v_i), true);
        perform start_workflow('w', '[]', 't50-q', v_person ->> 0, 'user');
        perform entity_set(v_person ->> 0, v_person -> 1);
    end loop;
    perform start_workflow('w', '[]', 't50-q', 'order-1', 'order');
    perform entity_set('order-1', '{"name": "Alice", "status": "active"}');
end
$$;
set local "hotmesh.fake_now" = '2020-01-02 00:00:00+00';

create function pg_temp.ids(p_query text) returns text[]
language plpgsql as $$
declare
    v_ids text[];
begin
    execute format('select array_agg(id order by id) from (%s) as q', p_query) into v_ids;
    return coalesce(v_ids, '{}');
end
$$;

-- entity_find
select is(
    pg_temp.ids($$select * from entity_find('user', '{"status": "active"}')$$),
    array['alice', 'bob', 'dave'], 'equality on a key, within one entity type'
);
select is(
    pg_temp.ids($$select * from entity_find('user', '{"age": 30}')$$), array['alice'],
    'typed: the number 30 does not match the string "30"'
);
select is(
    pg_temp.ids($$select * from entity_find('user', '{"age": "30"}')$$), array['bob'],
    'and the string matches only the string'
);
select is(
    pg_temp.ids($$select * from entity_find('user', '{"preferences.notifications": true}')$$),
    array['alice', 'carol'], 'seed defect 4.3: a dotted key is a nested path'
);
select is(
    pg_temp.ids($$select * from entity_find('user', '{"[\"a.b\", \"c\"]": 1}')$$), array['carol'],
    'a JSON-array key addresses a key that contains a dot'
);
select is(
    pg_temp.ids($$select * from entity_find('user', '{"name": {"$in": ["Alice", "Dave", "Zed"]}}')$$),
    array['alice', 'dave'], 'seed defect 4.3: $in works'
);
select is(
    pg_temp.ids($$select * from entity_find('user', '{"tags": {"$in": [["admin"], ["ops"]]}}')$$),
    array['alice', 'carol'], '$in compares whole JSON values'
);
select is(
    pg_temp.ids($$select * from entity_find('user', '{"age": {"$gte": 18, "$lt": 45}}')$$),
    array['alice'], 'several operators on one path are ANDed (the string "30" is no number)'
);
select is(
    pg_temp.ids($$select * from entity_find('user', '{"name": {"$like": "%a%"}, "status": {"$ne": "active"}}')$$),
    array['carol'], '$like and $ne, on two paths'
);
select is(
    pg_temp.ids($$select * from entity_find('user', '{"items.0.sku": "X1"}')$$), array['dave'],
    'an array index in a path'
);
select is(
    pg_temp.ids($$select * from entity_find('user', '{"nope": null}')$$), '{}'::text[],
    'a missing path never matches, not even null'
);
select is(
    pg_temp.ids($$select * from entity_find('user')$$), array['alice', 'bob', 'carol', 'dave'],
    'no conditions: every entity of the type'
);
select is(
    pg_temp.ids($$select * from entity_find('user', '{"preferences": {"notifications": false}}')$$),
    array['bob'], 'a plain object value is compared whole'
);
select results_eq(
    $$select id from entity_find('user', '{}', 2, 1)$$, $$values ('carol'), ('bob')$$,
    'newest first, with limit and offset'
);
select results_eq(
    $$select id, status from entity_find('user', '{"name": "Alice"}')$$,
    $$values ('alice', 'pending')$$, 'rows carry id, context and status'
);

-- entity_find_by_condition
select is(
    pg_temp.ids($$select * from entity_find_by_condition('user', 'age', '>', '17')$$),
    array['alice', 'carol'], '>'
);
select is(
    pg_temp.ids($$select * from entity_find_by_condition('user', 'age', '>=', '17')$$),
    array['alice', 'carol', 'dave'], '>='
);
select is(
    pg_temp.ids($$select * from entity_find_by_condition('user', 'age', '<', '45')$$),
    array['alice', 'dave'], '<'
);
select is(
    pg_temp.ids($$select * from entity_find_by_condition('user', 'age', '<=', '45')$$),
    array['alice', 'carol', 'dave'], '<='
);
select is(
    pg_temp.ids($$select * from entity_find_by_condition('user', 'age', '!=', '30')$$),
    array['bob', 'carol', 'dave'], '!= (the string "30" is not the number 30)'
);
select is(
    pg_temp.ids($$select * from entity_find_by_condition('user', 'age', '<>', '30')$$),
    array['bob', 'carol', 'dave'], '<> is !='
);
select is(
    pg_temp.ids($$select * from entity_find_by_condition('user', 'name', 'LIKE', '"_a%"')$$),
    array['carol', 'dave'], 'like (any case), on strings'
);
select is(
    pg_temp.ids($$select * from entity_find_by_condition('user', 'status', 'in', '["inactive", "x"]')$$),
    array['carol'], 'in'
);
select is(
    pg_temp.ids($$select * from entity_find_by_condition('user', '["preferences", "theme"]', '=', '"dark"')$$),
    array['alice'], 'a path as a JSON array'
);
select results_eq(
    $$select id from entity_find_by_condition('user', 'age', '>=', '0', 1, 1)$$,
    $$values ('carol')$$, 'limit and offset'
);

-- entity_find_by_id
select results_eq(
    $$select id, context ->> 'name' from entity_find_by_id('user', 'carol')$$,
    $$values ('carol', 'Carol')$$, 'by id'
);
select is_empty($$select * from entity_find_by_id('order', 'carol')$$, 'not of that type');
select is_empty($$select * from entity_find_by_id('user', 'zed')$$, 'unknown id: no row');

-- bad input
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select * from entity_find('user', '{"name": {"$regex": "x"}}')$$, '22023', 'unknown operator "$regex" (one of = != > >= < <= like in)', 'an unknown $operator'),
    ($$select * from entity_find_by_condition('user', 'name', '= 1 or 1 = 1 --', '"x"')$$, '22023', 'unknown operator "= 1 or 1 = 1 --" (one of = != > >= < <= like in)', 'an operator is checked against a fixed list: SQL in it is refused'),
    ($$select * from entity_find_by_condition('user', 'age', '>', 'true')$$, '22023', 'condition on "age": > compares numbers or strings, not a boolean', 'range on a boolean'),
    ($$select * from entity_find_by_condition('user', 'age', 'in', '1')$$, '22023', 'condition on "age": in needs a JSON array of values, not a number', 'in without an array'),
    ($$select * from entity_find('user', '[1]')$$, '22023', null, 'where must be an object'),
    ($$select * from entity_find('user', '{"a..b": 1}')$$, 'HM007', null, 'a malformed path'),
    ($$select * from entity_find('user', '{}', -1)$$, '22023', null, 'a negative limit')
) as t (call, sqlstate, message, description);
select is(
    pg_temp.ids($$select * from entity_find('user', '{"name'') or true --": "x"}')$$), '{}'::text[],
    'SQL-looking text in a path is a key that no entity has'
);

-- indexes
select is(
    entity_create_index('user', 'age'), entity_create_index('user', 'age'),
    'create_index is idempotent and returns the index name'
);
select is(
    (
        select indexdef from pg_indexes
        where schemaname = :'app' and indexname = entity_create_index('user', 'age')
    ),
    format(
        'CREATE INDEX %s ON %s.jobs USING btree (((context #> ''{age}''::text[]))) WHERE (entity = ''user''::text)',
        entity_create_index('user', 'age'), :'app'
    ),
    'a partial btree index on the value at the path, for that entity type'
);
do $$
begin
    perform entity_create_index('user', null, 'gin');
end
$$;
select matches(
    (
        select indexdef from pg_indexes
        where schemaname = :'app' and indexname = entity_create_index('user', null, 'gin')
    ),
    'USING gin \(context jsonb_path_ops\) WHERE \(entity = ''user''::text\)$',
    'a gin index on the whole entity (it serves equality conditions through @>)'
);
select isnt(
    entity_create_index('user', 'age', 'gin'), entity_create_index('user', 'age', 'btree'),
    'kinds and paths get distinct names'
);
select throws_ok(
    $$select entity_create_index('user', 'age', 'hash')$$, '22023',
    'index kind must be btree or gin, not "hash"', 'an unknown kind'
);
select throws_ok(
    $$select entity_create_index('user', null, 'btree')$$, 'HM007', null,
    'a btree index needs a path'
);

select * from finish();
rollback;
