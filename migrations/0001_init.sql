-- The tables of one app schema. The installer runs this with search_path set to the app
-- schema, inside the transaction that records version 1 in schema_migrations.
-- Every per-workflow table is keyed by job_id first and has no cross-job foreign key, so the
-- schema can be distributed by job_id (Citus) when one Postgres is outgrown.

-- One row per workflow run. `id` is the workflow id the caller chose (or a generated one);
-- `context` is the workflow's entity, shared by its code, its hooks, other apps and people.
create table jobs (
    id text primary key,
    entity text not null,
    workflow_name text not null,
    task_queue text not null,
    status text not null default 'pending',
    args jsonb not null default '[]',
    context jsonb not null default '{}',
    result jsonb,
    error jsonb,
    parent_id text,
    retry_policy jsonb not null,
    attempt integer not null default 1,
    priority smallint not null default 0,
    retention interval not null default interval '7 days',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    completed_at timestamptz,
    expire_at timestamptz,
    constraint jobs_status_check check (
        status in ('pending', 'running', 'waiting', 'completed', 'failed', 'cancelled')
    )
);

create index jobs_entity_status on jobs (entity, status);
create index jobs_expire_at on jobs (expire_at) where expire_at is not null;
create index jobs_parent_id on jobs (parent_id) where parent_id is not null;

-- The history: one row per durable call, numbered per thread ('main', hook threads, 'sql' for
-- entity changes made by SQL callers). A row is `scheduled` while its outcome is awaited,
-- `retrying` between attempts of an inline activity, then `completed` or `failed` for good.
create table steps (
    job_id text not null,
    thread text not null,
    seq integer not null,
    kind text not null,
    name text not null default '',
    status text not null,
    input jsonb,
    output jsonb,
    error jsonb,
    attempt integer not null default 1,
    wake_at timestamptz,
    idempotency_key text,
    created_at timestamptz not null default now(),
    completed_at timestamptz,
    primary key (job_id, thread, seq),
    constraint steps_status_check check (
        status in ('scheduled', 'retrying', 'completed', 'failed')
    )
);

-- The queue: what some worker must do next. `run_at` is when the task becomes claimable; a
-- claim moves it to the lease's expiry, so one predicate (run_at <= now) finds both ready
-- tasks and tasks whose lease has lapsed. Finished tasks are deleted: the table stays small.
create table tasks (
    id bigint generated always as identity primary key,
    job_id text not null,
    thread text not null default 'main',
    kind text not null,
    seq integer,
    name text not null,
    task_queue text not null,
    state text not null default 'ready',
    priority smallint not null default 0,
    run_at timestamptz not null default now(),
    attempt integer not null default 0,
    payload jsonb not null default '{}',
    lease_owner text,
    lease_token uuid,
    lease_expires_at timestamptz,
    rerun boolean not null default false,
    error jsonb,
    created_at timestamptz not null default now(),
    constraint tasks_kind_check check (kind in ('workflow', 'activity')),
    constraint tasks_state_check check (state in ('ready', 'leased', 'dead'))
);

create index tasks_claim on tasks (task_queue, priority desc, run_at, id) where state <> 'dead';
-- A hot, small table of short-lived rows: vacuum it after a fixed number of changes, not a
-- fraction of its (tiny) size, so claims do not wade through dead index entries.
alter table tasks set (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.0,
    autovacuum_analyze_threshold = 1000
);
create index tasks_job on tasks (job_id, thread);
create unique index tasks_one_activation on tasks (job_id, thread) where kind = 'workflow';

-- What claim_tasks hands a worker: the task, its lease, and for a workflow activation the
-- thread's recorded steps, so replay needs no further query.
create type claimed_task as (
    task_id bigint,
    kind text,
    job_id text,
    thread text,
    seq integer,
    name text,
    task_queue text,
    lease_token uuid,
    attempt integer,
    args jsonb,
    payload jsonb,
    workflow_name text,
    job_attempt integer,
    steps jsonb
);
