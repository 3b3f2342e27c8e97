-- The entity's change log. Every entity operation is a step (kind 'entity'); these columns and
-- indexes make that log ordered, idempotent and cheap to read.

-- How many changes the entity (jobs.context) has had. It moves only under the job's row lock,
-- so it numbers the changes in commit order across every thread and SQL caller.
alter table jobs add column entity_version bigint not null default 0;

-- The entity_version a change produced (null for reads, failed operations and other steps).
-- The history replays the changes in this order.
alter table steps add column entity_version bigint;

create unique index steps_entity_version on steps (job_id, entity_version)
where entity_version is not null;

-- A SQL caller's idempotency key is unique per workflow among entity operations: a retried
-- call finds the first one's step and returns its result.
create unique index steps_entity_idempotency on steps (job_id, idempotency_key)
where kind = 'entity' and idempotency_key is not null;
