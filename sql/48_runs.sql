-- Continue-as-new: a workflow's main thread ends its run and the next run starts under the same
-- id, on the same jobs row (entity, search attributes, kept signals and retention carry over),
-- with new args, a fresh attempt count and an empty step history. The finished run is archived
-- (runs, run_steps), so a replay reads one run's history however long the workflow lives.
--
-- What ends with the run: its main thread and its finished hook threads (archived with their
-- steps); its timers, waits and remote activities (their tasks are removed; a late outcome
-- finds no task); the awaiting of its children (they run on as the workflow's children, and
-- their end settles nothing: _settle_parent checks that the step is still theirs). A hook
-- thread still running goes on in the next run. A signal sent while the run turns over is
-- never lost: one that filled a wait of the old run while its last activation ran flags the
-- activation to run again, and continue_task then does not continue (the replay sees the
-- signal and decides again); one sent after the turnover is kept for the new run.

-- The moment run p_run of a workflow started: when the run before it ended (the workflow's
-- creation for run 1).
create or replace function _run_started_at(p_job jobs) returns timestamptz
language sql stable
as $$
    select coalesce((select r.completed_at from runs as r
                      where r.job_id = p_job.id and r.run = p_job.run - 1),
                    p_job.created_at)
$$;

-- Archives the current run of a running workflow and starts the next one with p_args: the one
-- owner of the job move running -> pending (_legal_transitions). Returns the new run number.
create or replace function _continue_run(p_job_id text, p_args jsonb) returns integer
language plpgsql
as $$
declare
    v_job jobs;
    v_now timestamptz := _now();
    v_threads text[];
    v_hooks jsonb;
begin
    select * into v_job from jobs where id = p_job_id for no key update;
    if not found then
        raise exception using errcode = 'HM002',
            message = format('workflow "%s" not found', p_job_id);
    end if;
    perform _check_transition('job', format('workflow "%s"', p_job_id), v_job.status, 'pending',
                              '_continue_run');
    -- The threads that end with the run: main and the hook threads that finished.
    with gone as (
        delete from threads as th
         where th.job_id = p_job_id and th.status <> 'running'
        returning th.*
    )
    select coalesce(array_agg(g.thread), '{}') || 'main'::text,
           coalesce(jsonb_agg(to_jsonb(g) - 'job_id' order by g.created_at, g.thread), '[]')
      into v_threads, v_hooks
      from gone as g;
    with moved as (
        delete from steps as s
         where s.job_id = p_job_id and s.thread = any(v_threads)
        returning s.*
    )
    insert into run_steps (job_id, run, thread, seq, kind, name, status, input, output, error,
                           attempt, wake_at, idempotency_key, entity_version, created_at,
                           completed_at)
    select m.job_id, v_job.run, m.thread, m.seq, m.kind, m.name, m.status, m.input, m.output,
           m.error, m.attempt, m.wake_at, m.idempotency_key, m.entity_version, m.created_at,
           m.completed_at
      from moved as m;
    delete from tasks where job_id = p_job_id and thread = any(v_threads);
    insert into runs (job_id, run, workflow_name, task_queue, args, next_args, attempt, threads,
                      started_at, completed_at)
    values (p_job_id, v_job.run, v_job.workflow_name, v_job.task_queue, v_job.args, p_args,
            v_job.attempt, v_hooks, _run_started_at(v_job), v_now);
    update jobs
       set status = 'pending', run = run + 1, args = p_args, attempt = 1, result = null,
           error = null, updated_at = v_now
     where id = p_job_id
       and status in (select l.from_state from _legal_transitions() as l
                       where l.machine = 'job' and l.to_state = 'pending'
                         and l.owner = '_continue_run');
    -- The next run's first activation, as any wake-up makes it (its concurrency key too).
    perform _wake(p_job_id, 'main');
    return v_job.run + 1;
end
$$;

