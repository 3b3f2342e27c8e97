-- Schedules (sql/48_schedules.sql): workflows started by the engine itself on a cron or an
-- interval. The claim fires a schedule when due_at has passed, so due_at is what the partial
-- index serves: one probe finds nothing on the claim's path when no schedule is due.
create table schedules (
    id text primary key,
    -- A 5-field cron expression, a macro (@daily, ...) or "@every <duration>".
    spec text not null,
    timezone text not null default 'UTC',
    workflow_name text not null,
    args jsonb not null default '[]',
    task_queue text not null,
    entity text,
    -- The options each run is started with (start_workflow's p_options).
    start_options jsonb not null default '{}',
    overlap text not null default 'skip',
    catchup_window interval not null default '1 hour',
    jitter interval not null default '0',
    status text not null default 'active',
    -- The nominal time of the next fire (a run's id is derived from it).
    next_fire_at timestamptz,
    -- When a claim should look at the schedule: the next fire plus its jitter, sooner when a
    -- buffered fire may start; null while paused.
    due_at timestamptz,
    -- buffer_one: the fire that waits for the previous run to end.
    buffered_at timestamptz,
    last_fire_at timestamptz,
    last_run_id text,
    fires bigint not null default 0,
    skipped bigint not null default 0,
    last_error jsonb,
    note text,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    constraint schedules_overlap check (overlap in ('skip', 'buffer_one', 'allow')),
    constraint schedules_status check (status in ('active', 'paused'))
);

create index schedules_due on schedules (due_at) where due_at is not null;

-- The schedule that started a run (null: started otherwise).
alter table jobs add column schedule_id text;
