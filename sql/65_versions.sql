-- Changing running code: patch markers (workflow.patched / deprecate_patch), the view that
-- says which live runs are on which side of a patch, and the history export that the
-- replayer (`hotmesh replay`, hotmesh.testing.Replayer) checks new code against.

-- Records a patch marker: a completed step of kind 'patch' named p_patch_id, at the position
-- where new code asked `patched(p_patch_id)` for the first time (input {"deprecated": ...}:
-- recorded by deprecate_patch). Asked again at a recorded position, it answers the recorded
-- step (HM006 when that step is not this marker).
create or replace function record_patch(
    p_task_id bigint, p_token uuid, p_seq integer, p_patch_id text, p_deprecated boolean
) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_task tasks := _activation_task(p_task_id, p_token);
    v_step steps;
begin
    if coalesce(p_patch_id, '') = '' then
        raise exception using errcode = '22023', message = 'patch id must be a non-empty text';
    end if;
    perform _check_name('patch id', p_patch_id);
    if p_deprecated is null then
        raise exception using errcode = '22023',
            message = format('patch "%s": deprecated must be true or false, not null',
                             p_patch_id);
    end if;
    insert into steps (job_id, thread, seq, kind, name, status, input, output, created_at,
                       completed_at)
    values (v_task.job_id, v_task.thread, p_seq, 'patch', p_patch_id, 'completed',
            jsonb_build_object('deprecated', p_deprecated), 'true', _now(), _now())
    on conflict do nothing
    returning * into v_step;
    if not found then
        return _recorded_step(v_task, p_seq, 'patch', p_patch_id);
    end if;
    return _step_json(v_step);
end
$$;

-- Per workflow name and patch id: how many unfinished runs recorded the marker (they run the
-- new branch) and how many did not (they run the old branch, or have not reached the patch
-- yet and will take the new one). When `without_marker` is 0 no live run needs the old branch:
-- replace patched() by deprecate_patch(), then, once every run with a marker has ended,
-- remove the call (docs/deploying.md).
--   select * from my_app.workflow_patches where workflow_name = 'claims_review';
create or replace view workflow_patches as
with marked as (
    select
        j.workflow_name,
        s.name as patch_id,
        count(*) filter (where j.status in ('pending', 'running', 'waiting')) as with_marker,
        count(*) filter (
            where j.status not in ('pending', 'running', 'waiting')
        ) as finished_with_marker,
        bool_or(coalesce((s.input ->> 'deprecated')::boolean, false)) as deprecated,
        max(s.created_at) as last_marked_at
    from steps as s
    inner join jobs as j on s.job_id = j.id
    where s.kind = 'patch'
    group by j.workflow_name, s.name
)

select
    m.workflow_name,
    m.patch_id,
    m.with_marker,
    m.finished_with_marker,
    m.deprecated,
    m.last_marked_at,
    (
        select count(*)
        from jobs as j
        where
            j.workflow_name = m.workflow_name
            and j.status in ('pending', 'running', 'waiting')
            and not exists (
                select 1 from steps as s
                where s.job_id = j.id and s.kind = 'patch' and s.name = m.patch_id
            )
    ) as without_marker
from marked as m;

-- One workflow as a single JSON document: its row, every thread (hooks) and every step of
-- every thread with inputs, outputs, errors, attempts and times, every entity version, and
-- its children. `hotmesh export` writes it; the replayer accepts it on any database (or none).
-- Rows are exported whole (to_jsonb), so columns a later migration adds come along.
create or replace function export_workflow(p_workflow_id text) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_job jobs;
    v_engine text;
    v_history jsonb;
begin
    select * into v_job from jobs where id = p_workflow_id;
    if not found then
        raise exception using errcode = 'HM002',
            message = format('workflow "%s" not found', p_workflow_id);
    end if;
    -- The parts that call functions which query the tables are read on their own, before
    -- the one query below: Citus cannot run a query over the tables that calls such a
    -- function (docs/citus.md).
    v_engine := (select e.version from engine_version() as e);
    v_history := coalesce((select jsonb_agg(to_jsonb(h) order by h.version)
                             from entity_history(p_workflow_id) as h), '[]');
    return jsonb_build_object(
        'format', 'hotmesh-export',
        'version', 1,
        'app', current_schema(),
        'engine', v_engine,
        'exported_at', _now(),
        'workflow', to_jsonb(v_job),
        'threads', coalesce((
            select jsonb_agg(to_jsonb(th) - 'job_id' order by th.created_at, th.thread)
              from threads as th where th.job_id = p_workflow_id), '[]'),
        'steps', coalesce((
            select jsonb_agg(to_jsonb(s) - 'job_id' order by s.thread, s.seq)
              from steps as s where s.job_id = p_workflow_id), '[]'),
        'entity_history', v_history,
        'children', coalesce((
            select jsonb_agg(jsonb_build_object(
                       'id', c.id, 'workflow_name', c.workflow_name, 'status', c.status,
                       'parent_thread', c.parent_thread, 'parent_seq', c.parent_seq)
                       order by c.created_at, c.id)
              from jobs as c where c.parent_id = p_workflow_id), '[]'));
end
$$;

-- The exports of the workflows named p_workflow_names (all names when null) in the given
-- statuses (all when null), started at or after p_since, oldest first, at most p_limit (all
-- when null): what `hotmesh replay` checks new code against.
create or replace function export_workflows(
    p_workflow_names text[],
    p_statuses text[] default null,
    p_since timestamptz default null,
    p_limit integer default null
) returns setof jsonb
language plpgsql
set search_path from current
as $$
declare
    v_unknown text;
    v_id text;
begin
    select s into v_unknown
      from unnest(p_statuses) as s
     where s is null or s not in (select l.from_state from _legal_transitions() as l
                                   where l.machine = 'job'
                                  union
                                  select l.to_state from _legal_transitions() as l
                                   where l.machine = 'job')
     limit 1;
    if found then
        raise exception using errcode = '22023',
            message = format('unknown workflow status "%s" (known: pending, running, waiting, '
                             'completed, failed, cancelled)', coalesce(v_unknown, 'null'));
    end if;
    if p_limit < 1 then
        raise exception using errcode = '22023',
            message = format('limit must be >= 1, not %s', p_limit);
    end if;
    -- The ids first, then one export each: Citus cannot run a query over the tables that
    -- calls a function that queries them again (docs/citus.md).
    foreach v_id in array coalesce(array(
        select j.id
          from jobs as j
         where (p_workflow_names is null or j.workflow_name = any(p_workflow_names))
           and (p_statuses is null or j.status = any(p_statuses))
           and (p_since is null or j.created_at >= p_since)
         order by j.created_at, j.id
         limit p_limit), '{}') loop
        return next export_workflow(v_id);
    end loop;
end
$$;
