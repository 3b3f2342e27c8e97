-- Inspection: what `hotmesh show` and people in psql read about one workflow.

-- One workflow as a JSON document: its row, its entity, how many steps it recorded and what
-- tasks it has queued (activations and activities, with their state and due time).
create or replace function get_workflow(p_workflow_id text) returns jsonb
language plpgsql stable
set search_path from current
as $$
declare
    v_doc jsonb;
begin
    select jsonb_build_object(
               'id', j.id, 'entity', j.entity, 'workflow_name', j.workflow_name,
               'task_queue', j.task_queue, 'status', j.status, 'args', j.args,
               'context', j.context, 'search', j.search, 'result', j.result, 'error', j.error,
               'parent_id', j.parent_id, 'attempt', j.attempt, 'priority', j.priority,
               'run', j.run,
               'created_at', j.created_at, 'updated_at', j.updated_at,
               'completed_at', j.completed_at, 'expire_at', j.expire_at,
               'build_id', j.build_id,
               'steps', (select count(*) from steps as s where s.job_id = j.id),
               'tasks', coalesce((
                   select jsonb_agg(jsonb_build_object(
                              'id', t.id, 'kind', t.kind, 'thread', t.thread, 'name', t.name,
                              'task_queue', t.task_queue, 'state', t.state, 'run_at', t.run_at,
                              'attempt', t.attempt, 'lease_owner', t.lease_owner) order by t.id)
                     from tasks as t where t.job_id = j.id), '[]'::jsonb))
      into v_doc
      from jobs as j
     where j.id = p_workflow_id;
    if v_doc is null then
        raise exception using errcode = 'HM002',
            message = format('workflow "%s" not found', p_workflow_id);
    end if;
    return v_doc;
end
$$;

-- The timeline of one workflow: its start, every step of every thread (main, hooks, and 'sql'
-- for entity changes made by SQL callers; entity changes carry their entity_version), hook
-- threads starting and ending, and its end. Ordered by time, then by a fixed rank (start,
-- steps, thread start, thread end, end), thread and step number, so rows recorded in the same
-- transaction always come out in the same order. HM002 for an unknown workflow.
-- Here, not with the views (70_views.sql): the per-shard engines of an app distributed by
-- job_id (hotmesh/_citus.py) install it too.
--   select at, thread, seq, kind, name, status from my_app.workflow_history('A42');
create or replace function workflow_history(p_workflow_id text)
returns table (
    at timestamptz,
    thread text,
    seq integer,
    kind text,
    name text,
    status text,
    attempt integer,
    entity_version bigint,
    input jsonb,
    output jsonb,
    error jsonb,
    completed_at timestamptz
)
language plpgsql stable
set search_path from current
as $$
declare
    v_job jobs;
    v_started timestamptz;
begin
    select * into v_job from jobs as j where j.id = p_workflow_id;
    if not found then
        raise exception using errcode = 'HM002',
            message = format('workflow "%s" not found', p_workflow_id);
    end if;
    -- Its own statement, for Citus (docs/citus.md).
    v_started := _run_started_at(v_job);
    return query
    select e.at, e.thread, e.seq, e.kind, e.name, e.status, e.attempt, e.entity_version,
           e.input, e.output, e.error, e.completed_at
      from (
        select v_started as at, 0 as rank, 'main'::text as thread, null::integer as seq,
               'workflow'::text as kind, j.workflow_name as name, 'started'::text as status,
               null::integer as attempt, null::bigint as entity_version, j.args as input,
               null::jsonb as output, null::jsonb as error, null::timestamptz as completed_at
          from jobs as j
         where j.id = p_workflow_id
        union all
        select s.created_at, 1, s.thread, s.seq, s.kind, s.name, s.status, s.attempt,
               s.entity_version, s.input, s.output, s.error, s.completed_at
          from steps as s
         where s.job_id = p_workflow_id
        union all
        select th.created_at, 2, th.thread, null, 'thread', th.name, 'started', null, null,
               th.args, null, null, null
          from threads as th
         where th.job_id = p_workflow_id
        union all
        select th.completed_at, 3, th.thread, null, 'thread', th.name, th.status, th.attempt,
               null, null, th.result, th.error, th.completed_at
          from threads as th
         where th.job_id = p_workflow_id and th.completed_at is not null
        union all
        select j.completed_at, 4, 'main', null, 'workflow', j.workflow_name, j.status,
               j.attempt, null, null, j.result, j.error, j.completed_at
          from jobs as j
         where j.id = p_workflow_id and j.completed_at is not null
      ) as e
     order by e.at, e.rank, e.thread, e.seq;
end
$$;
