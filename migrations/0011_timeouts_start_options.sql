-- Timeouts (docs/timeouts.md), fired by the claim like timers. An activity task keeps its
-- policy's start_to_close and heartbeat_timeout, and close_at (scheduled + schedule_to_close).
-- timeout_at is when it times out next: while leased, the earliest of started_at (the run's
-- claim) + start_to_close, its last heartbeat + heartbeat_timeout, and close_at; while ready,
-- close_at.
alter table tasks add column start_to_close interval;
alter table tasks add column heartbeat_timeout interval;
alter table tasks add column started_at timestamptz;
alter table tasks add column close_at timestamptz;
alter table tasks add column timeout_at timestamptz;
create index tasks_timeout_at on tasks (timeout_at) where timeout_at is not null;

-- A workflow's execution_timeout and the moment it passes (null: none).
alter table jobs add column execution_timeout interval;
alter table jobs add column timeout_at timestamptz;
create index jobs_timeout_at on jobs (timeout_at)
where timeout_at is not null and status in ('pending', 'running', 'waiting');

-- Start options (docs/python-api.md, docs/sql-api.md): a start that carries an idempotency
-- key returns the run that already holds it instead of starting another.
alter table jobs add column idempotency_key text;
create unique index jobs_idempotency_key on jobs (idempotency_key)
where idempotency_key is not null;
