-- The task state machine: ready(run_at) -> leased(lease_expires_at) -> done (row deleted)
--                                                      \-> ready(run_at = now + backoff) | dead
-- (its legal moves and their owners: _legal_transitions in 10_core.sql).
-- A task is either a workflow activation (run or resume one thread of a job) or an activity.
--
-- The functions a worker calls for every task and step (here and in 40_steps.sql) run with
-- `plan_cache_mode = force_generic_plan`: their statements read rows by key, so a generic
-- plan is the plan, and with arrays of keys for parameters the planner otherwise re-planned
-- every statement at every call (generic plans assume 10 keys, which looks dearer than the
-- one a signal or a remote step claims): planning was half of a small claim's time.

-- p_ids without p_drop (null when nothing is left): the tasks a claim does not hand out, the
-- jobs it does not move.
drop function if exists _without(bigint[], bigint[]);
drop function if exists _without_jobs(text[], text[]);
create or replace function _without(p_ids anyarray, p_drop anyarray) returns anyarray
language plpgsql immutable
as $$
declare
    v_left p_ids%type;
begin
    select array_agg(i.id) into v_left
      from unnest(p_ids) as i (id)
     where i.id <> all(coalesce(p_drop, '{}'));
    return v_left;
end
$$;

-- Claims up to p_max_tasks due tasks on the given queues, highest priority first, then oldest
-- due. SKIP LOCKED lets any number of workers claim at once without waiting on each other (or
-- on an application's open transaction: see _transitions); each claim issues a fresh lease
-- token. For an activation it also fires the thread's due timers (_fire_timers) and returns
-- its recorded steps, so the worker can replay without another query. p_build_id names the
-- worker's code: kept in each task's lease (tasks.build_id) and recorded in jobs.build_id when
-- the workflow moves for it. Due schedules fire first (_fire_schedules), so their runs may be
-- claimed at once.
-- Prefetch: up to p_prefetch more tasks, after the p_max_tasks that start now, are claimed
-- ahead for the worker's local buffer (on queues without limits). Such a task is leased but
-- not started (started_at null): its lease is p_prefetch_lease, short, so a worker that dies
-- holds it up no longer; no run deadline ticks until start_tasks starts it; its workflow stays
-- pending or waiting until then, or until the activation ends (_start_job); and a claim that
-- takes it over after that lease counts no attempt for the run that never was. The rows come
-- back started first, then the prefetched, each part by priority.
drop function if exists claim_tasks(text[], text, integer, interval, text);
create or replace function claim_tasks(
    p_task_queues text[],
    p_worker_id text,
    p_max_tasks integer default 1,
    p_lease interval default interval '30 seconds',
    p_build_id text default null,
    p_prefetch integer default 0,
    p_prefetch_lease interval default interval '5 seconds'
) returns setof claimed_task
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
-- Every lookup here is by key or in claim order: an ordered index scan that stops after
-- p_max_tasks rows. The tasks table churns faster than its statistics, and with stale ones
-- the planner picks a bitmap scan that reads and sorts every due task instead.
set enable_seqscan = off
set enable_bitmapscan = off
as $$
declare
    v_now timestamptz := _now();
    v_ids bigint[];
    v_jobs text[];
    v_main_jobs text[];
    v_ahead_jobs text[];
    v_now_jobs text[];
    v_run_jobs text[];
    v_run_threads text[];
    v_finished text[];
    v_spent bigint[];
    v_spent_jobs text[];
    v_spent_tokens uuid[];
    v_spent_messages text[];
    v_started text[];
    v_builds jsonb;
    v_held bigint[];
    v_held_jobs text[];
    v_plain text[] := p_task_queues;
    v_admitted bigint[];
    v_picked bigint[];
    v_ahead boolean[];
    v_ready timestamptz[];
    -- Seconds each task was due before this claim took it (schedule-to-start), by task id.
    v_waited jsonb;
begin
    if p_prefetch is null or p_prefetch < 0 then
        raise exception using errcode = '22023',
            message = format('prefetch must be >= 0, not %s', coalesce(p_prefetch::text, 'null'));
    end if;
    -- Only a claim that prefetches may start none now.
    if p_max_tasks is null or p_max_tasks < 1 - sign(p_prefetch) then
        raise exception using errcode = '22023',
            message = format('max_tasks must be >= %s, not %s', 1 - sign(p_prefetch),
                             coalesce(p_max_tasks::text, 'null'));
    end if;
    -- One statement for the checks, one for the firing: each is a query of its own.
    perform _check_name('worker id', p_worker_id), _check_name('build id', p_build_id),
            _check_lease(p_lease),
            _check_lease(case when p_prefetch > 0 then p_prefetch_lease else p_lease end);
    -- Due timeouts first (sql/25_timeouts.sql), so a timed-out run is failed, never handed
    -- out again as an expired lease.
    perform _fire_timeouts(v_now), _fire_schedules(v_now);
    -- Human tasks past their due time expire or escalate (sql/49_human_tasks.sql): one probe
    -- of a partial index that holds only live tasks with a due time.
    if exists (select 1 from human_tasks
                where due_at <= v_now and status in ('open', 'claimed')) then
        perform _fire_human_tasks(v_now);
    end if;

    -- Queues with limits (flow control, sql/25_limits.sql) are claimed by _admit, which
    -- enforces them; without any, the claim takes the plain path alone, as cheap as before.
    if exists (select 1 from queue_limits where task_queue = any(p_task_queues)) then
        v_admitted := _admit(p_task_queues, p_max_tasks, v_now);
        v_plain := null;
    end if;

    -- One ordered index scan per queue (on PostgreSQL 15 `task_queue = any(...)` would read
    -- and sort every due task of the queues before the limit applies). Within a priority,
    -- tasks with a concurrency key go in rotation (key_rank: every key's next task before any
    -- key's one after it), after those without one.
    -- The lease token is drawn here, not in the UPDATE's SET list: Citus refuses a volatile
    -- function there (docs/citus.md).
    -- The first p_max_tasks in claim order start now; the rest (ahead) are prefetched.
    -- Picked into arrays first, then leased by key: an UPDATE joined to the picking query
    -- was planned (generically) as a hash join over every task of the table, so a claim cost
    -- grew with the backlog (a third of a drain's database time at 10,000 tasks).
    select array_agg(p.id), array_agg(p.ord > p_max_tasks), array_agg(p.run_at)
      into v_picked, v_ahead, v_ready
      from (select c.id, c.run_at,
                   row_number() over (order by c.priority desc, c.key_rank nulls first,
                                               c.run_at, c.id) as ord
              from unnest(v_plain) as q (name)
             cross join lateral (
                   select t.id, t.priority, t.key_rank, t.run_at
                     from tasks as t
                    where t.task_queue = q.name and t.state <> 'dead' and t.run_at <= v_now
                      -- one that timed out but was held while the timeouts fired: not now
                      and (t.timeout_at is null or t.timeout_at > v_now)
                    order by t.priority desc, t.key_rank nulls first, t.run_at, t.id
                    limit p_max_tasks + p_prefetch
                      for update skip locked
                   ) as c
             order by c.priority desc, c.key_rank nulls first, c.run_at, c.id
             limit p_max_tasks + p_prefetch) as p;
    if v_admitted is not null then
        select array_cat(v_picked, array_agg(t.id)),
               array_cat(v_ahead, array_agg(false)), array_cat(v_ready, array_agg(t.run_at))
          into v_picked, v_ahead, v_ready
          from tasks as t where t.id = any(v_admitted);
    end if;
    with picked as (
        select i.id, gen_random_uuid() as token, i.ahead, i.ready_at
          from unnest(v_picked, v_ahead, v_ready) as i (id, ahead, ready_at)
    ), leased as (
        update tasks as t
           set state = 'leased',
               lease_owner = p_worker_id,
               lease_token = picked.token,
               build_id = p_build_id,
               -- A lease never outlasts the run's timeout: the task is due again then.
               lease_expires_at = case when picked.ahead
                   then least(_after(v_now, p_prefetch_lease), t.close_at)
                   else least(_after(v_now, p_lease), _run_deadline(
                       t.close_at, t.start_to_close, t.heartbeat_timeout, v_now, v_now)) end,
               run_at = case when picked.ahead
                   then least(_after(v_now, p_prefetch_lease), t.close_at)
                   else least(_after(v_now, p_lease), _run_deadline(
                       t.close_at, t.start_to_close, t.heartbeat_timeout, v_now, v_now)) end,
               -- A prefetched run that never started (its worker died) was no attempt.
               attempt = t.attempt
                   + case when t.state = 'leased' and t.started_at is null then 0 else 1 end,
               rerun = false,
               started_at = case when picked.ahead then null else v_now end,
               timeout_at = case when picked.ahead then t.close_at else _run_deadline(
                   t.close_at, t.start_to_close, t.heartbeat_timeout, v_now, v_now) end
          from picked
         where t.id = picked.id
           and t.state in (select l.from_state from _legal_transitions() as l
                            where l.machine = 'task' and l.to_state = 'leased')
        returning t.id, t.job_id, t.thread, t.kind, t.lease_token, t.attempt, t.name,
                  (t.payload -> 'retry_policy' ->> 'maximum_attempts')::integer as maximum,
                  v_now - picked.ready_at as waited, picked.ahead
    )
    select array_agg(id), array_agg(distinct job_id),
           array_agg(job_id) filter (where kind = 'workflow' and thread = 'main'),
           array_agg(job_id) filter (where kind = 'workflow' and thread = 'main' and ahead),
           array_agg(job_id) filter (where kind = 'workflow'),
           array_agg(thread) filter (where kind = 'workflow'),
           array_agg(id) filter (where kind = 'activity' and attempt > maximum),
           array_agg(job_id) filter (where kind = 'activity' and attempt > maximum),
           array_agg(lease_token) filter (where kind = 'activity' and attempt > maximum),
           array_agg(format('activity "%s": its lease expired on every one of %s attempts '
                            '(worker crashed or stalled)', name, maximum))
               filter (where kind = 'activity' and attempt > maximum),
           jsonb_object_agg(id::text, extract(epoch from waited)) filter (where waited > '0')
      into v_ids, v_jobs, v_main_jobs, v_ahead_jobs, v_run_jobs, v_run_threads, v_spent,
           v_spent_jobs,
           v_spent_tokens, v_spent_messages, v_waited
      from leased;
    if v_ids is null then
        return;
    end if;

    -- Every statement below reads rows by the keys just collected, never through a join the
    -- planner may turn around: with the statistics of tables refilled faster than they are
    -- gathered, it once walked every job to find the claimed ones.

    -- Nothing of a finished workflow runs: a task it got while it was being cancelled or
    -- completed (a call recorded by an activation that was still running) is dropped here.
    select array_agg(id) into v_finished
      from jobs
     where id = any(v_jobs) and status in ('completed', 'failed', 'cancelled');
    if v_finished is not null then
        with stale as (
            delete from tasks where id = any(v_ids) and job_id = any(v_finished)
            returning id
        )
        select _without(v_ids, array_agg(id)) into v_ids from stale;
        if v_ids is null then
            return;
        end if;
        select array_agg(r.job_id), array_agg(r.thread) into v_run_jobs, v_run_threads
          from unnest(v_run_jobs, v_run_threads) as r (job_id, thread)
         where r.job_id <> all(v_finished);
    end if;

    -- An activity whose lease expired on its last attempt (its worker crashed or stalled each
    -- time) fails like any run that used up its attempts; it is never handed out again.
    if v_spent is not null then
        for v_pos in 1 .. cardinality(v_spent) loop
            continue when v_spent_jobs[v_pos] = any(coalesce(v_finished, '{}'));
            -- fail_task takes the job row: one that an open transaction holds is not waited
            -- for; the task is given back, due in a second, and fails at a later claim.
            if not exists (select 1 from jobs where id = v_spent_jobs[v_pos]
                              for no key update skip locked) then
                perform _requeue_tasks(array[v_spent[v_pos]], v_now + interval '1 second',
                                       null, true);
                continue;
            end if;
            perform fail_task(v_spent[v_pos], v_spent_tokens[v_pos],
                              jsonb_build_object('message', v_spent_messages[v_pos],
                                                 'type', 'LeaseExpired', 'code', 599));
        end loop;
        v_ids := _without(v_ids, v_spent);
        if v_ids is null then
            return;
        end if;
    end if;

    if v_main_jobs is not null then
        -- The main activations it starts run this worker's code (build): recorded as they
        -- move, in the same row version. The builds they ran before go to the worker.
        if p_build_id is not null then
            select jsonb_object_agg(id, build_id) into v_builds
              from jobs where id = any(v_main_jobs) and build_id is not null;
        end if;
        -- Those claimed ahead move when they start or end (_start_job): one job write fewer
        -- for a drained workflow. Their rows are only share-locked here, as a check.
        v_now_jobs := _without(v_main_jobs, v_ahead_jobs);
        if v_now_jobs is not null then
            select array_agg(m.id) into v_started
              from _transitions(v_now_jobs, 'running', null, null,
                                array_fill(p_build_id, array[cardinality(v_now_jobs)])) as m;
        end if;
        if v_ahead_jobs is not null then
            select array_cat(v_started, array_agg(l.id)) into v_started
              from (select j.id from jobs as j where j.id = any(v_ahead_jobs)
                       for share skip locked) as l;
        end if;
        -- A workflow whose row another transaction holds (an application's open transaction
        -- on its entity) did not start running, nor is one claimed ahead handed out: its
        -- activation is given back, due again in a second (not at once: an idle worker would
        -- claim it again in a loop), so one held workflow waits alone and the claim never
        -- waits for it.
        if coalesce(cardinality(v_started), 0) < cardinality(v_main_jobs) then
            -- Two statements: Citus cannot run a query over the tables that calls a
            -- function that queries them again (docs/citus.md).
            select array_agg(t.id) into v_held
              from tasks as t
              join jobs as j on j.id = t.job_id
             where t.id = any(v_ids) and t.kind = 'workflow' and t.thread = 'main'
               and j.id <> all(coalesce(v_started, '{}'))
               and j.status in (select l.from_state from _legal_transitions() as l
                                 where l.machine = 'job' and l.to_state = 'running');
            select array_agg(r.id), array_agg(r.job_id) into v_held, v_held_jobs
              from _requeue_tasks(v_held, v_now + interval '1 second', null, true) as r;
            if v_held is not null then
                v_ids := _without(v_ids, v_held);
                if v_ids is null then
                    return;
                end if;
                select array_agg(r.job_id), array_agg(r.thread) into v_run_jobs, v_run_threads
                  from unnest(v_run_jobs, v_run_threads) as r (job_id, thread)
                 where r.thread <> 'main' or r.job_id <> all(v_held_jobs);
            end if;
        end if;
    end if;
    if v_run_jobs is not null then
        perform _fire_timers(v_run_jobs, v_run_threads, v_now);
    end if;

    return query
    select t.id, t.kind, t.job_id, t.thread, t.seq, t.name, t.task_queue, t.lease_token,
           t.attempt,
           case when t.kind = 'activity' then t.payload -> 'args'
                when t.thread = 'main' then j.args
                else th.args end,
           -- null, not '{}' or '[]', where there is nothing to read: a worker claiming
           -- hundreds of tasks at once parses every JSON value it gets.
           -- An activation's payload: the build of the previous activation (b: replaced
           -- by this worker's as it moved), so a non-determinism failure can name both; from the
           -- second run on (continue_as_new) the run. claimed_task keeps its shape, which
           -- older workers read by position.
           -- Both carry a trace context (docs/tracing.md): an activity's that of the
           -- activation that scheduled it (in its payload), a hook thread's that of the step
           -- that started it, else the workflow's; and schedule_to_start: the seconds the
           -- task was due before this claim, on the engine's clock (absent: none). Older
           -- workers ignore keys they do not know.
           case when t.kind = 'activity' and (j.traceparent is not null
                                              or v_waited ? t.id::text)
                    then jsonb_strip_nulls(jsonb_build_object(
                        'traceparent', j.traceparent,
                        'schedule_to_start', v_waited -> t.id::text)) || t.payload
                when t.kind = 'activity' then t.payload
                when b.build_id is not null or j.run > 1 or j.traceparent is not null
                     or th.traceparent is not null or v_waited ? t.id::text
                    then jsonb_strip_nulls(jsonb_build_object(
                        'build_id', b.build_id, 'run', nullif(j.run, 1),
                        'traceparent', coalesce(th.traceparent, j.traceparent),
                        'schedule_to_start', v_waited -> t.id::text))
           end,
           j.workflow_name, j.attempt,
           case when t.kind = 'workflow' then (
               select jsonb_agg(jsonb_build_object(
                          'seq', s.seq, 'kind', s.kind, 'name', s.name, 'status', s.status,
                          'output', s.output, 'error', s.error, 'attempt', s.attempt,
                          'due', s.wake_at <= v_now) order by s.seq)
                 from steps as s
                where s.job_id = t.job_id and s.thread = t.thread)
           end
      -- Each row is looked up by its key; `offset 0` keeps every lookup a keyed probe that
      -- the planner cannot turn into a join that scans a whole table.
      from unnest(v_ids) as c (id)
     cross join lateral (select * from tasks as t where t.id = c.id offset 0) as t
     cross join lateral (select * from jobs as j where j.id = t.job_id offset 0) as j
     cross join lateral (select case when j.id = any(v_started) then v_builds ->> j.id
                                     else j.build_id end as build_id) as b
      -- Only a hook thread has a row (and only its activations read it).
      left join lateral (
           select * from threads as th
            where th.job_id = t.job_id and th.thread = t.thread
              and t.kind = 'workflow' and t.thread <> 'main' offset 0) as th on true
     order by t.started_at is null, t.priority desc, t.id;
end
$$;

-- The soonest due time of a live human task (sql/49_human_tasks.sql), for next_due: a second
-- on when one is due but was held, so an idle worker does not spin on it. PL/pgSQL for the
-- reason _next_timeout is: its plan is kept, where a SQL function's was made at every call.
create or replace function _next_human_due() returns timestamptz
language plpgsql stable
as $$
declare
    v_due timestamptz;
begin
    select min(due_at) into v_due
      from human_tasks
     where status in ('open', 'claimed') and due_at is not null;
    return case when v_due <= _now() then _now() + interval '1 second' else v_due end;
end
$$;

-- The soonest moment a task on these queues, a schedule or any timeout becomes due (null
-- when none is waiting; a claim fires each: _fire_schedules, _next_timeout), so an idle
-- worker sleeps exactly until then instead of polling.
create or replace function next_due(p_task_queues text[]) returns timestamptz
language plpgsql stable
set search_path from current
set plan_cache_mode = force_generic_plan
as $$
declare
    v_queues text[];
    v_dues timestamptz[];
    v_due timestamptz;
begin
    -- The claim index orders a queue by priority first, so the soonest task of one priority
    -- is a single probe; a recursive walk from each priority in use to the next lower one
    -- finds them all without reading every task of a long queue.
    with recursive levels (queue, priority) as (
        select q.name, (select t.priority from tasks as t
                         where t.task_queue = q.name and t.state <> 'dead'
                         order by t.priority desc limit 1)
          from unnest(p_task_queues) as q (name)
        union all
        select l.queue, (select t.priority from tasks as t
                          where t.task_queue = l.queue and t.state <> 'dead'
                            and t.priority < l.priority
                          order by t.priority desc limit 1)
          from levels as l
         where l.priority is not null
    )
    -- Per level the soonest task without a key (one probe: they sort first), and the
    -- soonest with one (they sort by rank first: a range of the index).
    select array_agg(d.queue), array_agg(d.due) into v_queues, v_dues
      from (select l.queue,
                   min(least((select t.run_at from tasks as t
                               where t.task_queue = l.queue and t.state <> 'dead'
                                 and t.priority = l.priority and t.key_rank is null
                               order by t.priority desc, t.key_rank nulls first, t.run_at
                               limit 1),
                             (select min(t.run_at) from tasks as t
                               where t.task_queue = l.queue and t.state <> 'dead'
                                 and t.priority = l.priority
                                 and t.key_rank is not null)))
                       as due
              from levels as l
             where l.priority is not null
             group by l.queue) as d;
    -- A limited queue's tasks may be held back further (_limited_due). One statement each,
    -- apart from the query above: Citus cannot run a query over the tables that calls a
    -- function that queries them again (docs/citus.md).
    for v_pos in 1 .. coalesce(cardinality(v_queues), 0) loop
        v_due := least(v_due, _limited_due(v_queues[v_pos], v_dues[v_pos]));
    end loop;
    -- A schedule, a timeout or a human task's due time wakes the worker too: its claim
    -- fires it.
    v_due := least(v_due, (select s.due_at from schedules as s
                            where s.due_at is not null order by s.due_at limit 1));
    return least(v_due, _next_timeout(), _next_human_due());
end
$$;

-- Finishes a task successfully. An activity: its step is recorded with the result and the
-- workflow thread that awaits it is woken, in one transaction. An activation: the thread's
-- function returned; for the main thread the workflow is completed with p_result.
-- A batch of one (complete_tasks) after its own lease check, which names the task's holder.
-- Unlike a batch, it waits for the row of the workflow it ends (bounded by the caller's
-- lock_timeout), locked here in the order every completion takes: the task, then the job.
create or replace function complete_task(p_task_id bigint, p_token uuid, p_result jsonb)
returns void
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
as $$
declare
    v_task tasks := _held_task(p_task_id, p_token);
begin
    if v_task.kind = 'workflow' and v_task.thread = 'main' then
        perform from jobs where id = v_task.job_id for no key update;
    end if;
    perform _raise_item(complete_tasks(_one_item(array['task_id', 'token', 'result'],
                                                 array[to_jsonb(p_task_id), to_jsonb(p_token),
                                                       p_result])) -> 0);
end
$$;

-- Ends a held task's run for good, completed with p_result or failed with p_error: an
-- activity records its step and wakes the thread that awaits it; a main activation ends its
-- workflow and every task of it (no zombie activities or hooks); another thread's activation
-- ends that thread. What complete_tasks and fail_task do once the outcome is final.
create or replace function _finish_task(p_task tasks, p_result jsonb, p_error jsonb)
returns void
language plpgsql
as $$
declare
    v_to text := case when p_error is null then 'completed' else 'failed' end;
begin
    if p_task.kind = 'activity' then
        perform _move_step(p_task.job_id, p_task.thread, p_task.seq, v_to, p_result, p_error,
                           p_task.attempt, null, false);
        delete from tasks where id = p_task.id;
        perform _wake(p_task.job_id, p_task.thread);
    elsif p_task.thread = 'main' then
        perform _settle_parent(_transition(p_task.job_id, v_to, p_result, p_error));
        delete from tasks where job_id = p_task.job_id;
    else
        delete from tasks where id = p_task.id;
        perform _end_thread(p_task.job_id, p_task.thread, p_result, p_error);
    end if;
end
$$;

-- Finishes a run that failed. The task's retry policy decides: run again after the backoff
-- (the task becomes ready at now + retry_delay), or fail for good. A failed activity records
-- its failed step and wakes its workflow, where the call raises; a main thread that fails for
-- good fails the workflow. Returns {"status": "retrying", "run_at": ...} or {"status": "failed"}.
create or replace function fail_task(p_task_id bigint, p_token uuid, p_error jsonb)
returns jsonb
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
as $$
declare
    v_task tasks := _held_task(p_task_id, p_token);
    v_job jobs;
    v_policy jsonb;
    v_attempt integer;
    v_retry_at timestamptz;
    v_error jsonb := coalesce(p_error, '{}'::jsonb);
begin
    if jsonb_typeof(v_error) <> 'object' then
        raise exception using errcode = '22023',
            message = format('error must be a JSON object, not %s', jsonb_typeof(v_error));
    end if;
    if v_task.kind = 'activity' then
        v_policy := v_task.payload -> 'retry_policy';
        v_attempt := v_task.attempt;
    else
        -- A workflow body (main) or a hook (its thread) retries under the workflow's policy.
        -- Only the main thread changes the job row, so only it locks it: a failing hook wakes
        -- the main thread (its end is delivered to the caller's wait), and holding the job
        -- row meanwhile would deadlock with a main activation that suspends (it locks its
        -- task, then the job row).
        if v_task.thread = 'main' then
            perform _start_job(v_task);
            select * into v_job from jobs where id = v_task.job_id for no key update;
        else
            select * into v_job from jobs where id = v_task.job_id;
        end if;
        v_policy := v_job.retry_policy;
        v_attempt := case when v_task.thread = 'main' then v_job.attempt
                          else (select attempt from threads
                                 where job_id = v_task.job_id and thread = v_task.thread) end;
    end if;
    v_retry_at := _retry_at(v_policy, v_attempt, v_error);
    -- No run starts after an activity's schedule_to_close: that ends it now, a timeout.
    if v_retry_at >= v_task.close_at then
        v_error := _timeout_error(v_task, v_retry_at) || jsonb_build_object('cause', v_error);
        v_retry_at := null;
    end if;

    if v_retry_at is not null then
        perform _requeue_tasks(array[p_task_id], v_retry_at, v_error);
        if v_task.kind = 'workflow' and v_task.thread = 'main' then
            update jobs set attempt = attempt + 1, error = v_error, updated_at = _now()
             where id = v_task.job_id;
            perform _transitions(array[v_task.job_id], 'waiting');
        elsif v_task.kind = 'workflow' then
            update threads set attempt = attempt + 1, error = v_error
             where job_id = v_task.job_id and thread = v_task.thread;
        end if;
        return jsonb_build_object('status', 'retrying', 'run_at', v_retry_at);
    end if;

    v_error := _final_error(v_policy, v_attempt, v_error);
    perform _finish_task(v_task, null, v_error);
    return jsonb_build_object('status', 'failed', 'error', v_error);
end
$$;

-- Ends an activation whose thread now waits on something not yet recorded. The task stays
-- (ready) only if the thread must run again: at once when something arrived while it ran,
-- else at its earliest timer or retry; otherwise it is deleted until a wake-up re-creates it.
-- Returns when the thread runs next (null: when something it awaits is recorded).
create or replace function suspend_task(p_task_id bigint, p_token uuid)
returns timestamptz
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
as $$
begin
    -- Lock the row before reading `rerun`: a wake-up (_wake) committing between the read and
    -- the delete in _suspend would otherwise be lost, leaving the job waiting forever.
    perform from tasks where id = p_task_id for update;
    return _suspend(_leased_task(p_task_id, p_token));
end
$$;

-- suspend_task of the activation p_task, its row locked and its lease checked by the caller.
create or replace function _suspend(p_task tasks) returns timestamptz
language plpgsql
as $$
declare
    v_task tasks := p_task;
    v_next timestamptz;
begin
    if v_task.kind <> 'workflow' then
        raise exception using errcode = 'HM003',
            message = format('task %s is an activity; only a workflow activation can suspend',
                             v_task.id);
    end if;
    if v_task.rerun then
        v_next := _now();
    else
        select min(wake_at) into v_next
          from steps
         where job_id = v_task.job_id and thread = v_task.thread
           and status in ('scheduled', 'retrying') and wake_at is not null;
    end if;
    -- From running, or in one write from pending or waiting when it was claimed ahead and
    -- never started (with the build that ran it).
    if v_task.thread = 'main' then
        perform _transition(v_task.job_id, 'waiting', null, null, v_task.build_id);
    end if;
    if v_next is null then
        delete from tasks where id = v_task.id;
    else
        perform _requeue_tasks(array[v_task.id], v_next);
        if v_next <= _now() then
            perform _notify('q:' || v_task.task_queue);
        end if;
    end if;
    return v_next;
end
$$;

-- Group commit of activations that suspend: each item {"task_id", "token", "schedules"}
-- records the activity calls its activation sends through their queues (schedule_activity's
-- arguments as {"seq", "name", "args", "task_queue", "retry_policy", "concurrency_key",
-- "traceparent"}) and
-- suspends it, so an activation's outcome is one round trip for any number of workflows, and
-- none of its activities can finish before it suspends (no rerun). Returns, in order,
-- {"next_run": ...} (suspend_task's answer) or {"error": {...}} for an item whose lease was
-- lost. A bad call fails the whole batch (22023), and the worker sends its items one by one.
create or replace function suspend_tasks(p_items jsonb) returns jsonb
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
-- The items are looked up in tasks by key (see complete_tasks).
set enable_seqscan = off
as $$
declare
    v_results jsonb[];
    v_held integer[];
    v_pos integer;
    v_item jsonb;
    v_call jsonb;
    v_task tasks;
    v_now timestamptz := _now();
    v_policy jsonb := _retry_policy(null);
    v_done jsonb[];
    v_queues text[];
    v_queue text;
    v_parked integer[];
    v_parked_ids bigint[];
    v_waits text[];
    v_wait_builds text[];
    v_waited text[];
begin
    v_results := _batch_results(p_items);
    if cardinality(v_results) = 0 then
        return '[]'::jsonb;
    end if;
    -- The held tasks, locked in job order as complete_tasks locks them (its completions wake
    -- these activations), before their `rerun` is read.
    select coalesce(array_agg(h.pos), '{}') into v_held
      from (select i.pos::integer as pos
              from jsonb_array_elements(p_items) with ordinality as i (value, pos)
              join tasks as t on t.id = (i.value ->> 'task_id')::bigint
                             and t.lease_token = (i.value ->> 'token')::uuid
             order by t.job_id, t.thread
               for update of t) as h;
    -- The common call of the held activations (no timeouts, no concurrency key, its position
    -- not recorded yet): one INSERT per table for the batch, as _schedule_activity records
    -- one. The loop sends any other through _schedule_activity, which checks it.
    with calls as (
        select t.job_id, t.thread, t.priority, (c.value ->> 'seq')::integer as seq,
               c.value ->> 'name' as name, c.value -> 'args' as args,
               c.value ->> 'task_queue' as queue,
               nullif(c.value -> 'retry_policy', 'null') as policy,
               c.value ->> 'traceparent' as traceparent
          from unnest(v_held) as h (pos)
          join tasks as t on t.id = (p_items -> (h.pos - 1) ->> 'task_id')::bigint
         cross join lateral jsonb_array_elements(
                   coalesce(nullif(p_items -> (h.pos - 1) -> 'schedules', 'null'), '[]'::jsonb)
               ) as c (value)
         where t.kind = 'workflow' and c.value ->> 'concurrency_key' is null
           -- a trace context _schedule_activity would refuse goes its way, to be refused
           and (c.value ->> 'traceparent' is null or _is_traceparent(c.value ->> 'traceparent'))
           and length(c.value ->> 'task_queue') between 1 and 255
           and length(c.value ->> 'name') <= 255
           and not coalesce(nullif(c.value -> 'retry_policy', 'null')
                            ?| array['start_to_close', 'schedule_to_close', 'heartbeat_timeout'],
                            false)
    ), fresh as (
        insert into steps as s (job_id, thread, seq, kind, name, status, input, created_at)
        select c.job_id, c.thread, c.seq, 'activity', c.name, 'scheduled', c.args, v_now
          from calls as c
         order by c.job_id, c.thread, c.seq
        on conflict do nothing
        returning s.job_id, s.thread, s.seq
    ), queued as (
        insert into tasks as q (job_id, thread, kind, seq, name, task_queue, priority, run_at,
                                attempt, payload)
        select c.job_id, c.thread, 'activity', c.seq, c.name, c.queue, c.priority, v_now, 0,
               jsonb_build_object('args', c.args, 'retry_policy',
                                  case when c.policy is null then v_policy
                                       else _retry_policy(c.policy) end)
               -- as _schedule_activity keeps it: the activity's span continues the activation's
               || case when c.traceparent is null then '{}'::jsonb
                       else jsonb_build_object('traceparent', c.traceparent) end
          from calls as c
          join fresh as f on f.job_id = c.job_id and f.thread = c.thread and f.seq = c.seq
        returning q.job_id, q.thread, q.seq, q.task_queue
    )
    select array_agg(jsonb_build_array(job_id, thread, seq)), array_agg(distinct task_queue)
      into v_done, v_queues
      from queued;
    foreach v_queue in array coalesce(v_queues, '{}') loop
        perform _notify('q:' || v_queue);
    end loop;

    -- The common suspension, what _suspend does for one, one statement per table for the
    -- batch: a held activation whose calls all went in above, not to run again (no rerun,
    -- nothing due on its thread). Its task goes, and a main thread's workflow waits.
    select coalesce(array_agg(p.pos), '{}'), array_agg(p.id),
           array_agg(p.job_id order by p.job_id) filter (where p.thread = 'main'),
           array_agg(p.build_id order by p.job_id) filter (where p.thread = 'main')
      into v_parked, v_parked_ids, v_waits, v_wait_builds
      from (select distinct on (t.id) h.pos, t.id, t.job_id, t.thread, t.build_id
              from unnest(v_held) as h (pos)
              join tasks as t on t.id = (p_items -> (h.pos - 1) ->> 'task_id')::bigint
             where t.kind = 'workflow' and not t.rerun
               and not exists (
                   select from jsonb_array_elements(coalesce(
                                   nullif(p_items -> (h.pos - 1) -> 'schedules', 'null'),
                                   '[]'::jsonb)) as c (value)
                    where jsonb_build_array(t.job_id, t.thread, (c.value ->> 'seq')::integer)
                          <> all(coalesce(v_done, '{}')))
               and not exists (
                   select from steps as s
                    where s.job_id = t.job_id and s.thread = t.thread
                      and s.status in ('scheduled', 'retrying') and s.wake_at is not null)
             order by t.id, h.pos) as p;
    select coalesce(array_agg(j.id), '{}') into v_waited
      from _transitions(v_waits, 'waiting', null, null, v_wait_builds) as j;
    if cardinality(v_waited) < cardinality(v_waits) then
        -- One that cannot wait (ended meanwhile): _transition refuses it, naming why.
        perform _transition(w.id, 'waiting', null, null, w.build)
           from unnest(v_waits, v_wait_builds) as w (id, build)
          where w.id <> all(v_waited);
    end if;
    delete from tasks where id = any(v_parked_ids);

    for v_pos in
        select i.pos
          from jsonb_array_elements(p_items) with ordinality as i (value, pos)
          left join tasks as t on t.id = (i.value ->> 'task_id')::bigint
         where i.pos <> all(v_parked)
         order by t.job_id, t.thread, i.pos
    loop
        v_item := p_items -> (v_pos - 1);
        if v_pos <> all(v_held) then
            v_results[v_pos] := _lease_lost_item(v_item ->> 'task_id');
            continue;
        end if;
        select * into v_task from tasks where id = (v_item ->> 'task_id')::bigint;
        for v_call in select value
                        from jsonb_array_elements(coalesce(nullif(v_item -> 'schedules', 'null'),
                                                           '[]'::jsonb)) loop
            if v_task.kind <> 'workflow' then
                exit;  -- _suspend refuses it
            end if;
            continue when jsonb_build_array(v_task.job_id, v_task.thread,
                                            (v_call ->> 'seq')::integer) = any(v_done);
            perform _schedule_activity(v_task, (v_call ->> 'seq')::integer, v_call ->> 'name',
                                       v_call -> 'args', v_call ->> 'task_queue',
                                       nullif(v_call -> 'retry_policy', 'null'),
                                       v_call ->> 'concurrency_key',
                                       v_call ->> 'traceparent');
        end loop;
        v_results[v_pos] := jsonb_build_object('next_run', _suspend(v_task));
    end loop;
    foreach v_pos in array v_parked loop
        v_results[v_pos] := '{"next_run": null}'::jsonb;
    end loop;
    return to_jsonb(v_results);
end
$$;

-- Parks a task that must not run again until a person looks at it (e.g. workflow code that
-- no longer matches its recorded history). The task becomes dead and its job keeps the
-- error, visible in SQL; the job's status does not move.
create or replace function bury_task(p_task_id bigint, p_token uuid, p_error jsonb)
returns void
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
as $$
declare
    v_task tasks := _held_task(p_task_id, p_token);
begin
    update tasks
       set state = 'dead', error = p_error, lease_owner = null, lease_token = null,
           lease_expires_at = null
     where id = p_task_id
       and state in (select l.from_state from _legal_transitions() as l
                      where l.machine = 'task' and l.to_state = 'dead');
    update jobs set error = p_error, updated_at = _now() where id = v_task.job_id;
end
$$;

-- Extends the leases a worker still holds (its heartbeat); returns the ids of the tasks whose
-- lease it still holds, so it learns at once of any it lost. It never waits for a row lock: a
-- task that another transaction is changing right now (its own completion, a wake-up flag, a
-- takeover) is skipped this time and judged by its committed token; the next beat extends it.
-- Waiting deadlocked with group commits that lock the same tasks in another order.
create or replace function heartbeat(p_task_ids bigint[], p_tokens uuid[], p_lease interval)
returns bigint[]
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
as $$
declare
    v_held bigint[];
begin
    perform _check_lease(p_lease);
    with mine as (
        select h.id, h.token from unnest(p_task_ids, p_tokens) as h (id, token)
    ), free as (
        select t.id from tasks as t where t.id = any(p_task_ids) order by t.id
           for update skip locked
    ), extended as (
        update tasks as t
           set lease_expires_at = least(_now() + p_lease, t.timeout_at),
               run_at = least(_now() + p_lease, t.timeout_at)
          from mine
         where t.id = mine.id and t.lease_token = mine.token and t.id in (select id from free)
        returning t.id
    )
    select coalesce(array_agg(held.id), '{}') into v_held
      from (select id from extended
            union
            select t.id
              from tasks as t
              join mine on t.id = mine.id and t.lease_token = mine.token
             where t.id not in (select id from free)) as held;
    return v_held;
end
$$;

-- Starts prefetched tasks (claim_tasks' p_prefetch) that the worker now runs: the run's
-- deadline (start_to_close, heartbeat_timeout) begins and the short lease becomes p_lease.
-- Not a move of the state machine (the task stays leased), like heartbeat. Returns the ids
-- still held with their token, started now or before. Never waits for a row lock (a task its
-- own completion holds right now is left as it is), for the reason heartbeat gives.
create or replace function start_tasks(p_task_ids bigint[], p_tokens uuid[], p_lease interval)
returns bigint[]
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
as $$
declare
    v_now timestamptz := _now();
    v_held bigint[];
    v_started bigint[];
    v_jobs text[];
    v_builds text[];
begin
    perform _check_lease(p_lease);
    with mine as (
        select h.id, h.token from unnest(p_task_ids, p_tokens) as h (id, token)
    ), free as (
        select t.id from tasks as t where t.id = any(p_task_ids) and t.started_at is null
         order by t.id
           for update skip locked
    ), started as (
        update tasks as t
           set started_at = v_now,
               timeout_at = d.deadline,
               lease_expires_at = least(v_now + p_lease, d.deadline),
               run_at = least(v_now + p_lease, d.deadline)
          from mine
         cross join lateral (select _run_deadline(k.close_at, k.start_to_close,
                                                  k.heartbeat_timeout, v_now, v_now) as deadline
                               from tasks as k where k.id = mine.id) as d
         where t.id = mine.id and t.lease_token = mine.token and t.state = 'leased'
           and t.id in (select id from free)
        returning t.id, t.job_id, t.build_id, t.kind = 'workflow' and t.thread = 'main' as main
    )
    select array_agg(s.id), array_agg(s.job_id) filter (where s.main),
           array_agg(s.build_id) filter (where s.main)
      into v_started, v_jobs, v_builds
      from started as s;
    -- Their workflows run now (skipping one whose row another transaction holds: its
    -- activation's outcome makes the move then, _start_job).
    if v_jobs is not null then
        perform _transitions(v_jobs, 'running', null, null, v_builds);
    end if;
    select coalesce(array_agg(held.id), '{}') into v_held
      from (select id from unnest(v_started) as s (id)
            union
            select t.id
              from tasks as t
              join unnest(p_task_ids, p_tokens) as h (id, token)
                on t.id = h.id and t.lease_token = h.token
             where t.state = 'leased' and t.started_at is not null) as held;
    return v_held;
end
$$;

-- Gives back leased tasks unfinished (a worker shutting down): they are ready again at once,
-- and the interrupted run does not count as an attempt.
create or replace function release_tasks(p_task_ids bigint[], p_tokens uuid[])
returns integer
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
as $$
declare
    v_count integer;
    v_queues text[];
    v_queue text;
begin
    select count(*), array_agg(distinct r.task_queue) into v_count, v_queues
      from _requeue_tasks(
               (select array_agg(t.id)
                  from unnest(p_task_ids, p_tokens) as h (id, token)
                  join tasks as t on t.id = h.id and t.lease_token = h.token),
               _now(), null, true) as r;
    foreach v_queue in array coalesce(v_queues, '{}') loop
        perform _notify('q:' || v_queue);
    end loop;
    return v_count;
end
$$;

-- The batch functions (complete_tasks, record_steps) take a JSON array of items, one per call
-- they stand for, and answer an item that cannot be done with {"error": {sqlstate, message}}
-- (raised for its caller only by the worker) instead of failing the batch. This checks the
-- items and returns the answers to fill in, one null per item.
create or replace function _batch_results(p_items jsonb) returns jsonb[]
language plpgsql immutable
as $$
begin
    if jsonb_typeof(p_items) is distinct from 'array' then
        raise exception using errcode = '22023',
            message = format('items must be a JSON array, not %s',
                             coalesce(jsonb_typeof(p_items), 'null'));
    end if;
    return array_fill(null::jsonb, array[jsonb_array_length(p_items)]);
end
$$;

create or replace function _item_error(p_sqlstate text, p_message text) returns jsonb
language sql immutable
as $$
    select jsonb_build_object('error',
                              jsonb_build_object('sqlstate', p_sqlstate, 'message', p_message))
$$;

-- The items of a batch of one, for the single calls (complete_task, record_step): the named
-- fields, without those that are SQL null (a batch reads a missing field as SQL null, and a
-- JSON null as JSON null).
create or replace function _one_item(p_keys text[], p_values jsonb[]) returns jsonb
language sql immutable
as $$
    select jsonb_build_array(coalesce(jsonb_object_agg(f.key, f.value), '{}'))
      from unnest(p_keys, p_values) as f (key, value)
     where f.value is not null
$$;

-- What a single call returns of its batch of one: the item's answer, or the item's
-- {"error": {sqlstate, message}} raised as the call's own error.
create or replace function _raise_item(p_result jsonb) returns jsonb
language plpgsql immutable
as $$
begin
    if p_result ? 'error' and p_result - 'error' = '{}'::jsonb then
        raise exception using errcode = p_result #>> '{error,sqlstate}',
            message = p_result #>> '{error,message}';
    end if;
    return p_result;
end
$$;

-- The answer for an item whose task is no longer held with its token.
create or replace function _lease_lost_item(p_task_id text) returns jsonb
language sql immutable
as $$
    select _item_error('HM004',
                       format('lease lost: task %s is no longer held with this token', p_task_id))
$$;


-- Group commit of completions: several tasks finished in one transaction (complete_task is a
-- batch of one). Items are {"task_id", "token", "result"}; returns, in order, null for each
-- completed task or {"error": {...}} for one whose lease was lost (the others still
-- complete). The held tasks are locked in job order, not arrival order: a completion wakes
-- its workflow thread (_wake locks or inserts the activation's row), and two batches waking
-- the same jobs in opposite orders deadlocked (fan-out activities completed by several
-- workers at once).
create or replace function complete_tasks(p_items jsonb) returns jsonb
language plpgsql
set search_path from current
set plan_cache_mode = force_generic_plan
-- The items are looked up in tasks by key; with the queue's churn the planner's statistics
-- lag and it would hash-join against a scan of the whole table instead.
set enable_seqscan = off
as $$
declare
    v_ids bigint[];
    v_tokens uuid[];
    v_values jsonb[];
    v_results jsonb[];
    v_held integer[];
    v_main bigint[];
    v_main_jobs text[];
    v_main_results jsonb[];
    v_main_builds text[];
    v_ended text[];
    v_children jobs[];
    v_child jobs;
    v_gone bigint[];
    v_busy integer[];
    v_pos integer;
    v_task tasks;
    v_done integer[];
    v_acts bigint[];
    v_act_jobs text[];
    v_act_threads text[];
    v_act_seqs integer[];
    v_act_results jsonb[];
    v_act_attempts integer[];
begin
    v_results := _batch_results(p_items);
    if cardinality(v_results) = 0 then
        return '[]'::jsonb;
    end if;
    select array_agg((i.value ->> 'task_id')::bigint order by i.pos),
           array_agg((i.value ->> 'token')::uuid order by i.pos),
           array_agg(i.value -> 'result' order by i.pos)
      into v_ids, v_tokens, v_values
      from jsonb_array_elements(p_items) with ordinality as i (value, pos);

    -- The items whose task is still held with their token (positions: a stale token fails
    -- only its own item, even when another item holds the same task), their tasks locked in
    -- job order. Those that end their workflow (its main thread returned), the common case of
    -- a busy queue, end together: one statement per table instead of one complete_task each.
    -- A workflow whose row an application's open transaction holds (entity_merge) does not
    -- end in this batch, which would wait for it: its item answers 55P03 and its worker sends
    -- it again later (the job row is taken with SKIP LOCKED in the same statement).
    select coalesce(array_agg(h.pos), '{}'), array_agg(h.id) filter (where f.id is not null),
           array_agg(h.job_id) filter (where f.id is not null),
           array_agg(h.result) filter (where f.id is not null),
           array_agg(h.build_id) filter (where f.id is not null),
           coalesce(array_agg(h.pos) filter (where h.ends and f.id is null), '{}')
      into v_held, v_main, v_main_jobs, v_main_results, v_main_builds, v_busy
      from (select i.pos::integer as pos, t.id, t.job_id, t.build_id,
                   t.kind = 'workflow' and t.thread = 'main' as ends, i.result
              from unnest(v_ids, v_tokens, v_values) with ordinality as i (id, token, result, pos)
              join tasks as t on t.id = i.id and t.lease_token = i.token
             order by t.job_id, t.thread
               for update of t) as h
      left join lateral (select j.id from jobs as j where h.ends and j.id = h.job_id
                            for no key update skip locked) as f on true;
    -- A child's end settles its parent's step: called for the children only, not per row.
    -- A workflow whose activation was claimed ahead and never started moves from pending or
    -- waiting (_start_job): one write, with the build that ran it.
    select coalesce(array_agg(j.id), '{}'), array_agg(j) filter (where j.parent_seq is not null)
      into v_ended, v_children
      from _transitions(v_main_jobs, 'completed', v_main_results, null, v_main_builds) as j;
    if v_children is not null then
        foreach v_child in array v_children loop
            perform _settle_parent(v_child);
        end loop;
    end if;
    -- Nothing of a finished workflow runs afterwards: no zombie activities or hooks.
    with gone as (delete from tasks where job_id = any(v_ended) returning id)
    select coalesce(array_agg(id), '{}') into v_gone from gone;
    if cardinality(v_ended) = cardinality(v_ids) then
        return to_jsonb(v_results);  -- every item ended its workflow: nothing else to do
    end if;

    -- Completed activities (remote steps), the other common case: their steps recorded, their
    -- tasks deleted and the threads that await them woken, one statement each for the batch
    -- (what _finish_task does for one). A task given twice is done once; the loop answers
    -- the other item.
    select coalesce(array_agg(a.pos), '{}'), array_agg(a.id), array_agg(a.job_id),
           array_agg(a.thread), array_agg(a.seq), array_agg(a.result), array_agg(a.attempt)
      into v_done, v_acts, v_act_jobs, v_act_threads, v_act_seqs, v_act_results,
           v_act_attempts
      from (select distinct on (t.id) i.pos::integer as pos, t.id, t.job_id, t.thread, t.seq,
                   i.result, t.attempt
              from unnest(v_ids, v_values) with ordinality as i (id, result, pos)
              join tasks as t on t.id = i.id
             where i.pos = any(v_held) and t.kind = 'activity' and t.id <> all(v_gone)
             order by t.id, i.pos) as a;
    if v_acts is not null then
        perform _move_steps(v_act_jobs, v_act_threads, v_act_seqs,
                            array_fill('completed'::text, array[cardinality(v_acts)]),
                            v_act_results, array_fill(null::jsonb, array[cardinality(v_acts)]),
                            v_act_attempts,
                            array_fill(null::timestamptz, array[cardinality(v_acts)]));
        delete from tasks where id = any(v_acts);
        perform _wake_threads(v_act_jobs, v_act_threads);
    end if;

    for v_pos in
        select i.pos
          from unnest(v_ids) with ordinality as i (id, pos)
          left join tasks as t on t.id = i.id
         where i.pos <> all(v_done)
         order by t.job_id, t.thread, i.pos
    loop
        if v_pos <> all(v_held) then
            v_results[v_pos] := _lease_lost_item(v_ids[v_pos]::text);
        elsif v_pos = any(v_busy) then
            v_results[v_pos] := _item_error('55P03', format(
                'task %s: its workflow is locked by another transaction; it cannot complete '
                'now', v_ids[v_pos]));
        elsif v_ids[v_pos] = any(v_gone) then
            if v_ids[v_pos] <> all(v_main) then
                v_results[v_pos] := _item_error('HM005', format(
                    'task %s not found: its workflow ended in this batch', v_ids[v_pos]));
            end if;
        else
            -- Held and locked above: an activity, another thread's activation, or a main
            -- thread that _transitions did not move (its _transition names why).
            select * into v_task from tasks where id = v_ids[v_pos];
            if not found then
                v_results[v_pos] := _item_error('HM005', format(
                    'task %s not found: an earlier item of this batch finished it',
                    v_ids[v_pos]));
            else
                perform _finish_task(v_task, v_values[v_pos], null);
            end if;
        end if;
    end loop;
    return to_jsonb(v_results);
end
$$;
