-- Operations: per-app settings (the default retention of finished workflows) and what pruning
-- needs to find a workflow's rows quickly.

-- Settings of this app, one JSON value per key; set_setting / get_setting check the keys and
-- values (sql/71_retention.sql). A missing key means the built-in default.
create table settings (
    key text primary key,
    value jsonb not null,
    updated_at timestamptz not null default now()
);

-- prune deletes the signals kept for the workflows it removes.
create index signals_job on signals (job_id) where job_id is not null;
