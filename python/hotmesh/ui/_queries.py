"""The SQL the dashboard reads with (the actions call the stored functions through
hotmesh._db). Reads of the app's tables and views only, on a `<app>_reader` connection in
read-only transactions; `{app}` is the app schema, composed with `sql.Identifier`.

The workflow list is keyset-paginated on (created_at, id), served by the index
jobs_created (migrations/0013_workflow_list.sql): a page reads a bounded number of rows,
however many workflows there are. Every filter is optional (a null parameter matches
everything).
"""

from __future__ import annotations

# One pass over jobs for the overview: how many by status, by minute of completion over the
# last hour (0 = this minute; null: earlier) and failed in the last day. The one read of the
# dashboard that grows with the table (docs/ui.md).
OVERVIEW = """
with clock as materialized (select {app}.engine_clock() as now)
select j.status,
       case when j.completed_at > c.now - interval '1 hour'
            then floor(extract(epoch from c.now - j.completed_at) / 60)::integer end as minute,
       coalesce(j.status = 'failed' and j.completed_at > c.now - interval '1 day', false)
           as failed_day,
       count(*) as n
  from {app}.jobs as j cross join clock as c
 group by 1, 2, 3
"""

# Starts per minute over the last hour (jobs_created serves it).
STARTS = """
with clock as materialized (select {app}.engine_clock() as now)
select floor(extract(epoch from c.now - j.created_at) / 60)::integer as minute, count(*) as n
  from {app}.jobs as j cross join clock as c
 where j.created_at > c.now - interval '1 hour'
 group by 1
"""

# One page of the list, newest first, after the cursor (created_at, id) when given. The filters
# an index serves (entity, search attributes, time range, cursor) choose a window of at most
# %(scan)s workflows, newest first; the others (status, name, what it waits on: no index, as
# an index on status would cost every status change its HOT update, migrations/0005) are
# applied within it. So a page reads at most %(scan)s rows, however rare its status. When the
# window is full, its last row comes too, marked `edge`: where to go on searching.
WORKFLOWS = """
with scanned as materialized (
    select j.id, j.workflow_name, j.entity, j.status, j.task_queue, j.created_at,
           j.completed_at, j.parent_id
      from {app}.jobs as j
     where (%(entity)s::text is null or j.entity = %(entity)s::text)
       and (%(search)s::jsonb is null or j.search @> %(search)s::jsonb)
       and (%(since)s::timestamptz is null or j.created_at >= %(since)s::timestamptz)
       and (%(until)s::timestamptz is null or j.created_at < %(until)s::timestamptz)
       and (%(after_at)s::timestamptz is null
            or (j.created_at, j.id) < (%(after_at)s::timestamptz, %(after_id)s::text))
     order by j.created_at desc, j.id desc
     limit %(scan)s::integer
)
(select j.*, false as edge,
        case when j.status in ('pending', 'running', 'waiting')
             then {app}.waits_text({app}.workflow_waits(j.id)) end as waiting_on
   from scanned as j
  where (%(status)s::text is null or j.status = %(status)s::text)
    and (%(name)s::text is null or j.workflow_name = %(name)s::text)
    and (%(waits)s::text is null or exists (
         select from {app}.steps as s
          where s.job_id = j.id and s.status in ('scheduled', 'retrying')
            and s.kind = %(waits)s::text))
  order by j.created_at desc, j.id desc
  limit %(limit)s::integer)
union all
(select j.*, true, null
   from scanned as j
  where (select count(*) from scanned) = %(scan)s::integer
  order by j.created_at, j.id
  limit 1)
"""

JOB = """
select id, workflow_name, entity, status, task_queue, args, context, result, error, parent_id,
       search, attempt, created_at, updated_at, completed_at
  from {app}.jobs where id = %(id)s::text
"""

CHILDREN = """
select id, workflow_name, status from {app}.jobs
 where parent_id = %(id)s::text order by created_at, id
"""

HOOKS = """
select thread, name, status, task_queue, attempt, created_at, completed_at
  from {app}.threads where job_id = %(id)s::text order by created_at, thread
"""
