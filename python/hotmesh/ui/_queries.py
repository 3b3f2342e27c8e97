"""The SQL the dashboard reads with (the actions call the stored functions through
hotmesh._db). Reads of the app's tables and views only, on a `<app>_app` connection in
read-only transactions; `{}` is the app schema, composed with `sql.Identifier`.

The workflow list is keyset-paginated on (created_at, id), served by the index
jobs_created (migrations/0014_ui.sql): a page reads its rows and no others, however many
workflows there are. Every filter is optional (a null parameter matches everything).
"""

from __future__ import annotations

# Counts by status; starts and completions per minute over the last hour (0 = this minute);
# failed in the last day. One statement: one snapshot.
OVERVIEW = """
with clock as (select {app}.engine_clock() as now)
select
  (select coalesce(jsonb_object_agg(status, n), '{{}}')
     from (select status, count(*) as n from {app}.jobs group by status) as s) as counts,
  (select coalesce(jsonb_agg(jsonb_build_array(m, n) order by m), '[]')
     from (select floor(extract(epoch from c.now - j.created_at) / 60)::integer as m,
                  count(*) as n
             from {app}.jobs as j, clock as c
            where j.created_at > c.now - interval '1 hour'
            group by 1) as s) as starts,
  (select coalesce(jsonb_agg(jsonb_build_array(m, n) order by m), '[]')
     from (select floor(extract(epoch from c.now - j.completed_at) / 60)::integer as m,
                  count(*) as n
             from {app}.jobs as j, clock as c
            where j.completed_at > c.now - interval '1 hour'
            group by 1) as s) as completions,
  (select count(*) from {app}.jobs as j, clock as c
    where j.status = 'failed' and j.completed_at > c.now - interval '1 day') as failed_day
"""

# One page of the list, newest first, after the cursor (created_at, id) when given. `waits`
# is a step kind: the workflow has an unsettled step of that kind (a timer is a sleep step).
WORKFLOWS = """
select j.id, j.workflow_name, j.entity, j.status, j.task_queue, j.created_at,
       j.completed_at, j.parent_id,
       case when j.status in ('pending', 'running', 'waiting')
            then {app}.waits_text({app}.workflow_waits(j.id)) end as waiting_on
  from {app}.jobs as j
 where (%(status)s::text is null or j.status = %(status)s::text)
   and (%(name)s::text is null or j.workflow_name = %(name)s::text)
   and (%(entity)s::text is null or j.entity = %(entity)s::text)
   and (%(search)s::jsonb is null or j.search @> %(search)s::jsonb)
   and (%(since)s::timestamptz is null or j.created_at >= %(since)s::timestamptz)
   and (%(until)s::timestamptz is null or j.created_at < %(until)s::timestamptz)
   and (%(waits)s::text is null or exists (
        select from {app}.steps as s
         where s.job_id = j.id and s.status in ('scheduled', 'retrying')
           and s.kind = %(waits)s::text))
   and (%(after_at)s::timestamptz is null
        or (j.created_at, j.id) < (%(after_at)s::timestamptz, %(after_id)s::text))
 order by j.created_at desc, j.id desc
 limit %(limit)s::integer
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
