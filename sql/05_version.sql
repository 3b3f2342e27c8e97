-- Which engine this schema runs: the hotmesh release whose sql/ was installed last, the newest
-- migration applied, and which workers it serves. The release is the Python package's version
-- (pyproject.toml); tests/test_schema.py fails when the two differ.
--
-- protocol is the worker protocol this engine speaks: the functions a worker calls, their
-- arguments, results and meaning (python/hotmesh/_install.py WORKER_PROTOCOL; a test fails
-- when the two differ). oldest_worker is the oldest protocol whose workers it still serves. A
-- release that changes a function workers call so that older workers cannot use it raises
-- oldest_worker, and renames or re-signatures that function, so that an older worker's call
-- fails (42883) instead of doing the wrong thing; that worker then reads this function, logs
-- "schema ... is newer than this worker" and exits for its supervisor (docs/upgrading.md).
-- Protocol 0 is the engine before engine_version() existed (4ca1965): this one serves it
-- (tests/test_upgrade.py runs that release's workers against it).
--
-- Before protocols, engine_version() had two columns; a result type cannot be replaced.
do $drop$
begin
    if (
        select cardinality(p.proallargtypes)
          from pg_proc as p
         where p.oid = to_regprocedure('engine_version()')
    ) = 2 then
        drop function engine_version();
    end if;
end
$drop$;

create or replace function engine_version(
    out version text, out migration integer, out protocol integer, out oldest_worker integer
)
language sql stable
set search_path from current
as $$
    select '0.6.0', (select max(m.version) from schema_migrations as m), 4, 0
$$;