-- A workflow's main thread continued as new (workflow.continue_as_new): the worker's outcome
-- call, like complete_task. Ends the run and starts the next one with p_args (a JSON array of
-- positional arguments). Returns the new run's number, or null when something the activation
-- did not see arrived while it ran (a signal, an activity's outcome): the run then goes on,
-- the worker suspends the activation, and its replay sees what arrived and decides again.
create or replace function continue_task(p_task_id bigint, p_token uuid, p_args jsonb)
returns integer
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
as $$
declare
    v_task tasks := _held_task(p_task_id, p_token);
begin
    if jsonb_typeof(p_args) is distinct from 'array' then
        raise exception using errcode = '22023',
            message = format('continue_as_new: the args of the next run of workflow "%s" must '
                             'be a JSON array (positional arguments), not %s', v_task.job_id,
                             coalesce(jsonb_typeof(p_args), 'null'));
    end if;
    perform _check_value(format('the args of workflow "%s"', v_task.job_id), p_args);
    if v_task.kind <> 'workflow' or v_task.thread <> 'main' then
        raise exception using errcode = 'HM003',
            message = format('task %s is %s of workflow "%s"; only its main thread can '
                             'continue as new', p_task_id,
                             case when v_task.kind = 'activity'
                                  then format('activity "%s"', v_task.name)
                                  else format('hook thread %s', v_task.thread) end,
                             v_task.job_id);
    end if;
    if v_task.rerun then
        return null;
    end if;
    perform _start_job(v_task);
    return _continue_run(v_task.job_id, p_args);
end
$$;

-- Every run of a workflow, oldest first: the finished ones (status 'continued', with the args
-- they passed on) and the current one (its status). `steps` counts the run's recorded calls
-- (main and hook threads; entity changes made by SQL callers belong to no run). HM002 for an
-- unknown workflow.
--   select run, status, steps, next_args from my_app.workflow_runs('agent-7');
create or replace function workflow_runs(p_workflow_id text)
returns table (
    run integer,
    status text,
    workflow_name text,
    args jsonb,
    next_args jsonb,
    steps bigint,
    started_at timestamptz,
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
    -- Its own statement: Citus cannot run a query over the tables that calls a function that
    -- queries them again (docs/citus.md).
    v_started := _run_started_at(v_job);
    return query
    select r.run, 'continued'::text, r.workflow_name, r.args, r.next_args,
           (select count(*) from run_steps as s where s.job_id = r.job_id and s.run = r.run),
           r.started_at, r.completed_at
      from runs as r
     where r.job_id = p_workflow_id
    union all
    select j.run, j.status, j.workflow_name, j.args, null::jsonb,
           (select count(*) from steps as s where s.job_id = j.id and s.thread <> 'sql'),
           v_started, j.completed_at
      from jobs as j
     where j.id = p_workflow_id
     order by 1;
end
$$;

-- The timeline of one run of a workflow, in the rows of workflow_history: the current run is
-- workflow_history itself; a finished run shows its start, its steps, its hook threads and its
-- end ('continued', the next run's args as output). HM002 for an unknown workflow or run.
--   select thread, seq, kind, name, status from my_app.run_history('agent-7', 3);
create or replace function run_history(p_workflow_id text, p_run integer)
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
    v_run runs;
begin
    if exists (select 1 from jobs as j where j.id = p_workflow_id and j.run = p_run) then
        return query select * from workflow_history(p_workflow_id);
        return;
    end if;
    select * into v_run from runs as r where r.job_id = p_workflow_id and r.run = p_run;
    if not found then
        raise exception using errcode = 'HM002',
            message = format('workflow "%s" has no run %s', p_workflow_id,
                             coalesce(p_run::text, 'null'));
    end if;
    return query
    select e.at, e.thread, e.seq, e.kind, e.name, e.status, e.attempt, e.entity_version,
           e.input, e.output, e.error, e.completed_at
      from (
        select v_run.started_at as at, 0 as rank, 'main'::text as thread, null::integer as seq,
               'workflow'::text as kind, v_run.workflow_name as name, 'started'::text as status,
               null::integer as attempt, null::bigint as entity_version, v_run.args as input,
               null::jsonb as output, null::jsonb as error, null::timestamptz as completed_at
        union all
        select s.created_at, 1, s.thread, s.seq, s.kind, s.name, s.status, s.attempt,
               s.entity_version, s.input, s.output, s.error, s.completed_at
          from run_steps as s
         where s.job_id = p_workflow_id and s.run = p_run
        union all
        select (th ->> 'created_at')::timestamptz, 2, th ->> 'thread', null, 'thread',
               th ->> 'name', 'started', null, null, th -> 'args', null, null, null
          from jsonb_array_elements(v_run.threads) as th
        union all
        select (th ->> 'completed_at')::timestamptz, 3, th ->> 'thread', null, 'thread',
               th ->> 'name', th ->> 'status', (th ->> 'attempt')::integer, null, null,
               th -> 'result', th -> 'error', (th ->> 'completed_at')::timestamptz
          from jsonb_array_elements(v_run.threads) as th
        union all
        select v_run.completed_at, 4, 'main', null, 'workflow', v_run.workflow_name,
               'continued', v_run.attempt, null, null, v_run.next_args, null,
               v_run.completed_at
      ) as e
     order by e.at, e.rank, e.thread, e.seq;
end
$$;
