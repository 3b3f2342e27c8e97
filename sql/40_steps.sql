-- Recording durable calls. A worker running an activation calls these with the activation's
-- task id and lease token; each records one step of the thread, keyed (job, thread, seq).
-- The first record of a position wins: a second worker that re-ran a call gets the recorded
-- outcome back, so every outcome is recorded exactly once.

-- The part of a step a replaying worker needs.
create or replace function _step_json(p_step steps) returns jsonb
language sql stable
as $$
    select jsonb_build_object('seq', p_step.seq, 'kind', p_step.kind, 'name', p_step.name,
                              'status', p_step.status, 'output', p_step.output,
                              'error', p_step.error, 'attempt', p_step.attempt,
                              'due', p_step.wake_at <= _now())
$$;

-- Refuses a recorded step that is not the call the code now makes at that position.
create or replace function _check_step(p_step steps, p_kind text, p_name text) returns void
language plpgsql immutable
as $$
begin
    if p_step.kind <> p_kind or p_step.name <> p_name then
        raise exception using errcode = 'HM006',
            message = format('non-determinism in workflow "%s" thread %s: step %s was recorded '
                             'as %s "%s" but the code now calls %s "%s"',
                             p_step.job_id, p_step.thread, p_step.seq, p_step.kind,
                             p_step.name, p_kind, p_name);
    end if;
end
$$;

-- The step already recorded at this position, checked against the call the code makes now:
-- what every step function answers when a replay (or a worker that lost its lease) asks again.
create or replace function _recorded_step(
    p_task tasks, p_seq integer, p_kind text, p_name text
) returns jsonb
language plpgsql stable
as $$
declare
    v_step steps;
begin
    select * into v_step from steps
     where job_id = p_task.job_id and thread = p_task.thread and seq = p_seq;
    perform _check_step(v_step, p_kind, p_name);
    return _step_json(v_step);
end
$$;

-- Records the call at this position as `scheduled` before performing it, so that exactly one
-- activation performs it; false when the position is already recorded (a replay, or a worker
-- that lost its lease): the caller then answers _recorded_step instead.
create or replace function _begin_step(
    p_task tasks, p_seq integer, p_kind text, p_name text, p_input jsonb
) returns boolean
language plpgsql
as $$
begin
    insert into steps (job_id, thread, seq, kind, name, status, input, created_at)
    values (p_task.job_id, p_task.thread, p_seq, p_kind, p_name, 'scheduled', p_input, _now())
    on conflict do nothing;
    return found;
end
$$;

-- Ends a step that was recorded `scheduled` in the same call: completed with p_output, or
-- failed with p_error (a call that failed without aborting the activation).
create or replace function _settle_step(
    p_task tasks, p_seq integer, p_output jsonb, p_error jsonb
) returns jsonb
language plpgsql
as $$
begin
    return _step_json(_move_step(p_task.job_id, p_task.thread, p_seq,
                                 case when p_error is null then 'completed' else 'failed' end,
                                 p_output, p_error));
end
$$;

