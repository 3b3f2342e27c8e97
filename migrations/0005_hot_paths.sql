-- Fewer index writes on the hottest paths: a claim, a status change, a completion.

-- A workflow's status changes several times in its life (pending, running, waiting, ...). With
-- no index on it, a change that touches no other indexed column is a HOT update (no index
-- write at all) when the row's page has room, which the fill factor keeps for new pages.
-- Entity queries (find) read newest first, which this order serves directly.
drop index jobs_entity_status;
create index jobs_entity on jobs (entity, created_at);
alter table jobs set (fillfactor = 80);

-- One index finds a job's tasks and keeps one activation task per thread (an activation has
-- no seq; an activity has its step's), where two indexes did the same: a claim rewrites each
-- index entry of its task.
alter table tasks add constraint tasks_seq_check check ((kind = 'workflow') = (seq is null));
drop index tasks_job;
drop index tasks_one_activation;
create unique index tasks_job on tasks (job_id, thread, seq) nulls not distinct;
