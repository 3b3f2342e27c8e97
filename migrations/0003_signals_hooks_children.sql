-- Signals, hook threads, child workflows and search attributes.

-- A child workflow remembers the step of its parent that awaits it, so its end settles that
-- step and wakes the parent in the same transaction.
alter table jobs add column parent_thread text;
alter table jobs add column parent_seq integer;

-- Search attributes (workflow.search / enrich): flat key -> value, filterable from SQL.
alter table jobs add column search jsonb not null default '{}';

-- Every thread of a job other than 'main' (whose function and args are in jobs): hook
-- threads. _wake re-creates a thread's activation from here; signal_id is the wait its end
-- settles (exec_hook), so a hook's result or error always reaches its caller.
create table threads (
    job_id text not null,
    thread text not null,
    name text not null,
    task_queue text not null,
    args jsonb not null default '[]',
    status text not null default 'running',
    attempt integer not null default 1,
    signal_id text,
    result jsonb,
    error jsonb,
    created_at timestamptz not null default now(),
    completed_at timestamptz,
    primary key (job_id, thread),
    constraint threads_status_check check (status in ('running', 'completed', 'failed'))
);

-- Signals that arrived before anyone waited, kept until the first matching wait takes them;
-- a targeted one (job_id set) only goes to that workflow. A hook's end is delivered the same
-- way, with `error` set when the hook failed.
create table signals (
    id bigint generated always as identity primary key,
    signal_id text not null,
    job_id text,
    payload jsonb,
    error jsonb,
    created_at timestamptz not null default now()
);

create index signals_pending on signals (signal_id, id);

-- Every idempotency key a signal used: a repeated key is ignored, before or after delivery.
create table signal_keys (
    idempotency_key text primary key,
    used_at timestamptz not null default now()
);

-- The waits: a scheduled step of kind 'signal' (name = signal id), oldest first.
create index steps_signal_waits on steps (name, created_at)
where kind = 'signal' and status = 'scheduled';

create index jobs_search on jobs using gin (search jsonb_path_ops);
