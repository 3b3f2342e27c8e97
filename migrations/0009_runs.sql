-- Continue-as-new (workflow.continue_as_new, sql/48_runs.sql: continue_task): a workflow ends
-- its run and starts the next one under the same id, with the same jobs row (its entity,
-- search attributes and kept signals carry over) and an empty step history. The finished
-- runs are archived here, so the history a replay reads stays as short as one run.

-- The run the jobs row is on now: 1 for a workflow that never continued as new.
alter table jobs add column run integer not null default 1;

-- One row per finished run of a workflow that continued as new: what it ran with, and the
-- args it passed on to the next run. Its finished hook threads are kept as their rows' JSON.
create table runs (
    job_id text not null,
    run integer not null,
    workflow_name text not null,
    task_queue text not null,
    args jsonb not null,
    next_args jsonb not null,
    attempt integer not null,
    threads jsonb not null default '[]',
    started_at timestamptz not null,
    completed_at timestamptz not null,
    primary key (job_id, run)
);

-- The steps of the finished runs, as `steps` held them (entity changes keep their
-- entity_version: entity_history reads them from here too).
create table run_steps (
    job_id text not null,
    run integer not null,
    thread text not null,
    seq integer not null,
    kind text not null,
    name text not null,
    status text not null,
    input jsonb,
    output jsonb,
    error jsonb,
    attempt integer not null,
    wake_at timestamptz,
    idempotency_key text,
    entity_version bigint,
    created_at timestamptz not null,
    completed_at timestamptz,
    primary key (job_id, run, thread, seq)
);

create index run_steps_entity_version on run_steps (job_id, entity_version)
where entity_version is not null;
