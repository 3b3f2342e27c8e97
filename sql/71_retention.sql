-- Operations: app settings (the default retention), pruning finished workflows, and retrying
-- a failed (or stuck) workflow.

-- ------------------------------------------------------------------------------ settings

-- A setting's value, checked and normalised, or SQL null to remove it (back to the default).
-- The known keys are listed here, so a typo is an error instead of a setting nobody reads.
--   default_retention: how long a finished workflow is kept when its start gave no `expire`;
--   seconds (a JSON number) or Postgres interval text ("30 days"), stored as seconds.
create or replace function _setting_value(p_key text, p_value jsonb) returns jsonb
language plpgsql stable
set search_path from current
as $$
declare
    v_seconds numeric;
begin
    if p_key is distinct from 'default_retention' then
        raise exception using errcode = '22023',
            message = format('unknown setting "%s" (known: default_retention)',
                             coalesce(p_key, 'null'));
    end if;
    if p_value is null or p_value = 'null'::jsonb then
        return null;
    end if;
    if jsonb_typeof(p_value) = 'number' then
        v_seconds := p_value::numeric;
    elsif jsonb_typeof(p_value) = 'string' then
        begin
            v_seconds := extract(epoch from (p_value #>> '{}')::interval);
        exception when invalid_datetime_format or datetime_field_overflow
                       or interval_field_overflow then
            v_seconds := null;
        end;
    end if;
    -- Bounded like start_workflow's `expire`: make_interval does not check overflow.
    if v_seconds is null or not (v_seconds between 0 and 1e10) then
        raise exception using errcode = '22023',
            message = format('default_retention must be a number of seconds or an interval '
                             '(e.g. "30 days") from 0 to 1e10 seconds, not %s', p_value);
    end if;
    return to_jsonb(trim_scale(v_seconds));
end
$$;

-- Changes a setting of this app; SQL or JSON null removes it (back to the built-in default).
-- Returns the value now in force.
--   select my_app.set_setting('default_retention', '"30 days"');
create or replace function set_setting(p_key text, p_value jsonb) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_value jsonb := _setting_value(p_key, p_value);
begin
    if v_value is null then
        delete from settings where key = p_key;
    else
        insert into settings (key, value, updated_at)
        values (p_key, v_value, _now())
        on conflict (key) do update set value = excluded.value, updated_at = excluded.updated_at;
    end if;
    return get_setting(p_key);
end
$$;

-- A setting's value in force: the stored one, else the built-in default (default_retention:
-- 604800 seconds, 7 days).
create or replace function get_setting(p_key text) returns jsonb
language plpgsql stable
set search_path from current
as $$
declare
    v_value jsonb;
begin
    perform _setting_value(p_key, null);
    select s.value into v_value from settings as s where s.key = p_key;
    return coalesce(v_value, case p_key when 'default_retention' then '604800'::jsonb end);
end
$$;

-- How long a finished workflow is kept when its start gave no `expire` (start_workflow reads
-- it when the workflow starts, so a change applies to workflows started afterwards).
create or replace function _default_retention() returns interval
language sql stable
set search_path from current
as $$
    -- justify_hours: 7 days reads '7 days', not '168:00:00'.
    select justify_hours(
        make_interval(secs => (get_setting('default_retention') #>> '{}')::float8)
    )
$$;

-- ------------------------------------------------------------------------------ prune

-- Deletes workflows and every row recorded for them: the one list of a job's tables, shared by
-- prune and by start_workflow when it reuses the id of an expired workflow. Callers hold the
-- job rows' locks.
create or replace function _delete_jobs(p_ids text[]) returns void
language sql
set search_path from current
as $$
    delete from steps where job_id = any(p_ids);
    delete from tasks where job_id = any(p_ids);
    delete from threads where job_id = any(p_ids);
    delete from signals where job_id = any(p_ids);
    delete from run_steps where job_id = any(p_ids);
    delete from runs where job_id = any(p_ids);
    delete from human_tasks where job_id = any(p_ids);
    delete from start_keys where job_id = any(p_ids);
    delete from jobs where id = any(p_ids);
$$;

-- Deletes one batch of finished workflows whose retention ran out, with everything recorded
-- for them (steps, tasks, hook threads, signals kept for them, people's tasks), in the
-- caller's transaction.
-- The rule: a workflow is pruned when it is completed, failed or cancelled, its expire_at (end
-- + its retention: the start's `expire`, else the app's default_retention) has passed, AND it
-- finished at least p_older_than ago. p_older_than is an extra guard (default 0: retention
-- alone decides); it never prunes a workflow before its retention runs out. Live and waiting
-- workflows are never touched. SKIP LOCKED: a job row someone holds is left for the next run,
-- so pruning never waits on, or blocks, the engine. Returns how many workflows it deleted;
-- with p_dry_run, how many a full prune would delete now (nothing is deleted or locked).
create or replace function prune_batch(
    p_older_than interval default interval '0',
    p_batch integer default 1000,
    p_dry_run boolean default false
) returns integer
language plpgsql
set search_path from current
as $$
declare
    v_now timestamptz := _now();
    v_ids text[];
begin
    if p_older_than is null or p_older_than < interval '0' then
        raise exception using errcode = '22023',
            message = format('prune: older_than must be an interval >= 0, not %s',
                             coalesce(p_older_than::text, 'null'));
    end if;
    -- Bounded like every duration (1e10 s): now() minus more would leave the timestamp range.
    if p_older_than > make_interval(secs => 1e10) then
        raise exception using errcode = '22023',
            message = format('prune: older_than must be at most 1e10 seconds, not %s',
                             p_older_than);
    end if;
    if p_batch is null or p_batch not between 1 and 100000 then
        raise exception using errcode = '22023',
            message = format('prune: batch must be from 1 to 100000, not %s',
                             coalesce(p_batch::text, 'null'));
    end if;
    if coalesce(p_dry_run, false) then
        return (select count(*)
                  from jobs as j
                 where j.expire_at <= v_now
                   and j.status in ('completed', 'failed', 'cancelled')
                   and j.completed_at <= v_now - p_older_than);
    end if;
    select array_agg(v.id) into v_ids
      from (select j.id
              from jobs as j
             where j.expire_at <= v_now
               and j.status in ('completed', 'failed', 'cancelled')
               and j.completed_at <= v_now - p_older_than
             order by j.expire_at
             limit p_batch
               for update skip locked) as v;
    if v_ids is null then
        return 0;
    end if;
    perform _delete_jobs(v_ids);
    return cardinality(v_ids);
end
$$;

-- Forgets, in one batch, what signal() keeps outside any workflow once it is older than the
-- app's default_retention (and p_older_than): idempotency keys (a send repeated later than
-- that is delivered again) and kept signals sent to no workflow in particular that no wait
-- has taken (targeted ones go with their workflow). Without this both tables only grow.
-- Returns how many rows it deleted; with p_dry_run, how many a full prune would delete now.
create or replace function prune_signals(
    p_older_than interval default interval '0',
    p_batch integer default 1000,
    p_dry_run boolean default false
) returns integer
language plpgsql
set search_path from current
as $$
declare
    v_before timestamptz;
    v_keys integer;
    v_signals integer;
begin
    -- prune_batch checks the arguments the same way; a 0-row call reuses its checks.
    perform prune_batch(p_older_than, p_batch, true);
    v_before := _now() - greatest(_default_retention(), p_older_than);
    if coalesce(p_dry_run, false) then
        return (select count(*) from signal_keys where used_at < v_before)
             + (select count(*) from signals where job_id is null and created_at < v_before);
    end if;
    with old as (
        select idempotency_key from signal_keys
         where used_at < v_before
         order by used_at
         limit p_batch
           for update skip locked
    ), gone as (
        delete from signal_keys as k using old
         where k.idempotency_key = old.idempotency_key
        returning 1
    )
    select count(*) into v_keys from gone;
    with old as (
        select id from signals
         where job_id is null and created_at < v_before
         order by created_at
         limit p_batch
           for update skip locked
    ), gone as (
        delete from signals as s using old where s.id = old.id returning 1
    )
    select count(*) into v_signals from gone;
    return v_keys + v_signals;
end
$$;

-- Forgets, in one batch, the archived runs of workflows that continued as new (continue_task)
-- once they ended longer ago than their workflow's retention (and p_older_than): the runs row
-- and its steps, but not its entity changes, which stay in the entity's history. So a workflow
-- that continues for months keeps a bounded archive, however long it lives. Returns how many
-- runs it forgot; with p_dry_run, how many a full prune would forget now.
create or replace function prune_runs(
    p_older_than interval default interval '0',
    p_batch integer default 1000,
    p_dry_run boolean default false
) returns integer
language plpgsql
set search_path from current
as $$
declare
    v_now timestamptz := _now();
    v_count integer;
begin
    -- prune_batch checks the arguments the same way; a 0-row call reuses its checks.
    perform prune_batch(p_older_than, p_batch, true);
    if coalesce(p_dry_run, false) then
        return (select count(*)
                  from runs as r
                  join jobs as j on j.id = r.job_id
                 where r.completed_at + j.retention <= v_now
                   and r.completed_at <= v_now - p_older_than);
    end if;
    with old as (
        select r.job_id, r.run
          from runs as r
          join jobs as j on j.id = r.job_id
         where r.completed_at + j.retention <= v_now
           and r.completed_at <= v_now - p_older_than
         order by r.completed_at
         limit p_batch
           for update of r skip locked
    ), steps_gone as (
        delete from run_steps as s using old
         where s.job_id = old.job_id and s.run = old.run and s.entity_version is null
    ), gone as (
        delete from runs as r using old
         where r.job_id = old.job_id and r.run = old.run
        returning 1
    )
    select count(*) into v_count from gone;
    return v_count;
end
$$;

-- prune, the whole of it, as one command from psql or a scheduler: `call my_app.prune();`.
-- It runs prune_batch until a batch comes back short, committing after each batch, so no
-- transaction holds many rows or runs long. Two consequences of the COMMIT: it cannot run
-- inside an explicit transaction block (use `select my_app.prune_batch(...)` there), and it
-- cannot pin its search_path like every other function (a procedure with a SET clause may not
-- commit): its body is generated at install time with the app schema written into it, so it
-- depends on no caller's search_path. p_pruned (out) is the number of workflows deleted, or
-- with p_dry_run the number a prune would delete now.
do $install$
begin
    execute format($ddl$
create or replace procedure prune(
    p_older_than interval default interval '0',
    p_batch integer default 1000,
    p_dry_run boolean default false,
    inout p_pruned bigint default null
)
language plpgsql
as $body$
declare
    v_count integer;
begin
    p_pruned := 0;
    if coalesce(p_dry_run, false) then
        p_pruned := %1$I.prune_batch(p_older_than, p_batch, true);
        return;
    end if;
    loop
        v_count := %1$I.prune_batch(p_older_than, p_batch, false);
        p_pruned := p_pruned + v_count;
        commit;
        exit when v_count < p_batch;
    end loop;
    -- Then the old idempotency keys and untargeted kept signals (up to p_batch of each per
    -- transaction).
    loop
        v_count := %1$I.prune_signals(p_older_than, p_batch, false);
        commit;
        exit when v_count < p_batch;
    end loop;
    -- And the archived runs of workflows that continued as new (prune_runs).
    loop
        v_count := %1$I.prune_runs(p_older_than, p_batch, false);
        commit;
        exit when v_count < p_batch;
    end loop;
end
$body$
$ddl$, current_schema());
end
$install$;

-- ------------------------------------------------------------------------------ retry

-- Resets one thread of a failed workflow so that its replay performs again what made it fail:
-- its failed steps after its last completed step (a failure the code saw and moved past is
-- history and replays as recorded) and its scheduled remote activities (their tasks were
-- removed when the workflow failed) are deleted, so they run again at the same step numbers.
-- A failed child workflow behind a failed step is retried too and the step awaits it again; a
-- failed hook whose failure reached this thread as a signal is revived. Returns the workflows
-- retried below this one and how many steps were reset.
create or replace function _retry_thread(p_job_id text, p_thread text) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_last integer;
    v_step steps;
    v_hook text;
    v_sub jsonb;
    v_reset integer := 0;
    v_retried jsonb := '[]'::jsonb;
begin
    select coalesce(max(s.seq), 0) into v_last
      from steps as s
     where s.job_id = p_job_id and s.thread = p_thread and s.status = 'completed';
    for v_step in
        select *
          from steps as s
         where s.job_id = p_job_id and s.thread = p_thread
           and ((s.status = 'failed' and s.seq > v_last)
                or (s.status = 'scheduled' and s.kind = 'activity'))
         order by s.seq
    loop
        v_reset := v_reset + 1;
        if v_step.kind = 'child' and v_step.status = 'failed'
           and exists (select 1 from jobs as c
                        where c.id = v_step.input ->> 'workflow_id' and c.parent_id = p_job_id
                          and c.status = 'failed') then
            v_sub := _retry_job(v_step.input ->> 'workflow_id');
            v_reset := v_reset + (v_sub ->> 'reset_steps')::integer;
            v_retried := v_retried || to_jsonb(v_step.input ->> 'workflow_id') || (v_sub -> 'retried');
            -- The step awaits the child again: the child's end settles it (_settle_parent).
            perform _move_step(p_job_id, p_thread, v_step.seq, 'scheduled', null, null);
            continue;
        end if;
        if v_step.kind = 'signal' and v_step.status = 'failed' then
            select th.thread into v_hook
              from threads as th
             where th.job_id = p_job_id and th.signal_id = v_step.name and th.status = 'failed'
             order by th.created_at desc
             limit 1;
            if found then
                -- The revived hook delivers its end as this signal again (kept until the
                -- replayed wait takes it).
                update threads
                   set status = 'running', attempt = 1, result = null, error = null,
                       completed_at = null, timeout_at = _after(_now(), execution_timeout)
                 where job_id = p_job_id and thread = v_hook
                   and status in (select l.from_state from _legal_transitions() as l
                                   where l.machine = 'thread' and l.to_state = 'running'
                                     and l.owner = '_retry_thread');
                v_sub := _retry_thread(p_job_id, v_hook);
                v_reset := v_reset + (v_sub ->> 'reset_steps')::integer;
                v_retried := v_retried || (v_sub -> 'retried');
            end if;
        end if;
        delete from steps where job_id = p_job_id and thread = p_thread and seq = v_step.seq;
    end loop;
    return jsonb_build_object('reset_steps', v_reset, 'retried', v_retried);
end
$$;

-- Re-runs a failed workflow (row-locked by the caller or locked here): its threads are reset
-- (_retry_thread), it becomes pending with a fresh attempt count and no error, and its main
-- thread and its running hooks get an activation. This is the one transition failed ->
-- pending, which _transition refuses to every other caller.
create or replace function _retry_job(p_job_id text) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_hooks text[];
    v_thread text;
    v_sub jsonb;
    v_reset integer;
    v_retried jsonb;
    v_status text;
begin
    select status into v_status from jobs where id = p_job_id for no key update;
    perform _check_transition('job', format('workflow "%s"', p_job_id), v_status, 'pending',
                              '_retry_job');
    -- The hooks that were running when the workflow failed (their tasks were removed).
    select coalesce(array_agg(th.thread order by th.thread), '{}') into v_hooks
      from threads as th
     where th.job_id = p_job_id and th.status = 'running';
    v_sub := _retry_thread(p_job_id, 'main');
    v_reset := (v_sub ->> 'reset_steps')::integer;
    v_retried := v_sub -> 'retried';
    foreach v_thread in array v_hooks loop
        v_sub := _retry_thread(p_job_id, v_thread);
        v_reset := v_reset + (v_sub ->> 'reset_steps')::integer;
        v_retried := v_retried || (v_sub -> 'retried');
    end loop;
    update jobs
       set status = 'pending', attempt = 1, result = null, error = null, completed_at = null,
           expire_at = null, updated_at = _now(),
           -- the retried run gets its whole execution_timeout again
           timeout_at = _after(_now(), execution_timeout)
     where id = p_job_id
       and status in (select l.from_state from _legal_transitions() as l
                       where l.machine = 'job' and l.to_state = 'pending'
                         and l.owner = '_retry_job');
    -- Its running hooks get their whole execution_timeout again too.
    update threads set timeout_at = _after(_now(), execution_timeout)
     where job_id = p_job_id and status = 'running' and execution_timeout is not null;
    -- One statement per thread (Citus: docs/citus.md).
    perform _wake(p_job_id, 'main');
    for v_thread in select t.thread from threads as t
                     where t.job_id = p_job_id and t.status = 'running' loop
        perform _wake(p_job_id, v_thread);
    end loop;
    return jsonb_build_object('reset_steps', v_reset, 'retried', v_retried);
end
$$;

-- Retries a workflow, from SQL or `hotmesh retry`:
-- * failed: re-run from its last recorded step. The recorded steps replay; the failed step(s)
--   that made it fail run again (see _retry_thread); children it awaited that failed are
--   retried with it; its attempt count starts again at 1 and its error is cleared.
-- * unfinished with a dead task (parked: non-determinism after a code change, ...): the dead
--   tasks become ready at once with a fresh attempt count (after you fixed the code).
-- Anything else raises HM003 (HM002 for an unknown id). Returns {"workflow_id", "status",
-- "reset_steps", "retried": [child ids], "revived_tasks"}.
create or replace function retry_workflow(p_workflow_id text) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_job jobs;
    v_out jsonb;
    v_revived integer;
    v_queue text;
begin
    select * into v_job from jobs where id = p_workflow_id for no key update;
    if not found then
        raise exception using errcode = 'HM002',
            message = format('workflow "%s" not found', p_workflow_id);
    end if;
    if v_job.status = 'failed' then
        v_out := _retry_job(p_workflow_id);
        return jsonb_build_object('workflow_id', p_workflow_id, 'status', 'pending',
                                  'reset_steps', v_out -> 'reset_steps',
                                  'retried', v_out -> 'retried', 'revived_tasks', 0);
    end if;
    if v_job.status in ('pending', 'running', 'waiting') then
        with revived as (
            update tasks
               set state = 'ready', run_at = _now(), attempt = 0, error = null
             where job_id = p_workflow_id
               and state in (select l.from_state from _legal_transitions() as l
                              where l.machine = 'task' and l.to_state = 'ready'
                                and l.owner = 'retry_workflow')
            returning task_queue
        )
        select count(*) into v_revived from revived;
        if v_revived > 0 then
            update jobs set error = null, updated_at = _now() where id = p_workflow_id;
            -- Notified here, not in a query over tasks, which Citus would run, NOTIFY and
            -- all, on the node of the tables (docs/citus.md).
            foreach v_queue in array array(
                select distinct t.task_queue from tasks as t
                 where t.job_id = p_workflow_id and t.state = 'ready') loop
                perform _notify('q:' || v_queue);
            end loop;
            return jsonb_build_object('workflow_id', p_workflow_id, 'status', v_job.status,
                                      'reset_steps', 0, 'retried', '[]'::jsonb,
                                      'revived_tasks', v_revived);
        end if;
    end if;
    raise exception using errcode = 'HM003',
        message = format('workflow "%s" is %s; only a failed workflow, or one with a dead task, '
                         'can be retried', p_workflow_id, v_job.status);
end
$$;
