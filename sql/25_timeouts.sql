-- Timeouts (docs/timeouts.md). An activity's start_to_close, schedule_to_close and
-- heartbeat_timeout ride in its retry policy; a workflow's execution_timeout is a start
-- option. They are enforced here, in the database, on the engine's clock: every claim first
-- fires the timeouts that are due (_fire_timeouts), like timers, whichever worker claims and
-- however alive the worker that holds the timed-out run is. A lease never outlasts its
-- task's timeout_at, so the workers of its queue wake for it; next_due wakes the others.

-- The timeouts of an activity's retry policy, checked: each given one is a number of seconds
-- from 0.001 (1 ms) to 1e10; the job's retention bounds them further (_check_timeout).
create or replace function _activity_timeouts(p_policy jsonb) returns jsonb
language plpgsql immutable
as $$
declare
    v_out jsonb := '{}'::jsonb;
    v_key text;
begin
    foreach v_key in array array['start_to_close', 'schedule_to_close', 'heartbeat_timeout'] loop
        continue when _check_seconds(v_key, p_policy -> v_key, 0.001, 1e10,
                                     'from 0.001 (1 ms) up to the retention') is null;
        v_out := v_out || jsonb_build_object(v_key, p_policy -> v_key);
    end loop;
    return v_out;
end
$$;

-- A timeout in seconds (null: none) as an interval, at least 1 ms and at most p_retention:
-- a run or a workflow that may outlive how long its record is kept has no meaningful bound.
create or replace function _check_timeout(p_what text, p_seconds jsonb, p_retention interval)
returns interval
language plpgsql immutable
as $$
begin
    return make_interval(secs => _check_seconds(
        p_what, p_seconds, 0.001, extract(epoch from p_retention),
        format('from 0.001 (1 ms) to the retention (%s)', p_retention))::float8);
end
$$;

