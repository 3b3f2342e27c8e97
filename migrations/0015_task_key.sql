-- Ready for one app's rows distributed by job_id on Citus (docs/citus-row-distribution.md):
-- Citus distributes a table only when each of its unique constraints includes the
-- distribution column, and tasks was keyed by id alone. Keyed (id, job_id), every lookup by
-- id still uses the one index (id leads), and id stays unique: it is generated always.
-- Two statements: Citus runs ADD CONSTRAINT only alone.
alter table tasks drop constraint tasks_pkey;
alter table tasks add primary key (id, job_id);

-- signal_keys has no primary key (its unique key allows nulls), so without a replica identity
-- Citus cannot move an app's schema to another node online (citus_schema_move: logical
-- replication). Only logical decoding reads it: on one server it changes nothing.
alter table signal_keys replica identity full;
