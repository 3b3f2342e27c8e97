-- Which engine this schema runs: the hotmesh release whose sql/ was installed last, and the
-- newest migration applied. The release is the Python package's version (pyproject.toml);
-- tests/test_schema.py fails when the two differ.
create or replace function engine_version(out version text, out migration integer)
language sql stable
set search_path from current
as $$
    select '0.1.0', (select max(m.version) from schema_migrations as m)
$$;
