-- A start's idempotency key (migration 0011) in a table of its own, keyed by the key: Citus
-- distributes a table only when each of its unique keys includes the distribution column, so
-- a unique index on jobs (idempotency_key) kept an app's rows from being distributed by job_id
-- (docs/citus-row-distribution.md). On one server this is the same one unique index lookup;
-- jobs keeps the column for reading. The key is freed with its run (_delete_jobs).
create table start_keys (
    idempotency_key text primary key,
    job_id text not null
);
create index start_keys_job_id on start_keys (job_id);
insert into start_keys (idempotency_key, job_id)
select
    idempotency_key,
    id
from jobs
where idempotency_key is not null;
drop index jobs_idempotency_key;
