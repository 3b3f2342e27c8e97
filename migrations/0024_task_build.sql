-- The build of the worker whose claim leased a task (claim_tasks' build id). A main activation
-- claimed ahead of a free slot (prefetch) leaves its workflow where it was until it starts
-- (start_tasks) or ends, one job write fewer for every drained workflow; the move made then
-- records the build that ran it from here (docs/state-machines.md).
alter table tasks add column build_id text;