-- When a run claimed at p_started, last heartbeating at p_beat, times out (null: never).
-- Through _after (the timeouts are seconds, so it is the same sum): `timestamptz + interval`
-- is only stable, and an immutable SQL function over it is not inlined but planned at each
-- statement that calls it (three times in a claim's lease UPDATE).
create or replace function _run_deadline(
    p_close_at timestamptz, p_start_to_close interval, p_heartbeat_timeout interval,
    p_started timestamptz, p_beat timestamptz
) returns timestamptz
language sql immutable
as $$
    select least(p_close_at, _after(p_started, p_start_to_close),
                 _after(p_beat, p_heartbeat_timeout))
$$;

-- The error of a task whose timeout passed: schedule_to_close is final (596); a run's
-- start_to_close or heartbeat timeout is an ordinary failure (599) that the retry policy may
-- run again (it ends as 596 when it was the last attempt: _final_error).
create or replace function _timeout_error(p_task tasks, p_now timestamptz) returns jsonb
language sql stable
as $$
    select jsonb_build_object(
               'message', format('activity "%s" %s', p_task.name, case w.kind
                   when 'schedule_to_close' then format(
                       'did not finish within its schedule_to_close of %s', p_task.close_at
                       - (select s.created_at from steps as s
                           where s.job_id = p_task.job_id and s.thread = p_task.thread
                             and s.seq = p_task.seq))
                   when 'start_to_close' then format(
                       'ran past its start_to_close of %s (attempt %s)', p_task.start_to_close,
                       p_task.attempt)
                   else format('sent no heartbeat for its heartbeat_timeout of %s (attempt %s)',
                               p_task.heartbeat_timeout, p_task.attempt) end),
               'type', 'TimeoutFailure', 'timeout', w.kind,
               'code', case when w.kind = 'schedule_to_close' then 596 else 599 end)
      from (select case when p_task.close_at <= p_now then 'schedule_to_close'
                        when p_task.started_at + p_task.start_to_close <= p_now
                            then 'start_to_close'
                        else 'heartbeat' end as kind) as w
$$;

-- Fails the activity tasks whose timeout passed (fail_task: retried per policy, or the step
-- fails and its workflow wakes). A task another transaction holds is skipped, never waited
-- for (its worker is completing it right now, or it is fired at a later claim); so is one
-- whose job row an application's open transaction holds (see claim_tasks).
create or replace function _time_out_tasks(p_now timestamptz) returns void
language plpgsql
as $$
declare
    v_task tasks;
begin
    for v_task in
        select * from tasks
         where timeout_at <= p_now
         order by timeout_at
         limit 100
           for update skip locked
    loop
        continue when not exists (select 1 from jobs where id = v_task.job_id
                                     for no key update skip locked);
        perform fail_task(v_task.id, v_task.lease_token, _timeout_error(v_task, p_now));
    end loop;
end
$$;

-- Ends the workflows whose execution_timeout passed: failed with code 596, their queued tasks
-- removed and their running children cancelled (descend), like cancel_workflow. A workflow
-- whose rows another transaction holds is left for a later claim: the locks are taken with a
-- 1 ms lock_timeout, in a subtransaction of its own, so a claim never waits for them.
create or replace function _time_out_jobs(p_now timestamptz) returns void
language plpgsql
as $$
declare
    v_job jobs;
    v_lock_timeout text := current_setting('lock_timeout');
begin
    for v_job in
        select * from jobs
         where timeout_at <= p_now and status in ('pending', 'running', 'waiting')
         order by timeout_at
         limit 20
    loop
        begin
            perform set_config('lock_timeout', '1ms', true);
            perform _stop_workflow(
                v_job.id, 'failed',
                jsonb_build_object(
                    'message', format('workflow "%s" did not finish within its '
                                      'execution_timeout of %s', v_job.id,
                                      v_job.execution_timeout),
                    'type', 'TimeoutFailure', 'timeout', 'execution_timeout', 'code', 596,
                    'workflow_id', v_job.id),
                format('parent workflow "%s" timed out', v_job.id), true, true);
        exception when lock_not_available then
            null;  -- held right now: the next claim tries again
        end;
        perform set_config('lock_timeout', v_lock_timeout, true);
    end loop;
end
$$;

-- Ends the hook threads whose execution_timeout passed (_stop_thread): failed with code 596,
-- which their caller's wait receives, as a workflow's run ends (_time_out_jobs). Rows another
-- transaction holds are left for a later claim, as there.
create or replace function _time_out_threads(p_now timestamptz) returns void
language plpgsql
as $$
declare
    v_thread threads;
    v_lock_timeout text := current_setting('lock_timeout');
begin
    for v_thread in
        select * from threads
         where timeout_at <= p_now and status = 'running'
         order by timeout_at
         limit 20
    loop
        begin
            perform set_config('lock_timeout', '1ms', true);
            perform _stop_thread(
                v_thread.job_id, v_thread.thread,
                jsonb_build_object(
                    'message', format('hook "%s" (thread %s of workflow "%s") did not finish '
                                      'within its execution_timeout of %s', v_thread.name,
                                      v_thread.thread, v_thread.job_id,
                                      v_thread.execution_timeout),
                    'type', 'TimeoutFailure', 'timeout', 'execution_timeout', 'code', 596,
                    'workflow_id', v_thread.job_id, 'thread', v_thread.thread));
        exception when lock_not_available then
            null;  -- held right now: the next claim tries again
        end;
        perform set_config('lock_timeout', v_lock_timeout, true);
    end loop;
end
$$;

-- The soonest timeout of any task, workflow or hook thread (null: none), for next_due: any worker's
-- claim fires it. One still due after a claim is held by another transaction: looked at
-- again a second later, not in a busy loop. PL/pgSQL, not SQL: a SQL function with
-- subqueries is not inlined, and its statement was parsed and planned at every call (0.7 ms,
-- most of an idle worker's next_due, which runs after every claim).
create or replace function _next_timeout() returns timestamptz
language plpgsql stable
as $$
declare
    v_soonest timestamptz;
begin
    select least((select min(timeout_at) from tasks where timeout_at is not null),
                 (select min(timeout_at) from jobs
                   where timeout_at is not null
                     and status in ('pending', 'running', 'waiting')),
                 (select min(timeout_at) from threads
                   where timeout_at is not null and status = 'running'))
      into v_soonest;
    return case when v_soonest <= _now() then _now() + interval '1 second' else v_soonest end;
end
$$;

-- Every due timeout, fired by claim_tasks before it picks tasks. When nothing is due a claim
-- pays for three probes of small partial indexes only: entering the loops below (a cursor each)
-- made an empty claim half as dear again (docs/timeouts.md).
create or replace function _fire_timeouts(p_now timestamptz) returns void
language plpgsql
as $$
begin
    if exists (select 1 from jobs
                where timeout_at <= p_now and status in ('pending', 'running', 'waiting')) then
        perform _time_out_jobs(p_now);
    end if;
    if exists (select 1 from threads where timeout_at <= p_now and status = 'running') then
        perform _time_out_threads(p_now);
    end if;
    if exists (select 1 from tasks where timeout_at <= p_now) then
        perform _time_out_tasks(p_now);
    end if;
end
$$;

-- An activity's own heartbeat (`activity.heartbeat()`): it is alive and making progress. Its
-- lease is extended like heartbeat() does and its heartbeat_timeout starts again (the
-- worker's own lease-keeping beats do not restart it: a run that stops beating times out
-- however alive its process is). Returns whether the caller still holds the task.
create or replace function activity_heartbeat(p_task_id bigint, p_token uuid, p_lease interval)
returns boolean
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
as $$
declare
    v_now timestamptz := _now();
begin
    perform _check_lease(p_lease);
    update tasks as t
       set timeout_at = d.deadline,
           lease_expires_at = least(v_now + p_lease, d.deadline),
           run_at = least(v_now + p_lease, d.deadline)
      from (select _run_deadline(k.close_at, k.start_to_close, k.heartbeat_timeout,
                                 k.started_at, v_now) as deadline
              from tasks as k where k.id = p_task_id) as d
     where t.id = p_task_id and t.lease_token = p_token and t.state = 'leased'
       -- A run already past its deadline is not revived: the next claim fails it.
       and (t.timeout_at is null or t.timeout_at > v_now);
    return found;
end
$$;
