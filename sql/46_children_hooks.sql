-- Child workflows, hook threads and cancellation.

-- The JSON form of a caught SQL error, for a step that records a failure instead of aborting
-- the activation (598: retrying the same call cannot help).
create or replace function _error_json(p_sqlstate text, p_message text, p_type text)
returns jsonb
language sql immutable
as $$
    select jsonb_build_object('message', p_message, 'type', p_type, 'code', 598,
                              'sqlstate', p_sqlstate)
$$;

-- Starts a child workflow from a workflow thread, exactly once per code position. With
-- p_await the step waits until the child ends (its end settles the step: see
-- _settle_parent); without, the step completes at once with the child's id. The default
-- child id is derived from the parent's id and the step, so a replay names the same child.
create or replace function start_child(
    p_task_id bigint,
    p_token uuid,
    p_seq integer,
    p_workflow_name text,
    p_args jsonb,
    p_task_queue text,
    p_workflow_id text,
    p_entity text,
    p_options jsonb,
    p_await boolean
) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_task tasks := _activation_task(p_task_id, p_token);
    v_parent jobs;
    -- A later run (continue_as_new) names its children apart from the earlier runs' ones.
    v_child text := coalesce(p_workflow_id,
                             v_task.job_id || '-' || v_task.thread || '-' || p_seq
                             || (select case when j.run > 1 then '-run' || j.run else '' end
                                   from jobs as j where j.id = v_task.job_id));
    v_error jsonb;
begin
    if not _begin_step(v_task, p_seq, 'child', p_workflow_name,
                       jsonb_build_object('workflow_id', v_child, 'await', p_await)) then
        return _recorded_step(v_task, p_seq, 'child', p_workflow_name);
    end if;
    select * into v_parent from jobs where id = v_task.job_id;
    begin
        -- A child continues its parent's trace unless the caller names a span of it.
        perform start_workflow(p_workflow_name, p_args,
                               coalesce(p_task_queue, p_entity, v_parent.task_queue), v_child,
                               p_entity,
                               case when v_parent.traceparent is null
                                         or coalesce(p_options, '{}') ? 'traceparent'
                                    then p_options
                                    else coalesce(p_options, '{}')
                                         || jsonb_build_object('traceparent',
                                                               v_parent.traceparent)
                               end);
        update jobs
           set parent_id = v_task.job_id,
               parent_thread = case when p_await then v_task.thread end,
               parent_seq = case when p_await then p_seq end
         where id = v_child;
    exception when sqlstate 'HM001' or sqlstate '22023' then
        v_error := _error_json(sqlstate, sqlerrm, 'ChildWorkflowError');
    end;
    if v_error is not null or not p_await then
        return _settle_step(v_task, p_seq,
                            case when v_error is null then to_jsonb(v_child) end, v_error);
    end if;
    return _recorded_step(v_task, p_seq, 'child', p_workflow_name);  -- scheduled: it waits
end
$$;

-- A child that ends settles the parent's step that awaits it (result, or its error with its
-- code) and wakes the parent thread, in the transaction that ends the child.
create or replace function _settle_parent(p_child jobs) returns void
language plpgsql
as $$
begin
    -- A step of a run that continued as new is archived: a later run's step at that position
    -- is not the child's to settle.
    if p_child.parent_seq is null
       or not exists (select 1 from steps as s
                       where s.job_id = p_child.parent_id and s.thread = p_child.parent_thread
                         and s.seq = p_child.parent_seq and s.kind = 'child'
                         and s.input ->> 'workflow_id' = p_child.id) then
        return;
    end if;
    if (_move_step(p_child.parent_id, p_child.parent_thread, p_child.parent_seq,
                   case when p_child.status = 'completed' then 'completed' else 'failed' end,
                   p_child.result, p_child.error, null, null, false)).job_id is not null then
        perform _wake(p_child.parent_id, p_child.parent_thread);
    end if;
end
$$;

