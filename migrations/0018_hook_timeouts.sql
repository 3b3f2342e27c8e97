-- A hook's own execution_timeout (docs/timeouts.md): the hook thread keeps it and the moment
-- it passes, like a workflow's in jobs (0011). The claim's timeout pass ends a running hook
-- thread at timeout_at (_time_out_threads); the index holds only the running ones with one.
alter table threads add column execution_timeout interval;
alter table threads add column timeout_at timestamptz;
create index threads_timeout_at on threads (timeout_at)
where timeout_at is not null and status = 'running';