-- Records the outcome of a call run inside the activation (an inline activity): one call,
-- one commit. With p_error, the retry policy decides: the step waits as `retrying` until
-- wake_at (the activation's task is rescheduled for then when it suspends), or it fails for
-- good with the final error. Returns the step as recorded. A batch of one (record_steps)
-- after its own lease check, which names the task's holder.
create or replace function record_step(
    p_task_id bigint,
    p_token uuid,
    p_seq integer,
    p_kind text,
    p_name text,
    p_input jsonb,
    p_output jsonb,
    p_error jsonb default null,
    p_retry_policy jsonb default null
) returns jsonb
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
as $$
begin
    perform _activation_task(p_task_id, p_token);
    return _raise_item(record_steps(_one_item(
        array['task_id', 'token', 'seq', 'kind', 'name', 'input', 'output', 'error',
              'retry_policy'],
        array[to_jsonb(p_task_id), to_jsonb(p_token), to_jsonb(p_seq), to_jsonb(p_kind),
              to_jsonb(p_name), p_input, p_output, p_error, p_retry_policy])) -> 0);
end
$$;

-- An item of record_steps that its one INSERT of fresh outcomes did not settle: an error to
-- record under the retry policy, or a position already recorded (a replay, a worker that
-- lost its lease, the next attempt of a `retrying` step).
create or replace function _record_item(p_task tasks, p_item jsonb) returns jsonb
language plpgsql
as $$
declare
    v_now timestamptz := _now();
    v_seq integer := (p_item ->> 'seq')::integer;
    v_kind text := p_item ->> 'kind';
    v_name text := p_item ->> 'name';
    v_output jsonb := p_item -> 'output';
    v_error jsonb := nullif(p_item -> 'error', 'null');
    v_policy jsonb := nullif(p_item -> 'retry_policy', 'null');
    v_step steps;
    v_attempt integer;
    v_retry_at timestamptz;
begin
    if v_error is not null then
        v_retry_at := _retry_at(v_policy, 1, v_error);
        insert into steps (job_id, thread, seq, kind, name, status, input, error, wake_at,
                           created_at, completed_at)
        values (p_task.job_id, p_task.thread, v_seq, v_kind, v_name,
                case when v_retry_at is null then 'failed' else 'retrying' end,
                p_item -> 'input',
                case when v_retry_at is null then _final_error(v_policy, 1, v_error)
                     else v_error end,
                v_retry_at, v_now, case when v_retry_at is null then v_now end)
        on conflict do nothing
        returning * into v_step;
        if found then
            return _step_json(v_step);
        end if;
    end if;

    select * into v_step from steps
     where job_id = p_task.job_id and thread = p_task.thread and seq = v_seq
       for update;
    perform _check_step(v_step, v_kind, v_name);
    if v_step.status <> 'retrying' then
        return _step_json(v_step);
    end if;

    -- The step was waiting for another attempt: this is its outcome.
    v_attempt := v_step.attempt + 1;
    if v_error is null then
        v_step := _move_step(p_task.job_id, p_task.thread, v_seq, 'completed', v_output, null,
                             v_attempt);
    else
        v_retry_at := _retry_at(v_policy, v_attempt, v_error);
        v_step := _move_step(p_task.job_id, p_task.thread, v_seq,
                             case when v_retry_at is null then 'failed' else 'retrying' end,
                             v_step.output,
                             case when v_retry_at is null
                                  then _final_error(v_policy, v_attempt, v_error)
                                  else v_error end,
                             v_attempt, v_retry_at);
    end if;
    return _step_json(v_step);
end
$$;

-- Records a call to an activity that runs elsewhere: a `scheduled` step and an activity task
-- on the activity's queue, in one transaction. The activity's completion (complete_task /
-- fail_task) records its outcome and wakes this thread. Returns the step as recorded.
-- p_concurrency_key: the activity shares its queue's per-key limit with the key's other
-- tasks (sql/25_limits.sql). Workers that predate it call the 7-argument form, which is this.
-- An activation that suspends after its calls sends them with its suspension instead
-- (suspend_tasks), in one round trip.
drop function if exists schedule_activity(bigint, uuid, integer, text, jsonb, text, jsonb);
create or replace function schedule_activity(
    p_task_id bigint,
    p_token uuid,
    p_seq integer,
    p_name text,
    p_args jsonb,
    p_task_queue text,
    p_retry_policy jsonb default null,
    p_concurrency_key text default null
) returns jsonb
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
as $$
begin
    return _schedule_activity(_activation_task(p_task_id, p_token), p_seq, p_name, p_args,
                              p_task_queue, p_retry_policy, p_concurrency_key);
end
$$;

-- schedule_activity for the activation p_task (its lease checked by the caller).
create or replace function _schedule_activity(
    p_task tasks,
    p_seq integer,
    p_name text,
    p_args jsonb,
    p_task_queue text,
    p_retry_policy jsonb,
    p_concurrency_key text
) returns jsonb
language plpgsql
as $$
declare
    v_task tasks := p_task;
    v_policy jsonb := _retry_policy(p_retry_policy);
    v_step steps;
    v_run_at timestamptz := _now();
    v_attempt integer := 0;
    v_retention interval;
    v_start_to_close interval;
    v_schedule_to_close interval;
    v_heartbeat_timeout interval;
begin
    if coalesce(p_task_queue, '') = '' then
        raise exception using errcode = '22023',
            message = format('activity "%s": task_queue is required', p_name);
    end if;
    perform _check_name('activity name', p_name);
    perform _check_name('task_queue', p_task_queue);
    perform _check_concurrency_key(p_concurrency_key);
    -- Its timeouts (sql/25_timeouts.sql): none may outlast the workflow's retention.
    if v_policy ?| array['start_to_close', 'schedule_to_close', 'heartbeat_timeout'] then
        select retention into v_retention from jobs where id = v_task.job_id;
        v_start_to_close := _check_timeout('start_to_close', v_policy -> 'start_to_close',
                                           v_retention);
        v_schedule_to_close := _check_timeout('schedule_to_close',
                                              v_policy -> 'schedule_to_close', v_retention);
        v_heartbeat_timeout := _check_timeout('heartbeat_timeout',
                                              v_policy -> 'heartbeat_timeout', v_retention);
    end if;
    insert into steps (job_id, thread, seq, kind, name, status, input, created_at)
    values (v_task.job_id, v_task.thread, p_seq, 'activity', p_name, 'scheduled', p_args, _now())
    on conflict do nothing
    returning * into v_step;
    if not found then
        select * into v_step from steps
         where job_id = v_task.job_id and thread = v_task.thread and seq = p_seq
           for update;
        perform _check_step(v_step, 'activity', p_name);
        if v_step.status <> 'retrying' then
            return _step_json(v_step);
        end if;
        -- An inline activity awaiting its next attempt, on a worker that cannot run it
        -- inline: that attempt goes through the queue, at its backoff time, counting on.
        v_run_at := coalesce(v_step.wake_at, v_run_at);
        v_attempt := v_step.attempt;
        v_step := _move_step(v_task.job_id, v_task.thread, p_seq, 'scheduled', v_step.output,
                             v_step.error);
    end if;
    -- run_at from the engine's clock, not the column default (now()): due on the same clock
    -- that claim_tasks compares with.
    -- schedule_to_close counts from the step's record: every attempt together.
    insert into tasks (job_id, thread, kind, seq, name, task_queue, priority, run_at, attempt,
                       payload, start_to_close, heartbeat_timeout, close_at, timeout_at,
                       concurrency_key, key_rank)
    values (v_task.job_id, v_task.thread, 'activity', p_seq, p_name, p_task_queue,
            v_task.priority, v_run_at, v_attempt,
            jsonb_build_object('args', p_args, 'retry_policy', v_policy), v_start_to_close,
            v_heartbeat_timeout, v_step.created_at + v_schedule_to_close,
            v_step.created_at + v_schedule_to_close, p_concurrency_key,
            case when p_concurrency_key is not null
                 then _key_rank(p_task_queue, p_concurrency_key) end);
    perform _notify('q:' || p_task_queue);
    return _step_json(v_step);
end
$$;

-- Records a durable timer: the step completes when a claim of this thread finds it due
-- (never before wake_at). A zero-second sleep completes at once. Returns the step.
create or replace function schedule_sleep(
    p_task_id bigint, p_token uuid, p_seq integer, p_seconds numeric
) returns jsonb
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
as $$
declare
    v_task tasks := _activation_task(p_task_id, p_token);
    v_now timestamptz := _now();
    v_step steps;
begin
    -- Bounded (NaN and Infinity excluded): make_interval does not check overflow, and a
    -- wrapped, negative wake_at would fire the timer at once.
    if p_seconds is null or not (p_seconds between 0 and 1e10) then
        raise exception using errcode = '22023',
            message = format('sleep duration must be from 0 to 1e10 seconds, not %s',
                             coalesce(p_seconds::text, 'null'));
    end if;
    insert into steps (job_id, thread, seq, kind, name, status, input, output, wake_at,
                       created_at, completed_at)
    values (v_task.job_id, v_task.thread, p_seq, 'sleep', '',
            case when p_seconds = 0 then 'completed' else 'scheduled' end,
            jsonb_build_object('seconds', p_seconds),
            case when p_seconds = 0 then to_jsonb(p_seconds) end,
            v_now + make_interval(secs => p_seconds::float8), v_now,
            case when p_seconds = 0 then v_now end)
    on conflict do nothing
    returning * into v_step;
    if not found then
        select * into v_step from steps
         where job_id = v_task.job_id and thread = v_task.thread and seq = p_seq;
        perform _check_step(v_step, 'sleep', '');
    end if;
    return _step_json(v_step);
end
$$;

-- Group commit: records the outcomes of several inline calls, from any number of
-- activations, in one transaction (one commit, one round trip); record_step is a batch of
-- one. Each item is a record_step call as JSON; the result is the array of their results, in
-- order. Stale leases are found up front and answered {"error": {...}} without aborting the
-- batch; any other error fails the whole batch and the caller retries its items one by one.
create or replace function record_steps(p_items jsonb) returns jsonb
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
-- The items are looked up in tasks by key; with the queue's churn the planner's statistics
-- lag and it would hash-join against a scan of the whole table instead.
set enable_seqscan = off
as $$
declare
    v_now timestamptz := _now();
    v_results jsonb[];
    v_held integer[];
    v_runs integer[];
    v_run_jobs text[];
    v_run_threads text[];
    v_fresh integer[];
    v_fresh_steps jsonb[];
    v_item record;
begin
    v_results := _batch_results(p_items);
    if cardinality(v_results) = 0 then
        return '[]'::jsonb;
    end if;
    -- The items whose lease is held: their positions (a stale token fails only its item,
    -- even when another item of the batch holds the same task), and for those held by an
    -- activation, its job and thread.
    select coalesce(array_agg(i.pos::integer), '{}'),
           array_agg(i.pos::integer) filter (where t.kind = 'workflow'),
           array_agg(t.job_id) filter (where t.kind = 'workflow'),
           array_agg(t.thread) filter (where t.kind = 'workflow')
      into v_held, v_runs, v_run_jobs, v_run_threads
      from jsonb_array_elements(p_items) with ordinality as i (value, pos)
     cross join lateral (
           select t.kind, t.job_id, t.thread from tasks as t
            where t.id = (i.value ->> 'task_id')::bigint
              and t.lease_token = (i.value ->> 'token')::uuid
           offset 0) as t;

    -- The common case, a call that returned, recorded for the first time: one INSERT for
    -- the whole batch. Whatever it does not settle (an error to record under the retry
    -- policy, a position already recorded, a lease not held, an activity's task) is answered
    -- below, one by one (_record_item).
    with items as (
        select r.pos, r.job_id, r.thread, (i ->> 'seq')::integer as seq, i ->> 'kind' as kind,
               i ->> 'name' as name, i -> 'input' as input, i -> 'output' as output
          from unnest(v_runs, v_run_jobs, v_run_threads) as r (pos, job_id, thread)
         cross join lateral (select p_items -> (r.pos - 1)) as e (i)
         where nullif(i -> 'error', 'null') is null
    ), fresh as (
        insert into steps as s (job_id, thread, seq, kind, name, status, input, output,
                                created_at, completed_at)
        select job_id, thread, seq, kind, name, 'completed', input, output, v_now, v_now
          from items
        on conflict do nothing
        -- Columns, not the row `s`: on Citus the row would be of the shard's row type.
        returning s.job_id, s.thread, s.seq, s.kind, s.name, s.status, s.output, s.error,
                  s.attempt, s.wake_at
    )
    -- _step_json's object, built from those columns.
    select coalesce(array_agg(items.pos), '{}'),
           array_agg(jsonb_build_object('seq', fresh.seq, 'kind', fresh.kind,
                                        'name', fresh.name, 'status', fresh.status,
                                        'output', fresh.output, 'error', fresh.error,
                                        'attempt', fresh.attempt,
                                        'due', fresh.wake_at <= v_now))
      into v_fresh, v_fresh_steps
      from fresh
      join items
        on fresh.job_id = items.job_id and fresh.thread = items.thread
       and fresh.seq = items.seq;
    for i in 1 .. cardinality(v_fresh) loop
        v_results[v_fresh[i]] := v_fresh_steps[i];
    end loop;

    for v_item in
        select i.value, i.pos::integer as pos
          from jsonb_array_elements(p_items) with ordinality as i (value, pos)
         where i.pos <> all(v_fresh)
    loop
        if v_item.pos <> all(v_held) then
            v_results[v_item.pos] := _lease_lost_item(v_item.value ->> 'task_id');
            continue;
        end if;
        -- Held, but maybe by an activity, which records nothing in its workflow (HM003).
        v_results[v_item.pos] := _record_item(
            _activation_task((v_item.value ->> 'task_id')::bigint,
                             (v_item.value ->> 'token')::uuid),
            v_item.value);
    end loop;
    return to_jsonb(v_results);
end
$$;
