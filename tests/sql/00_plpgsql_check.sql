-- plpgsql_check over every PL/pgSQL function of the app schema under test (psql variable `app`),
-- which `hotmesh migrate --app $(APP)` installs before pg_prove runs (see the Makefile).
--
-- Policy: a finding of level 'error' (misspelt column, undeclared variable, missing record
-- field, ...) OR plain 'warning' (e.g. unused variable) fails. With extra_warnings => false
-- the plain warnings are few and always worth fixing; the 'warning extra' level (never-read
-- variables, unused parameters) and performance warnings are not requested at all.
-- A deliberate exception is declared in the function body, as a comment:
--     -- @plpgsql_check_options: other_warnings = false
-- plpgsql_check cannot see inside `execute format(...)`: prefer static SQL.
-- Trigger functions are checked together with each table they are attached to (and its
-- transition tables); one attached to no table cannot be checked and is only listed (diag).

begin;
\ir _preamble.psql
create extension if not exists plpgsql_check;

-- The path the functions run with: the public ones pin it, the private helpers inherit it
-- from them (99_grants.sql), so that is the path to check them under.
set local search_path = :"app", public, pg_temp;

select plan(4);

select has_schema(:'app', 'the app schema is installed (hotmesh migrate --app $(APP))');

select isnt_empty(
    $$
    select p.oid
    from pg_catalog.pg_proc as p
    inner join pg_catalog.pg_namespace as n on p.pronamespace = n.oid
    inner join pg_catalog.pg_language as l on p.prolang = l.oid
    where n.nspname = current_schema() and l.lanname = 'plpgsql'
    $$,
    'the app schema has PL/pgSQL functions to check'
);

select is_empty(
    $$
    select
        format(
            '%s line %s: %s: %s', p.oid::regprocedure, coalesce(c.lineno::text, '-'),
            c.level, c.message
        )
        || coalesce(' (' || c.detail || ')', '')
        || coalesce(' hint: ' || c.hint, '')
    from pg_catalog.pg_proc as p
    inner join pg_catalog.pg_namespace as n on p.pronamespace = n.oid
    inner join pg_catalog.pg_language as l on p.prolang = l.oid
    cross join lateral plpgsql_check_function_tb(
        p.oid::regprocedure, fatal_errors => false, extra_warnings => false
    ) as c
    where
        n.nspname = current_schema()
        and l.lanname = 'plpgsql'
        and p.prorettype <> 'trigger'::regtype
        and c.level in ('error', 'warning')
    order by 1
    $$,
    'plpgsql_check: no errors or warnings in the functions of the app schema'
);

select is_empty(
    $$
    select
        format(
            '%s on %s line %s: %s: %s', p.oid::regprocedure, t.tgrelid::regclass,
            coalesce(c.lineno::text, '-'), c.level, c.message
        )
        || coalesce(' (' || c.detail || ')', '')
        || coalesce(' hint: ' || c.hint, '')
    from pg_catalog.pg_proc as p
    inner join pg_catalog.pg_namespace as n on p.pronamespace = n.oid
    inner join pg_catalog.pg_language as l on p.prolang = l.oid
    inner join lateral (
        select distinct tg.tgrelid, tg.tgoldtable, tg.tgnewtable
        from pg_catalog.pg_trigger as tg
        where tg.tgfoid = p.oid and not tg.tgisinternal
    ) as t on true
    cross join lateral plpgsql_check_function_tb(
        p.oid::regprocedure, t.tgrelid,
        fatal_errors => false, extra_warnings => false,
        oldtable => t.tgoldtable, newtable => t.tgnewtable
    ) as c
    where
        n.nspname = current_schema()
        and l.lanname = 'plpgsql'
        and p.prorettype = 'trigger'::regtype
        and c.level in ('error', 'warning')
    order by 1
    $$,
    'plpgsql_check: no errors or warnings in the trigger functions of the app schema'
);

select diag('not checked, attached to no table: trigger function ' || p.oid::regprocedure)
from pg_catalog.pg_proc as p
inner join pg_catalog.pg_namespace as n on p.pronamespace = n.oid
where
    n.nspname = :'app'
    and p.prorettype = 'trigger'::regtype
    and not exists (select from pg_catalog.pg_trigger as tg where tg.tgfoid = p.oid)
order by 1;

select * from finish();

rollback;