-- Starts a hook: a new thread ('h1', 'h2', ...) of a running workflow that runs another
-- registered function and shares the workflow's entity. When p_signal_id is given the
-- hook's end (its return value, or its error) is delivered as that signal to the workflow,
-- unless the hook already signalled it: a hook's failure always reaches its caller.
-- p_options: {"execution_timeout": seconds}, the hook thread's own deadline, bounded by the
-- workflow's retention (_time_out_threads ends the thread with 596 when it passes);
-- {"traceparent"}: the W3C trace context its activations continue (docs/tracing.md).
drop function if exists hook(text, text, jsonb, text, text);
create or replace function hook(
    p_workflow_id text,
    p_workflow_name text,
    p_args jsonb default '[]',
    p_task_queue text default null,
    p_signal_id text default null,
    p_options jsonb default null
) returns text
language plpgsql
set search_path from current
as $$
declare
    v_job jobs;
    v_thread text;
    v_queue text;
    v_options jsonb := coalesce(nullif(p_options, 'null'), '{}');
    v_unknown text;
    v_timeout interval;
begin
    if coalesce(p_workflow_name, '') = '' then
        raise exception using errcode = '22023', message = 'hook workflow_name is required';
    end if;
    if jsonb_typeof(v_options) <> 'object' then
        raise exception using errcode = '22023',
            message = format('options of hook "%s" must be a JSON object, not %s',
                             p_workflow_name, jsonb_typeof(v_options));
    end if;
    select k into v_unknown from jsonb_object_keys(v_options) as k
     where k not in ('execution_timeout', 'traceparent') limit 1;
    if found then
        raise exception using errcode = '22023',
            message = format('unknown option "%s" of hook "%s" (a hook takes '
                             'execution_timeout, traceparent)', v_unknown, p_workflow_name);
    end if;
    perform _check_traceparent(v_options -> 'traceparent');
    if jsonb_typeof(coalesce(p_args, '[]'::jsonb)) <> 'array' then
        raise exception using errcode = '22023',
            message = format('args of hook "%s" must be a JSON array, not %s',
                             p_workflow_name, jsonb_typeof(p_args));
    end if;
    perform _check_name('hook workflow_name', p_workflow_name);
    perform _check_name('task_queue', p_task_queue);
    perform _check_name('signal id', p_signal_id);
    perform _check_value(format('the args of hook "%s"', p_workflow_name), p_args);
    -- The row lock numbers hook threads without gaps or races.
    select * into v_job from jobs where id = p_workflow_id for no key update;
    if not found then
        raise exception using errcode = 'HM002',
            message = format('hook "%s": workflow "%s" not found', p_workflow_name,
                             p_workflow_id);
    end if;
    if v_job.status in ('completed', 'failed', 'cancelled') then
        raise exception using errcode = 'HM003',
            message = format('hook "%s": workflow "%s" is %s and takes no more hooks',
                             p_workflow_name, p_workflow_id, v_job.status);
    end if;
    v_timeout := _check_timeout('execution_timeout', v_options -> 'execution_timeout',
                                v_job.retention);
    -- Numbered after the highest one left: a run that continued as new archived its finished
    -- hook threads, and one still running keeps its name.
    select 'h' || (coalesce(max(substr(thread, 2)::integer), 0) + 1) into v_thread
      from threads where job_id = p_workflow_id;
    v_queue := coalesce(p_task_queue, v_job.task_queue);
    insert into threads (job_id, thread, name, task_queue, args, signal_id, created_at,
                         execution_timeout, timeout_at, traceparent)
    values (p_workflow_id, v_thread, p_workflow_name, v_queue, coalesce(p_args, '[]'::jsonb),
            p_signal_id, _now(), v_timeout, _now() + v_timeout,
            v_options ->> 'traceparent');
    insert into tasks (job_id, thread, kind, name, task_queue, priority, run_at,
                       concurrency_key, key_rank)
    values (p_workflow_id, v_thread, 'workflow', p_workflow_name, v_queue, v_job.priority,
            _now(), v_job.concurrency_key,
            case when v_job.concurrency_key is not null
                 then _key_rank(v_queue, v_job.concurrency_key) end);
    perform _notify('q:' || v_queue);
    return v_thread;
end
$$;

