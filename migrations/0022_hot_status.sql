-- A workflow's move (pending -> running -> waiting ...) is a HOT update, which writes no index
-- entry, only when no index names a column it changes. jobs_timeout_at named status in its
-- predicate, so every move wrote an entry into each of the table's indexes (about half the
-- cost of the move). It now holds the workflows with a deadline; a workflow's end clears its
-- timeout_at (_transitions), so finished ones leave it.
drop index jobs_timeout_at;
update jobs set timeout_at = null
where timeout_at is not null and status in ('completed', 'failed', 'cancelled');
create index jobs_timeout_at on jobs (timeout_at) where timeout_at is not null;
