-- Flow control enforced by the claim (sql/25_limits.sql): per task queue a limit on running
-- tasks, a token bucket of starts per interval, a limit per concurrency key, and keys served
-- in rotation.

-- What set_queue_limits configured, one row per limited queue. A queue with no row has no
-- limits, and its claim takes the plain path. A row may exist before any task of its queue.
create table queue_limits (
    task_queue text primary key,
    max_running integer,
    rate integer,
    per interval,
    key_max_running integer,
    updated_at timestamptz not null,
    constraint queue_limits_max_running check (max_running >= 1),
    constraint queue_limits_rate check ((rate is null) = (per is null) and rate >= 1),
    constraint queue_limits_per check (per > interval '0'),
    constraint queue_limits_key_max_running check (key_max_running >= 1)
);

-- The token bucket of a rate-limited queue (tokens at refilled_at), written only by claims,
-- which a per-queue advisory lock serializes: set_queue_limits, which an application may call
-- inside a long transaction, never holds a row a claim needs.
create table queue_buckets (
    task_queue text primary key,
    tokens double precision not null,
    refilled_at timestamptz not null
);

-- The concurrency key of a task (a workflow's activations carry their job's key), and its
-- place in its key's rotation: a key's tasks are ranked 0, 1, 2, ... from where the rotation
-- stands when the key arrives, and the claim orders by rank before age, so every key's next
-- task goes before any key's one after it. Tasks without a key have no rank and go first.
alter table jobs add column concurrency_key text;
alter table tasks add column concurrency_key text;
alter table tasks add column key_rank bigint;
drop index tasks_claim;
create index tasks_claim on tasks (task_queue, priority desc, key_rank nulls first, run_at, id)
where state <> 'dead';
-- A key's last rank (its next task's is one more) ...
create index tasks_key on tasks (task_queue, concurrency_key, key_rank)
where concurrency_key is not null;
-- ... and where the rotation stands: the lowest rank still waiting (a new key's first rank).
create index tasks_rank on tasks (task_queue, key_rank)
where key_rank is not null and state = 'ready';
-- The running tasks of a queue and of each key, counted by a limited claim without reading
-- the queue's waiting tasks.
create index tasks_running on tasks (task_queue, concurrency_key) where state = 'leased';
