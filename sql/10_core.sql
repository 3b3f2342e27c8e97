-- Shared helpers: the clock, the retry policy and its backoff, notifications, the job state
-- machine and lease fencing. Every other file builds on these.

-- The engine's clock. Tests move it with `set hotmesh.fake_now = '...'`; everything that
-- compares against "now" asks this function, so leases, timers and backoff move together.
-- Any session may set a custom setting, so only the schema's owner (or a superuser) may move
-- the clock: for anyone else a future clock would expire leases and retention early.
create or replace function _now() returns timestamptz
language plpgsql stable
set search_path from current
as $$
declare
    v_fake text := current_setting('hotmesh.fake_now', true);
begin
    if v_fake is null or v_fake = '' then
        return now();
    end if;
    if not pg_has_role(session_user, (select n.nspowner from pg_namespace as n
                                       where n.nspname = current_schema()), 'member') then
        raise exception using errcode = '42501',
            message = format('hotmesh.fake_now is set, but only the owner of schema %s may '
                             'move the engine''s clock', current_schema());
    end if;
    return v_fake::timestamptz;
end
$$;

-- p_at + p_interval, with days and months counted in UTC: immutable, so an UPDATE may compute
-- it from a column (`expire_at = _after(v_now, j.retention)`), which Citus refuses for the
-- stable `timestamptz + interval` (that counts days in the session's time zone).
create or replace function _after(p_at timestamptz, p_interval interval) returns timestamptz
language sql immutable
as $$
    select (p_at at time zone 'UTC' + p_interval) at time zone 'UTC'
$$;

-- Wakes idle workers and result waiters of this app. One channel per app (the schema name);
-- the payload says what happened: 'q:<task queue>' (a task is ready), 'd:' and a JSON array
-- of workflow ids (they ended: _notify_done), 'e:' and an event (emit), or 's:<schedule id>'
-- (a schedule was created, changed, paused, resumed or deleted: for the dashboard).
create or replace function _notify(p_payload text) returns void
language sql volatile
as $$
    select pg_notify(current_schema(), p_payload)
$$;

-- One 'd:' payload per ~7,000 bytes of ids (a payload must stay under 8,000), not one per
-- workflow: every notification wakes and is read by every listener of the database, and a
-- batch of completions ends dozens of workflows at once.
create or replace function _notify_done(p_job_ids text[]) returns void
language plpgsql volatile
as $$
begin
    if cardinality(p_job_ids) = 1 then
        perform _notify('d:' || jsonb_build_array(p_job_ids[1])::text);
        return;
    end if;
    perform _notify('d:' || jsonb_agg(id order by ord)::text)
       from (select id, ord,
                    sum(octet_length(to_jsonb(id)::text) + 2) over (order by ord) / 7000 as chunk
               from unnest(p_job_ids) with ordinality as e (id, ord)) as sized
      group by chunk;
end
$$;

-- The limits on what callers hand the engine (docs/errors.md: Limits). A JSON value that enters as
-- workflow or hook args, a signal payload, an entity or search value, or a cancel reason is
-- at most 1 MiB (as stored: jsonb), at most 100 arrays or objects deep, its numbers within
-- the range of a double: every value is kept in the history and read back on every replay,
-- and deeper nesting or a number of thousands of digits breaks JSON parsers (Python's among
-- them) that a worker must survive. Refused with 22023, before anything is written.
create or replace function _check_value(p_what text, p_value jsonb) returns void
language plpgsql immutable
as $$
begin
    if pg_column_size(p_value) > 1048576 then
        raise exception using errcode = '22023',
            message = format('%s is %s bytes; the limit is 1 MiB (1048576 bytes)', p_what,
                             pg_column_size(p_value));
    end if;
    -- 100 arrays or objects inside each other at most: none at level 100 (the top is 0).
    if jsonb_path_exists(p_value, 'strict $.**{100} ? (@.type() == "array" '
                                  '|| @.type() == "object")') then
        raise exception using errcode = '22023',
            message = format('%s is nested more than 100 levels deep', p_what);
    end if;
    if jsonb_path_exists(p_value, 'strict $.** ? (@.type() == "number" '
                                  '&& @.abs() > 1.7976931348623157e308)') then
        raise exception using errcode = '22023',
            message = format('%s holds a number beyond the range of a double (1.8e308)',
                             p_what);
    end if;
end
$$;

-- Names (workflow and activity names, task queues, entity types, signal ids, idempotency
-- keys, worker ids) are at most 255 characters, like workflow ids: they are indexed, and a
-- longer one would fail on an index's row size or a NOTIFY payload instead of saying why.
create or replace function _check_name(p_what text, p_value text) returns void
language plpgsql immutable
as $$
begin
    if length(p_value) > 255 then
        raise exception using errcode = '22023',
            message = format('%s is %s characters long; at most 255', p_what, length(p_value));
    end if;
end
$$;

-- Every duration the API takes as JSON seconds is checked here, each against its own bounds:
-- a number from p_low (excluded when p_low_open) to p_high (null: no upper bound; the bounds
-- also keep make_interval, which does not check overflow, from wrapping). JSON null or none
-- is returned as null unless p_required. Anything else is 22023, '<p_what> must be a number of
-- seconds <p_range>, not <value>'.
create or replace function _check_seconds(
    p_what text, p_value jsonb, p_low numeric, p_high numeric, p_range text,
    p_low_open boolean default false, p_required boolean default false
) returns numeric
language plpgsql immutable
as $$
declare
    v_seconds numeric;
begin
    if nullif(p_value, 'null') is null and not p_required then
        return null;
    end if;
    if jsonb_typeof(p_value) = 'number' then
        v_seconds := (p_value #>> '{}')::numeric;
    end if;
    if v_seconds is null or v_seconds < p_low or p_low_open and v_seconds = p_low
       or v_seconds > p_high then
        raise exception using errcode = '22023',
            message = format('%s must be a number of seconds %s, not %s', p_what, p_range,
                             coalesce(p_value::text, 'null'));
    end if;
    return v_seconds;
end
$$;

-- Checks a retry policy and fills in the defaults (the seed's effective ones: 3 attempts,
-- 1 s first delay, coefficient 10, 120 s cap). Durations are in seconds.
create or replace function _retry_policy(p_policy jsonb) returns jsonb
language plpgsql immutable
as $$
declare
    v_in jsonb := coalesce(nullif(p_policy, 'null'), '{}'::jsonb);
    v_out jsonb;
    v_unknown text;
begin
    if jsonb_typeof(v_in) <> 'object' then
        raise exception using errcode = '22023',
            message = format('retry policy must be a JSON object, not %s', jsonb_typeof(v_in));
    end if;
    select string_agg(k, ', ') into v_unknown
      from jsonb_object_keys(v_in) as k
     where k not in ('maximum_attempts', 'initial_interval', 'backoff_coefficient',
                     'maximum_interval', 'non_retryable_errors', 'start_to_close',
                     'schedule_to_close', 'heartbeat_timeout');
    if v_unknown is not null then
        raise exception using errcode = '22023',
            message = format('retry policy has unknown field(s): %s', v_unknown);
    end if;
    v_out := jsonb_build_object(
        'maximum_attempts', coalesce(nullif(v_in -> 'maximum_attempts', 'null'), '3'),
        'initial_interval', coalesce(nullif(v_in -> 'initial_interval', 'null'), '1'),
        'backoff_coefficient', coalesce(nullif(v_in -> 'backoff_coefficient', 'null'), '10'),
        'maximum_interval', coalesce(nullif(v_in -> 'maximum_interval', 'null'), '120'),
        'non_retryable_errors', coalesce(nullif(v_in -> 'non_retryable_errors', 'null'), '[]')
    );
    -- Bounded so the attempt counters (integer) and intervals below cannot overflow later,
    -- when a failure is being recorded and an error would leave the task stuck.
    if jsonb_typeof(v_out -> 'maximum_attempts') <> 'number'
       or (v_out ->> 'maximum_attempts')::numeric not between 1 and 2147483647
       or (v_out ->> 'maximum_attempts')::numeric <> trunc((v_out ->> 'maximum_attempts')::numeric)
    then
        raise exception using errcode = '22023',
            message = format('retry policy maximum_attempts must be a whole number from 1 to '
                             '2147483647, not %s', v_out -> 'maximum_attempts');
    end if;
    perform _check_seconds('retry policy initial_interval', v_out -> 'initial_interval', 0,
                           null, '> 0', p_low_open => true, p_required => true);
    if jsonb_typeof(v_out -> 'backoff_coefficient') <> 'number'
       or (v_out ->> 'backoff_coefficient')::numeric < 1 then
        raise exception using errcode = '22023',
            message = format('retry policy backoff_coefficient must be a number >= 1, not %s',
                             v_out -> 'backoff_coefficient');
    end if;
    perform _check_seconds('retry policy maximum_interval', v_out -> 'maximum_interval',
                           (v_out ->> 'initial_interval')::numeric, 1e10,
                           '>= initial_interval and <= 1e10', p_required => true);
    if jsonb_typeof(v_out -> 'non_retryable_errors') <> 'array'
       or exists (select from jsonb_array_elements(v_out -> 'non_retryable_errors') as e
                   where jsonb_typeof(e) <> 'string') then
        raise exception using errcode = '22023',
            message = 'retry policy non_retryable_errors must be an array of error type names';
    end if;
    -- An activity's timeouts (sql/25_timeouts.sql) ride with its policy, only when given.
    return v_out || _activity_timeouts(v_in);
end
$$;

-- The delay before run p_attempt + 1 after p_attempt runs have failed:
-- min(initial_interval * backoff_coefficient ^ (p_attempt - 1), maximum_interval).
-- Computed in log space so a large attempt number cannot overflow.
create or replace function retry_delay(p_policy jsonb, p_attempt integer) returns interval
language plpgsql immutable
set search_path from current
as $$
declare
    v_policy jsonb := _retry_policy(p_policy);
    v_initial float8 := (v_policy ->> 'initial_interval')::float8;
    v_coefficient float8 := (v_policy ->> 'backoff_coefficient')::float8;
    v_maximum float8 := (v_policy ->> 'maximum_interval')::float8;
begin
    if p_attempt is null or p_attempt < 1 then
        raise exception using errcode = '22023',
            message = format('retry_delay: attempt must be >= 1, not %s',
                             coalesce(p_attempt::text, 'null'));
    end if;
    if (p_attempt - 1) * ln(v_coefficient) >= ln(v_maximum / v_initial) then
        return make_interval(secs => v_maximum);
    end if;
    return make_interval(secs => v_initial * power(v_coefficient, p_attempt - 1));
end
$$;

-- When to run again after p_attempt failed runs, or null when the failure is final: the
-- attempts are used up, the error is final by its code (598 fatal, 597 retries exhausted
-- further down, 596 timeout, 410 cancelled) or its type is listed as non-retryable.
create or replace function _retry_at(p_policy jsonb, p_attempt integer, p_error jsonb)
returns timestamptz
language plpgsql stable
as $$
declare
    v_policy jsonb := _retry_policy(p_policy);
begin
    if p_attempt >= (v_policy ->> 'maximum_attempts')::integer
       or (p_error ->> 'code') in ('410', '596', '597', '598')
       or (v_policy -> 'non_retryable_errors') ? coalesce(p_error ->> 'type', '') then
        return null;
    end if;
    return _now() + retry_delay(v_policy, p_attempt);
end
$$;

-- The error a caller finally sees. An error that is final by its code keeps it; any other
-- error becomes 597 (the seed's "maxed"; 596 for a timeout) when the attempts ran out, else
-- 598 (fatal: its type is non-retryable).
create or replace function _final_error(p_policy jsonb, p_attempt integer, p_error jsonb)
returns jsonb
language sql stable
as $$
    select p_error || jsonb_build_object(
        'code', case
            when (p_error ->> 'code') in ('410', '596', '597', '598')
                then (p_error ->> 'code')::integer
            -- A run that timed out on its last attempt ends a timeout, not "retries exhausted".
            when p_error ->> 'type' = 'TimeoutFailure' then 596
            when p_attempt >= (_retry_policy(p_policy) ->> 'maximum_attempts')::integer then 597
            else 598
        end,
        'attempts', p_attempt)
$$;

-- The legal moves of the three state machines (docs/state-machines.md), each with the one
-- function that makes it. Every status change consults this list, in its WHERE clause (a set
-- of rows moves together, the illegal ones stay) or through _check_transition (one row,
-- refused with HM003):
--   job:  pending -> running <-> waiting -> completed | failed | cancelled; pending -> failed
--         (execution_timeout); pending | waiting -> completed (an activation claimed ahead
--         that ends before it starts); pending | waiting -> waiting (one that suspends
--         before it starts); failed -> pending; running -> pending
--         (continue_as_new: the next run)
--   task: ready -> leased -> ready (backoff) | dead -> ready; a finished task is deleted
--   step: scheduled | retrying -> completed | failed; retrying <-> scheduled; failed -> scheduled
--   schedule: active <-> paused
--   human_task: open -> claimed -> resolved | expired | cancelled; claimed -> open; open -> open
create or replace function _legal_transitions()
returns table (machine text, from_state text, to_state text, owner text)
language sql immutable
as $$
    values
        ('job', 'pending', 'running', '_transitions'),
        ('job', 'waiting', 'running', '_transitions'),
        ('job', 'running', 'waiting', '_transitions'),
        -- A main activation claimed ahead that suspends before it starts (suspend_tasks): one
        -- write, with the build that ran it, where the move to running and back took two.
        ('job', 'pending', 'waiting', '_transitions'),
        ('job', 'waiting', 'waiting', '_transitions'),
        ('job', 'running', 'completed', '_transitions'),
        -- A main activation claimed ahead (prefetch) that ends before it starts: one write.
        ('job', 'pending', 'completed', '_transitions'),
        ('job', 'waiting', 'completed', '_transitions'),
        ('job', 'running', 'failed', '_transitions'),
        ('job', 'waiting', 'failed', '_transitions'),
        -- A workflow whose execution_timeout passed before it ever ran (_time_out_jobs).
        ('job', 'pending', 'failed', '_transitions'),
        ('job', 'pending', 'cancelled', '_transitions'),
        ('job', 'running', 'cancelled', '_transitions'),
        ('job', 'waiting', 'cancelled', '_transitions'),
        -- Only a retry goes back: it also resets the attempt count, result and error.
        ('job', 'failed', 'pending', '_retry_job'),
        -- continue_as_new: the run ends and the next one starts on the same row.
        ('job', 'running', 'pending', '_continue_run'),
        ('task', 'ready', 'leased', 'claim_tasks'),
        -- A lease that expired is taken over by the next claim (a new token).
        ('task', 'leased', 'leased', 'claim_tasks'),
        ('task', 'leased', 'ready', '_requeue_tasks'),
        ('task', 'leased', 'dead', 'bury_task'),
        ('task', 'dead', 'ready', 'retry_workflow'),
        ('step', 'scheduled', 'completed', '_move_steps'),
        ('step', 'scheduled', 'failed', '_move_steps'),
        -- A signal wait or send deferred by a lock a caller's open transaction holds.
        ('step', 'scheduled', 'retrying', '_move_steps'),
        ('step', 'retrying', 'completed', '_move_steps'),
        ('step', 'retrying', 'failed', '_move_steps'),
        ('step', 'retrying', 'retrying', '_move_steps'),
        -- An inline activity's next attempt sent through the queue.
        ('step', 'retrying', 'scheduled', '_move_steps'),
        -- A retried workflow awaits a failed child again.
        ('step', 'failed', 'scheduled', '_move_steps'),
        -- Hook threads (sql/46_children_hooks.sql): a hook returns or fails (its code, or its
        -- execution_timeout: _stop_thread); a retry revives a failed one.
        ('thread', 'running', 'completed', '_end_thread'),
        ('thread', 'running', 'failed', '_end_thread'),
        ('thread', 'failed', 'running', '_retry_thread'),
        ('schedule', 'active', 'paused', 'pause_schedule'),
        ('schedule', 'paused', 'active', 'resume_schedule'),
        -- Human tasks (sql/49_human_tasks.sql): claim, release / reassign / escalate, answer
        -- (resolve_human_task, or a signal that fills the wait: _signal_human_task), SLA
        -- expiry; cancelled when their workflow ends.
        ('human_task', 'open', 'claimed', '_move_human_task'),
        ('human_task', 'open', 'open', '_move_human_task'),
        ('human_task', 'claimed', 'open', '_move_human_task'),
        ('human_task', 'open', 'resolved', '_move_human_task'),
        ('human_task', 'claimed', 'resolved', '_move_human_task'),
        ('human_task', 'open', 'expired', '_move_human_task'),
        ('human_task', 'claimed', 'expired', '_move_human_task'),
        ('human_task', 'open', 'cancelled', '_cancel_human_tasks'),
        ('human_task', 'claimed', 'cancelled', '_cancel_human_tasks')
$$;

-- Refuses a move the table does not list (for p_owner, when given: a move another function
-- owns is refused too), the same way for every machine: HM003 naming the row (p_row, e.g.
-- 'workflow "w1"') and both states; an unknown target state is 22023.
create or replace function _check_transition(
    p_machine text, p_row text, p_from text, p_to text, p_owner text default null
) returns void
language plpgsql stable
as $$
begin
    if not exists (select from _legal_transitions() as l
                    where l.machine = p_machine and p_to in (l.to_state, l.from_state)) then
        raise exception using errcode = '22023',
            message = format('unknown %s status "%s"',
                             case p_machine when 'job' then 'workflow' else p_machine end, p_to);
    end if;
    if not exists (select from _legal_transitions() as l
                    where l.machine = p_machine and l.from_state = p_from
                      and l.to_state = p_to and l.owner = coalesce(p_owner, l.owner)) then
        raise exception using errcode = 'HM003',
            message = format('%s is %s; it cannot become %s', p_row, p_from, p_to);
    end if;
end
$$;

-- The job state machine: every status change but a retry goes through here.
-- _transitions moves every job of p_job_ids that may make the move (p_results[i] is the
-- result of p_job_ids[i] when it completes) and returns the moved rows; _transition moves one
-- job and refuses when it cannot. The move to running (a claim) never waits for a job row
-- that another transaction holds (an application's open transaction that changed the entity):
-- that job does not move, and the claim gives its task back for later.
-- p_build_ids[i]: the code of the worker that runs p_job_ids[i]'s activation (the build of
-- its task's lease), recorded in the same row version (a second UPDATE of each row cost as
-- much as the move); null keeps the one recorded.
drop function if exists _transitions(text[], text, jsonb[], jsonb);
drop function if exists _transitions(text[], text, jsonb[], jsonb, text);
create or replace function _transitions(
    p_job_ids text[], p_to text, p_results jsonb[] default null, p_error jsonb default null,
    p_build_ids text[] default null
) returns setof jobs
language plpgsql
as $$
declare
    v_now timestamptz := _now();
    v_rows jobs[];
    v_moved text[];
    v_runs text[];
    v_schedules text[];
    v_ends boolean := p_to in ('completed', 'failed', 'cancelled');
begin
    if p_to not in ('pending', 'running', 'waiting', 'completed', 'failed', 'cancelled') then
        raise exception using errcode = '22023',
            message = format('unknown workflow status "%s"', p_to);
    end if;
    -- One statement for the batch, its rows kept in an array (not a loop of RETURN NEXT).
    with moved as (
        update jobs as j
           set status = p_to,
               updated_at = v_now,
               result = case when p_to = 'completed' then m.result else j.result end,
               error = coalesce(p_error, j.error),
               completed_at = case when v_ends then v_now end,
               expire_at = case when v_ends then _after(v_now, j.retention) end,
               -- An ended workflow leaves jobs_timeout_at (migration 0022).
               timeout_at = case when v_ends then null else j.timeout_at end,
               build_id = coalesce(m.build_id, j.build_id)
          from unnest(p_job_ids, p_results, p_build_ids) as m (id, result, build_id)
         where j.id = m.id
           and j.status in (select l.from_state from _legal_transitions() as l
                             where l.machine = 'job' and l.to_state = p_to
                               and l.owner = '_transitions')
           and (p_to <> 'running'
                or exists (select 1 from jobs as f where f.id = j.id
                              for no key update skip locked))
        returning j.*
    )
    select array_agg(row(m.*)::jobs), array_agg(m.id),
           array_agg(m.id) filter (where m.schedule_id is not null),
           array_agg(m.schedule_id) filter (where m.schedule_id is not null)
      into v_rows, v_moved, v_runs, v_schedules
      from moved as m;
    if v_rows is null then
        return;
    end if;
    if v_ends then
        perform _notify_done(v_moved);
        -- Their people are no longer asked (never waiting for a reviewer's open transaction).
        if exists (select 1 from human_tasks
                    where job_id = any(v_moved) and status in ('open', 'claimed')) then
            perform _cancel_human_tasks(v_moved, true);
        end if;
        if v_runs is not null then
            -- A schedule that kept a fire behind one of these runs starts it now (buffer_one).
            perform _schedule_runs_ended(v_schedules, v_runs);
        end if;
    end if;
    return query select * from unnest(v_rows);
end
$$;

drop function if exists _transition(text, text, jsonb, jsonb);
create or replace function _transition(
    p_job_id text, p_to text, p_result jsonb default null, p_error jsonb default null,
    p_build_id text default null
) returns jobs
language plpgsql
as $$
declare
    v_job jobs;
begin
    select * into v_job
      from _transitions(array[p_job_id], p_to, array[p_result], p_error, array[p_build_id]);
    if not found then
        select * into v_job from jobs where id = p_job_id;
        if not found then
            raise exception using errcode = 'HM002',
                message = format('workflow "%s" not found', p_job_id);
        end if;
        -- The retry's move (failed -> pending) is _retry_job's: refused here like the rest.
        perform _check_transition('job', format('workflow "%s"', p_job_id), v_job.status, p_to,
                                  '_transitions');
        raise exception using errcode = '55P03',
            message = format('workflow "%s" is locked by another transaction; it cannot '
                             'become %s now', p_job_id, p_to);
    end if;
    return v_job;
end
$$;

-- The move to running of the workflow whose main activation p_task is, if it has not made it:
-- a main activation claimed ahead (prefetch) moves its workflow only when it starts
-- (start_tasks, which never waits for the row), and one that ends sooner goes from pending or
-- waiting to completed in one write (complete_tasks), one that suspends to waiting (_suspend,
-- suspend_tasks). Its other outcomes (a failure, continue_as_new) start from running: they
-- call this first, which waits for the row as they do, and records the build of the task's
-- lease.
create or replace function _start_job(p_task tasks) returns void
language plpgsql
as $$
begin
    if p_task.kind = 'workflow' and p_task.thread = 'main' then
        perform from jobs where id = p_task.job_id and status in ('pending', 'waiting')
           for no key update;
        if found then
            perform _transitions(array[p_task.job_id], 'running', null, null,
                                 array[p_task.build_id]);
        end if;
    end if;
end
$$;

-- The task state machine's move back to ready: a failed run waits for its backoff, an
-- activation that suspends runs again at p_run_at, a worker gives a task back (p_uncount: the
-- interrupted run is not an attempt). Moves only the tasks still leased; returns them.
-- PL/pgSQL, like every transition function the hot path calls: its plans are cached, where a
-- SQL function's statements are planned again at every call.
create or replace function _requeue_tasks(
    p_task_ids bigint[], p_run_at timestamptz, p_error jsonb default null,
    p_uncount boolean default false
) returns setof tasks
language plpgsql
as $$
begin
    return query
    update tasks as t
       set state = 'ready', run_at = p_run_at, error = coalesce(p_error, t.error),
           attempt = case when p_uncount then greatest(t.attempt - 1, 0) else t.attempt end,
           lease_owner = null, lease_token = null, lease_expires_at = null, rerun = false,
           -- The run's deadlines end with it; all runs together still end at close_at.
           started_at = null, timeout_at = t.close_at
     where t.id = any(p_task_ids)
       and t.state in (select l.from_state from _legal_transitions() as l
                        where l.machine = 'task' and l.to_state = 'ready'
                          and l.owner = '_requeue_tasks')
    returning t.*;
end
$$;

-- The step state machine: every change of a recorded step's status goes through here (the
-- first record of a step is its INSERT). Moves the steps keyed (p_job_ids[i], p_threads[i],
-- p_seqs[i]) to p_to[i] where the table allows it, with their outcome (output, error), attempt
-- (null: unchanged) and wake_at as given; completed_at is set when the step settles. Returns
-- the moved rows.
create or replace function _move_steps(
    p_job_ids text[], p_threads text[], p_seqs integer[], p_to text[], p_outputs jsonb[],
    p_errors jsonb[], p_attempts integer[], p_wake_ats timestamptz[]
) returns setof steps
language plpgsql
as $$
declare
    v_now timestamptz := _now();
begin
    return query
    update steps as s
       set status = m.to_state, output = m.output, error = m.error,
           attempt = coalesce(m.attempt, s.attempt), wake_at = m.wake_at,
           completed_at = case when m.to_state in ('completed', 'failed') then v_now end
      from unnest(p_job_ids, p_threads, p_seqs, p_to, p_outputs, p_errors, p_attempts,
                  p_wake_ats) as m (job_id, thread, seq, to_state, output, error, attempt,
                                    wake_at)
     where s.job_id = m.job_id and s.thread = m.thread and s.seq = m.seq
       and (s.status, m.to_state) in (select l.from_state, l.to_state
                                        from _legal_transitions() as l
                                       where l.machine = 'step')
    returning s.*;
end
$$;

-- _move_steps for one step. One that is not in a state it can leave for p_to is refused
-- (HM003), or with p_refuse false left as it is (the result is then null): an outcome that
-- arrives for a step another one already settled.
create or replace function _move_step(
    p_job_id text, p_thread text, p_seq integer, p_to text, p_output jsonb, p_error jsonb,
    p_attempt integer default null, p_wake_at timestamptz default null,
    p_refuse boolean default true
) returns steps
language plpgsql
as $$
declare
    v_step steps;
begin
    select * into v_step
      from _move_steps(array[p_job_id], array[p_thread], array[p_seq], array[p_to],
                       array[p_output], array[p_error], array[p_attempt], array[p_wake_at]);
    if not found and p_refuse then
        select * into v_step from steps
         where job_id = p_job_id and thread = p_thread and seq = p_seq;
        if not found then
            raise exception using errcode = 'HM005',
                message = format('step %s of workflow "%s" thread %s not found', p_seq,
                                 p_job_id, p_thread);
        end if;
        perform _check_transition('step', format('step %s of workflow "%s" thread %s', p_seq,
                                                 p_job_id, p_thread), v_step.status, p_to);
    end if;
    return v_step;
end
$$;

-- Due timers of the claimed activations fire: a sleep completes (its output is the seconds
-- slept), a signal wait whose timeout passed fails (596). Called by claim_tasks only.
create or replace function _fire_timers(
    p_job_ids text[], p_threads text[], p_now timestamptz
) returns void
language plpgsql
as $$
declare
    v_due record;
begin
    select array_agg(s.job_id) as job_ids, array_agg(s.thread) as threads,
           array_agg(s.seq) as seqs,
           array_agg(case when s.kind = 'sleep' then 'completed' else 'failed' end) as to_states,
           array_agg(case when s.kind = 'sleep' then s.input -> 'seconds' end) as outputs,
           array_agg(case when s.kind = 'signal' then jsonb_build_object(
               'message', format('signal "%s" did not arrive within %s seconds',
                                 s.name, s.input ->> 'timeout'),
               'type', 'TimeoutFailure', 'code', 596) end) as errors,
           array_agg(s.wake_at) as wake_ats
      into v_due
      from unnest(p_job_ids, p_threads) as r (job_id, thread)
      join steps as s on s.job_id = r.job_id and s.thread = r.thread
     where s.kind in ('sleep', 'signal') and s.status = 'scheduled' and s.wake_at <= p_now;
    if v_due.job_ids is not null then
        perform _move_steps(v_due.job_ids, v_due.threads, v_due.seqs, v_due.to_states,
                            v_due.outputs, v_due.errors, null, v_due.wake_ats);
    end if;
end
$$;

-- The lease a worker asks for (claim_tasks, heartbeat): positive, at most a day. A worker
-- heartbeats to keep a task; a longer lease only delays the takeover after a crash (and an
-- absurd one overflows the timestamp it sets).
create or replace function _check_lease(p_lease interval) returns void
language plpgsql immutable
as $$
begin
    if p_lease is null or p_lease <= interval '0' then
        raise exception using errcode = '22023',
            message = format('lease must be a positive interval, not %s',
                             coalesce(p_lease::text, 'null'));
    end if;
    if p_lease > interval '1 day' then
        raise exception using errcode = '22023',
            message = format('lease must be at most 1 day, not %s', p_lease);
    end if;
end
$$;

-- The task a worker claims to hold, fenced by its lease token: a worker whose lease was taken
-- over (a new claim issued a new token) can never write over the new owner's work.
create or replace function _leased_task(p_task_id bigint, p_token uuid) returns tasks
language plpgsql stable
as $$
declare
    v_task tasks;
begin
    select * into v_task from tasks where id = p_task_id;
    if not found then
        raise exception using errcode = 'HM005',
            message = format('task %s not found: it finished, was cancelled or never existed',
                             p_task_id);
    end if;
    if v_task.lease_token is distinct from p_token then
        raise exception using errcode = 'HM004',
            message = format('lease lost: task %s (%s %s of workflow "%s") is %s',
                             p_task_id, v_task.kind, v_task.name, v_task.job_id,
                             case when v_task.lease_token is null then v_task.state
                                  else 'leased by ' || coalesce(v_task.lease_owner, '?')
                                       || ' under another token' end);
    end if;
    return v_task;
end
$$;

-- _leased_task for calls that finish or change the task itself (complete, fail, bury): the row
-- is locked first, so the lease check cannot race a claim that takes the task over (that claim
-- is waited for and its new token seen), and a worker whose lease expired can never finish the
-- task another worker now holds. The task is locked before anything of its job: the order of
-- claims, suspends and cancel_workflow (tasks, then the job row).
create or replace function _held_task(p_task_id bigint, p_token uuid) returns tasks
language plpgsql
as $$
begin
    perform from tasks where id = p_task_id for update;
    return _leased_task(p_task_id, p_token);
end
$$;

-- _leased_task for the calls that record a step of a workflow thread: only that thread's
-- activation may. An activity's lease records nothing in the workflow (a timer or a wait
-- recorded with it would belong to no running activation and never be acted on).
create or replace function _activation_task(p_task_id bigint, p_token uuid) returns tasks
language plpgsql stable
as $$
declare
    v_task tasks := _leased_task(p_task_id, p_token);
begin
    if v_task.kind <> 'workflow' then
        raise exception using errcode = 'HM003',
            message = format('task %s is an activity (%s of workflow "%s"); only a workflow '
                             'activation records steps', p_task_id, v_task.name,
                             v_task.job_id);
    end if;
    return v_task;
end
$$;

-- Makes a thread of a workflow runnable again because something it awaits was recorded. At
-- most one activation task exists per (job, thread): if it is leased right now, it is flagged
-- to run again when the running activation suspends, so no wake-up is ever lost.
create or replace function _wake(p_job_id text, p_thread text) returns void
language plpgsql
as $$
begin
    perform _wake_threads(array[p_job_id], array[p_thread]);
end
$$;

-- _wake for many threads at once (p_job_ids[i], p_threads[i]; a thread given twice is woken
-- once): one INSERT for the batch, its rows taken in job order (the order complete_tasks
-- locks in), one notification per queue. A thread of a workflow with a concurrency key takes
-- its rank one by one.
create or replace function _wake_threads(p_job_ids text[], p_threads text[]) returns void
language plpgsql
as $$
declare
    v_now timestamptz := _now();
    v_keyed record;
    v_state text;
    v_queue text;
    v_queues text[];
begin
    -- Two statements per keyed thread, not one INSERT ... SELECT that calls _key_rank per
    -- row: Citus cannot run a query over the tables that calls a function that queries them
    -- again (docs/citus.md).
    for v_keyed in
        select w.job_id, w.thread, coalesce(th.name, j.workflow_name) as name,
               coalesce(th.task_queue, j.task_queue) as queue, j.priority, j.concurrency_key
          from (select distinct u.job_id, u.thread
                  from unnest(p_job_ids, p_threads) as u (job_id, thread)) as w
          join jobs as j on j.id = w.job_id
          left join threads as th on th.job_id = j.id and th.thread = w.thread
         where j.status not in ('completed', 'failed', 'cancelled')
           and (w.thread = 'main' or th.status = 'running') and j.concurrency_key is not null
         order by w.job_id, w.thread
    loop
        insert into tasks (job_id, thread, kind, name, task_queue, priority, run_at,
                           concurrency_key, key_rank)
        values (v_keyed.job_id, v_keyed.thread, 'workflow', v_keyed.name, v_keyed.queue,
                v_keyed.priority, v_now, v_keyed.concurrency_key,
                _key_rank(v_keyed.queue, v_keyed.concurrency_key))
        on conflict (job_id, thread, seq) do update
           set rerun = tasks.rerun or tasks.state = 'leased',
               run_at = case when tasks.state = 'ready'
                             then least(tasks.run_at, excluded.run_at) else tasks.run_at end
        returning state, task_queue into v_state, v_queue;
        if v_state = 'ready' then
            perform _notify('q:' || v_queue);
        end if;
    end loop;
    with woken as (
        insert into tasks (job_id, thread, kind, name, task_queue, priority, run_at)
        select w.job_id, w.thread, 'workflow', coalesce(th.name, j.workflow_name),
               coalesce(th.task_queue, j.task_queue), j.priority, v_now
          from (select distinct u.job_id, u.thread
                  from unnest(p_job_ids, p_threads) as u (job_id, thread)) as w
          join jobs as j on j.id = w.job_id
          left join threads as th on th.job_id = j.id and th.thread = w.thread
         where j.status not in ('completed', 'failed', 'cancelled')
           and (w.thread = 'main' or th.status = 'running') and j.concurrency_key is null
         order by w.job_id, w.thread
        on conflict (job_id, thread, seq) do update
           set rerun = tasks.rerun or tasks.state = 'leased',
               run_at = case when tasks.state = 'ready'
                             then least(tasks.run_at, excluded.run_at) else tasks.run_at end
        returning state, task_queue
    )
    select array_agg(distinct task_queue) filter (where state = 'ready') into v_queues
      from woken;
    foreach v_queue in array coalesce(v_queues, '{}') loop
        perform _notify('q:' || v_queue);
    end loop;
end
$$;
