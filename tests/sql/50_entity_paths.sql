-- Entity paths: dotted text ("a.b.0.c") or, when the text starts with "[", a JSON array of
-- segments (strings, whole numbers >= 0) for keys that contain dots. Anything else is HM007
-- with a message naming the path. A path is data: SQL-looking text is a key like any other.
begin;
\ir _preamble.psql
\ir _fixtures.psql

select plan(30);

-- parsing
select is(_entity_path(null), null::text[], 'no path: null (the whole entity)');
select is(_entity_path('a'), array['a'], 'one key');
select is(_entity_path('a.b.0.c'), array['a', 'b', '0', 'c'], 'dotted, with an index');
select is(_entity_path('["a.b", "c"]'), array['a.b', 'c'], 'a JSON array keeps dots in keys');
select is(_entity_path('["a", 0, 12]'), array['a', '0', '12'], 'whole numbers become indexes');
select is(_entity_path('[""]'), array[''], 'the empty key is reachable in the array form');
select is(_entity_path('["[x"]'), array['[x'], 'a key starting with [ in the array form');
select is(_entity_path('ключ.值'), array['ключ', '值'], 'any Unicode text');
select is(
    _entity_path('x''); drop table jobs; --'), array['x''); drop table jobs; --'],
    'SQL-looking text is one key'
);

select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select _entity_path('')$$, 'HM007', 'entity path is empty', 'empty text'),
    ($$select _entity_path('[]')$$, 'HM007', 'entity path is empty', 'an empty array'),
    ($$select _entity_path('a..b')$$, 'HM007', 'entity path "a..b" has an empty segment', 'an empty segment'),
    ($$select _entity_path('.a')$$, 'HM007', 'entity path ".a" has an empty segment', 'a leading dot'),
    ($$select _entity_path('a.')$$, 'HM007', 'entity path "a." has an empty segment', 'a trailing dot'),
    ($$select _entity_path('[a')$$, 'HM007', 'entity path [a starts with "[" but is not a JSON array', 'invalid JSON after ['),
    ($$select _entity_path('["a", true]')$$, 'HM007', 'segment 2 of entity path ["a", true] is true; segments are strings (keys) or whole numbers >= 0 (array indexes)', 'a boolean segment'),
    ($$select _entity_path('[-1]')$$, 'HM007', null, 'a negative index'),
    ($$select _entity_path('[1.5]')$$, 'HM007', null, 'a fractional index'),
    ($$select _entity_path('[2147483648]')$$, 'HM007', null, 'an index beyond integer range'),
    ($$select _entity_path('[null]')$$, 'HM007', null, 'a null segment'),
    ($$select _entity_path('[["a"]]')$$, 'HM007', null, 'a nested array segment'),
    ($$select _entity_path('[{"a": 1}]')$$, 'HM007', null, 'an object segment')
) as t (call, sqlstate, message, description);

-- how messages name paths
select is(_entity_path_label(array['a', 'b']), '"a.b"', 'dotted when unambiguous');
select is(_entity_path_label(array['a.b', 'c']), '["a.b", "c"]', 'JSON when a key has a dot');
select is(_entity_path_label('{}'::text[]), 'the entity', 'the root');

-- through the API: paths are data
select pg_temp.start('t50-q', 'e1');
do $$
begin
    perform entity_set('e1', '1', 'x''); drop table jobs; --');
    perform entity_set('e1', '2', '["a.b", "it''s"]');
end
$$;
select is(
    (select context from jobs where id = 'e1'),
    '{"x''); drop table jobs; --": 1, "a.b": {"it''s": 2}}'::jsonb,
    'SQL-looking and quoted keys are stored as keys'
);
select has_table(:'app', 'jobs', 'and the jobs table is still there');
select is(entity_get('e1', '["a.b", "it''s"]'), '2'::jsonb, 'read back with the same path');
select throws_ok(
    $$select entity_set('e1', '1', '[oops')$$, 'HM007', null, 'a malformed path through the API'
);
select is(
    (select context from jobs where id = 'e1'),
    '{"x''); drop table jobs; --": 1, "a.b": {"it''s": 2}}'::jsonb,
    'a malformed path changed nothing'
);

select * from finish();
rollback;