-- A workflow thread starts a hook, exactly once per code position; the step records the
-- hook's thread. Bad input or a finished target fails the call, not the activation.
-- p_options as hook's (workers of protocol 3 and older leave it out).
drop function if exists start_hook(bigint, uuid, integer, text, jsonb, text, text, text);
create or replace function start_hook(
    p_task_id bigint,
    p_token uuid,
    p_seq integer,
    p_workflow_name text,
    p_args jsonb,
    p_task_queue text,
    p_workflow_id text,
    p_signal_id text,
    p_options jsonb default null
) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_task tasks := _activation_task(p_task_id, p_token);
    v_target text := coalesce(p_workflow_id, v_task.job_id);
    v_thread text;
    v_error jsonb;
begin
    -- Checked before the step records the args (other bad input fails the call, recorded).
    perform _check_value(format('the args of hook "%s"', left(p_workflow_name, 255)), p_args);
    if not _begin_step(v_task, p_seq, 'hook', p_workflow_name,
                       jsonb_build_object('workflow_id', v_target, 'args', p_args,
                                          'signal_id', p_signal_id)) then
        return _recorded_step(v_task, p_seq, 'hook', p_workflow_name);
    end if;
    begin
        v_thread := hook(v_target, p_workflow_name, p_args,
                         coalesce(p_task_queue, v_task.task_queue), p_signal_id, p_options);
    exception when sqlstate 'HM002' or sqlstate 'HM003' or sqlstate '22023' then
        v_error := _error_json(sqlstate, sqlerrm, 'HookError');
    end;
    return _settle_step(v_task, p_seq,
                        case when v_error is null
                             then jsonb_build_object('workflow_id', v_target, 'thread', v_thread)
                        end,
                        v_error);
end
$$;

-- A hook thread ended (p_error null: it returned p_result). Its caller, waiting on the
-- hook's signal id, gets the result or the error.
create or replace function _end_thread(
    p_job_id text, p_thread text, p_result jsonb, p_error jsonb
) returns void
language plpgsql
as $$
declare
    v_thread threads;
begin
    update threads
       set status = case when p_error is null then 'completed' else 'failed' end,
           result = p_result, error = p_error, completed_at = _now()
     where job_id = p_job_id and thread = p_thread
       and status in (select l.from_state from _legal_transitions() as l
                       where l.machine = 'thread' and l.owner = '_end_thread')
    returning * into v_thread;
    if v_thread.signal_id is not null
       and not exists (select 1 from steps
                        where job_id = p_job_id and thread = p_thread and kind = 'send'
                          and name = v_thread.signal_id and status = 'completed') then
        perform _deliver(v_thread.signal_id, p_job_id, p_result, p_error, p_job_id);
    end if;
end
$$;

-- Cancels a workflow: it ends `cancelled` with error code 410, every task it has queued is
-- removed so nothing of it runs afterwards, and with p_descend its running children are
-- cancelled too. Cancelling a finished workflow raises HM003 unless p_ignore_finished.
-- Returns the ids of every workflow it cancelled.
create or replace function cancel_workflow(
    p_workflow_id text,
    p_reason text default null,
    p_descend boolean default true,
    p_ignore_finished boolean default false
) returns text[]
language plpgsql
set search_path from current
as $$
begin
    perform _check_value('the cancel reason', to_jsonb(p_reason));
    return _stop_workflow(
        p_workflow_id, 'cancelled',
        jsonb_build_object(
            'message', coalesce(p_reason, format('workflow "%s" cancelled', p_workflow_id)),
            'type', 'CancelledFailure', 'code', 410, 'workflow_id', p_workflow_id),
        p_reason, p_descend, p_ignore_finished);
end
$$;

-- Ends an unfinished workflow from outside its code: cancelled (cancel_workflow) or failed
-- (its execution_timeout passed: _time_out_jobs) with p_error. Every task it has queued is
-- removed so nothing of it runs afterwards, and with p_descend its running children are
-- cancelled (with p_reason). A finished workflow raises HM003 unless p_ignore_finished.
-- Returns the ids of every workflow it ended.
create or replace function _stop_workflow(
    p_workflow_id text, p_to text, p_error jsonb, p_reason text, p_descend boolean,
    p_ignore_finished boolean
) returns text[]
language plpgsql
as $$
declare
    v_job jobs;
    v_child text;
    v_ended text[];
