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
