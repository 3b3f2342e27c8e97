-- A rate per concurrency key (docs/flow-control.md): at most key_rate tasks of one key start
-- per key_per, a token bucket per key like the queue's, enforced by the claim.
alter table queue_limits add column key_rate integer;
alter table queue_limits add column key_per interval;
alter table queue_limits add constraint queue_limits_key_rate
check ((key_rate is null) = (key_per is null) and key_rate >= 1);
alter table queue_limits add constraint queue_limits_key_per check (key_per > interval '0');

-- The token bucket of each key of a queue with a key rate (tokens at refilled_at); a key with
-- no row has a full bucket. Written only by claims, under the queue's advisory lock, which
-- also delete the rows that are full again (refilled_at older than key_per).
create table key_buckets (
    task_queue text not null,
    concurrency_key text not null,
    tokens double precision not null,
    refilled_at timestamptz not null,
    primary key (task_queue, concurrency_key)
);
create index key_buckets_refilled on key_buckets (task_queue, refilled_at);

-- get_queue_limits and queue_keys show the key rate: their columns change, so sql/ creates
-- them again (and queue_backlog, which reads get_queue_limits).
drop view if exists queue_backlog;
drop function if exists get_queue_limits();
drop function if exists queue_keys(text, integer);