begin
    -- Its tasks first, then its row: the order in which claims and suspending activations
    -- lock them (the other order deadlocks with an activation that is suspending).
    perform from tasks where job_id = p_workflow_id order by id for update;
    -- FOR UPDATE (not no key update): it conflicts with the key share lock a signal delivery
    -- holds on the job (_deliver), so a signal and a cancel never cross unseen.
    select * into v_job from jobs where id = p_workflow_id for update;
    if not found then
        raise exception using errcode = 'HM002',
            message = format('workflow "%s" not found', p_workflow_id);
    end if;
    if v_job.status in ('completed', 'failed', 'cancelled') then
        if p_ignore_finished then
            return array[]::text[];
        end if;
        raise exception using errcode = 'HM003',
            message = format('workflow "%s" is %s; it cannot be %s', p_workflow_id,
                             v_job.status, p_to);
    end if;
    delete from tasks where job_id = p_workflow_id;
    v_job := _transition(p_workflow_id, p_to, null, p_error);
    perform _settle_parent(v_job);
    v_ended := array[p_workflow_id];
    if p_descend then
        for v_child in
            select id from jobs
             where parent_id = p_workflow_id
               and status not in ('completed', 'failed', 'cancelled')
             order by created_at
        loop
            v_ended := v_ended || cancel_workflow(v_child, p_reason, true, true);
        end loop;
    end if;
    return v_ended;
end
$$;

-- Ends a running hook thread from outside its code (its execution_timeout passed:
-- _time_out_threads): failed with p_error through _end_thread, so its caller's wait gets
-- the error; its queued tasks are removed (a worker still running one is fenced, HM004), the
-- children it started are cancelled (descend) and its open human tasks too. A thread or
-- workflow that already ended only loses its deadline. Returns whether the thread ended.
create or replace function _stop_thread(p_job_id text, p_thread text, p_error jsonb)
returns boolean
language plpgsql
as $$
declare
    v_status text;
    v_thread threads;
    v_child text;
begin
    -- The job's tasks, then its row, then the thread: the lock order of _stop_workflow (the
    -- caller's wait, woken below, is one of those tasks).
    perform from tasks where job_id = p_job_id order by id for update;
    select status into v_status from jobs where id = p_job_id for no key update;
    select * into v_thread from threads
     where job_id = p_job_id and thread = p_thread for update;
    if v_thread.status is distinct from 'running'
       or v_status in ('completed', 'failed', 'cancelled') then
        update threads set timeout_at = null where job_id = p_job_id and thread = p_thread;
        return false;
    end if;
    delete from tasks where job_id = p_job_id and thread = p_thread;
    perform _end_thread(p_job_id, p_thread, null, p_error);
    perform _cancel_human_tasks(array[p_job_id], false, p_thread);
    for v_child in
        select c.id from steps as s
          join jobs as c on c.id = s.input ->> 'workflow_id'
         where s.job_id = p_job_id and s.thread = p_thread and s.kind = 'child'
           and c.parent_id = p_job_id and c.status not in ('completed', 'failed', 'cancelled')
         order by s.seq
    loop
        perform cancel_workflow(v_child, format('hook %s of workflow "%s" timed out', p_thread,
                                                p_job_id), true, true);
    end loop;
    return true;
end
$$;

-- A workflow thread cancels another workflow, exactly once per code position.
create or replace function cancel_step(
    p_task_id bigint, p_token uuid, p_seq integer, p_workflow_id text, p_reason text,
    p_descend boolean
) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_task tasks := _activation_task(p_task_id, p_token);
    v_cancelled text[];
    v_error jsonb;
begin
    if not _begin_step(v_task, p_seq, 'cancel', p_workflow_id,
                       jsonb_build_object('reason', p_reason, 'descend', p_descend)) then
        return _recorded_step(v_task, p_seq, 'cancel', p_workflow_id);
    end if;
    begin
        v_cancelled := cancel_workflow(p_workflow_id, p_reason, p_descend);
    exception when sqlstate 'HM002' or sqlstate 'HM003' then
        v_error := _error_json(sqlstate, sqlerrm, 'CancelError');
    end;
    return _settle_step(v_task, p_seq, to_jsonb(v_cancelled), v_error);
end
$$;
