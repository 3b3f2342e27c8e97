-- Signals: never lost, delivered once. A signal goes to the oldest wait for its id (only in
-- its target workflow when it has one) or, when nobody waits, is kept for the first wait that
-- comes. An advisory lock per signal id serialises delivery with wait registration, so a
-- signal and a wait that cross each other always meet.

create or replace function _lock_signal(p_signal_id text) returns void
language sql volatile
as $$
    select pg_advisory_xact_lock(hashtextextended(current_schema() || ':signal:' || p_signal_id, 0))
$$;

-- Hands a payload (or, for a failed hook, an error) to the oldest wait for p_signal_id,
-- recording its step and waking its thread; keeps it when nobody waits. A wait left behind
-- by a workflow (or hook thread) that already ended takes nothing: a signal given to it would
-- be lost. Returns what happened: {"status": "delivered", "workflow_id", "thread", "seq"} or
-- {"status": "kept", "id"}.
create or replace function _deliver(
    p_signal_id text, p_workflow_id text, p_payload jsonb, p_error jsonb default null
) returns jsonb
language plpgsql
as $$
declare
    v_wait steps;
    v_kept bigint;
begin
    perform _lock_signal(p_signal_id);
    loop
        select s.* into v_wait
          from steps as s
          join jobs as j on j.id = s.job_id
         where s.kind = 'signal' and s.status = 'scheduled' and s.name = p_signal_id
           and (p_workflow_id is null or s.job_id = p_workflow_id)
           and j.status not in ('completed', 'failed', 'cancelled')
           and (s.thread = 'main'
                or exists (select from threads as th
                            where th.job_id = s.job_id and th.thread = s.thread
                              and th.status = 'running'))
         order by s.created_at, s.job_id, s.thread, s.seq
         limit 1;
        exit when not found;
        -- The wait's thread activation, then its job row, held until commit (tasks before the
        -- job: the lock order of claims, suspends and cancel_workflow). A cancel running at the
        -- same time either comes after this delivery (and removes the task it wakes) or before
        -- it: then the job is no longer live and the next oldest wait is tried.
        perform from tasks
         where job_id = v_wait.job_id and thread = v_wait.thread and kind = 'workflow'
           for update;
        perform from jobs
         where id = v_wait.job_id and status not in ('completed', 'failed', 'cancelled')
           for key share;
        continue when not found;
        -- The wait may be ending right now (its timeout fired in a claim): the update waits
        -- for that and then finds it no longer scheduled, and the next oldest wait is tried.
        if (_move_step(v_wait.job_id, v_wait.thread, v_wait.seq,
                       case when p_error is null then 'completed' else 'failed' end,
                       p_payload, p_error, null, null, false)).job_id is not null then
            perform _wake(v_wait.job_id, v_wait.thread);
            return jsonb_build_object('status', 'delivered', 'workflow_id', v_wait.job_id,
                                      'thread', v_wait.thread, 'seq', v_wait.seq);
        end if;
    end loop;
    insert into signals (signal_id, job_id, payload, error, created_at)
    values (p_signal_id, p_workflow_id, p_payload, p_error, _now())
    returning id into v_kept;
    return jsonb_build_object('status', 'kept', 'id', v_kept);
end
$$;

-- Sends a signal from any application: `select my_app.signal('human-approval', 'true')`.
-- With p_workflow_id only that workflow receives it (HM002 when there is no such workflow,
-- HM003 when it has finished: it will never wait again, a kept signal would be lost); with
-- p_idempotency_key a repeated send is ignored ({"status": "duplicate"}), even after the
-- workflow finished. A payload must be JSON (a bad one fails the cast).
create or replace function signal(
    p_signal_id text,
    p_payload jsonb default 'null',
    p_workflow_id text default null,
    p_idempotency_key text default null
) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_status text;
    v_outcome jsonb;
begin
    if coalesce(p_signal_id, '') = '' then
        raise exception using errcode = '22023', message = 'signal id is required';
    end if;
    perform _check_name('signal id', p_signal_id);
    perform _check_name('idempotency key', p_idempotency_key);
    perform _check_value(format('the payload of signal "%s"', p_signal_id), p_payload);
    if p_idempotency_key is not null then
        insert into signal_keys (idempotency_key, used_at) values (p_idempotency_key, _now())
        on conflict do nothing;
        if not found then
            return jsonb_build_object('status', 'duplicate');
        end if;
    end if;
    if p_workflow_id is not null then
        select status into v_status from jobs where id = p_workflow_id;
        if not found then
            raise exception using errcode = 'HM002',
                message = format('signal "%s": workflow "%s" not found', p_signal_id,
                                 p_workflow_id);
        end if;
        if v_status in ('completed', 'failed', 'cancelled') then
            raise exception using errcode = 'HM003',
                message = format('signal "%s": workflow "%s" is %s and waits for no more '
                                 'signals', p_signal_id, p_workflow_id, v_status);
        end if;
    end if;
    v_outcome := _deliver(p_signal_id, p_workflow_id, coalesce(p_payload, 'null'::jsonb));
    -- A signal kept for a workflow that a concurrent cancel just finished would never be
    -- taken: checked again under a key share lock (which a cancel in progress waits on).
    if p_workflow_id is not null and v_outcome ->> 'status' = 'kept' then
        select status into v_status from jobs where id = p_workflow_id for key share;
        if v_status in ('completed', 'failed', 'cancelled') then
            raise exception using errcode = 'HM003',
                message = format('signal "%s": workflow "%s" is %s and waits for no more '
                                 'signals', p_signal_id, p_workflow_id, v_status);
        end if;
    end if;
    return v_outcome;
end
$$;

-- A workflow thread waits for a signal: the oldest kept signal for it (untargeted, or
-- targeted at this workflow) is taken at once; otherwise the step waits, until p_timeout
-- seconds when given (then claim_tasks fails it with code 596). Returns the step.
create or replace function wait_signal(
    p_task_id bigint, p_token uuid, p_seq integer, p_signal_id text, p_timeout numeric
) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_task tasks := _activation_task(p_task_id, p_token);
    v_now timestamptz := _now();
    v_step steps;
    v_kept signals;
begin
    if coalesce(p_signal_id, '') = '' then
        raise exception using errcode = '22023', message = 'signal id is required';
    end if;
    if p_timeout is not null and not (p_timeout between 0 and 1e10) then
        raise exception using errcode = '22023',
            message = format('wait_for timeout must be from 0 to 1e10 seconds, not %s', p_timeout);
    end if;
    perform _check_name('signal id', p_signal_id);
    perform _lock_signal(p_signal_id);
    insert into steps (job_id, thread, seq, kind, name, status, input, wake_at, created_at)
    values (v_task.job_id, v_task.thread, p_seq, 'signal', p_signal_id, 'scheduled',
            jsonb_build_object('timeout', p_timeout),
            v_now + make_interval(secs => p_timeout::float8), v_now)
    on conflict do nothing
    returning * into v_step;
    if not found then
        return _recorded_step(v_task, p_seq, 'signal', p_signal_id);
    end if;
    select * into v_kept
      from signals
     where signal_id = p_signal_id and (job_id is null or job_id = v_task.job_id)
     order by id
     limit 1;
    if found then
        delete from signals where id = v_kept.id;
        v_step := _move_step(v_task.job_id, v_task.thread, p_seq,
                             case when v_kept.error is null then 'completed' else 'failed' end,
                             v_kept.payload, v_kept.error);
    end if;
    return _step_json(v_step);
end
$$;

-- A workflow thread sends a signal, exactly once per code position: the step is recorded
-- first, so a replay returns the recorded delivery instead of sending again. By default it
-- targets the sender's own workflow (a hook signalling its caller); p_workflow_id = '*'
-- sends it to whoever waits anywhere.
create or replace function send_signal(
    p_task_id bigint, p_token uuid, p_seq integer, p_signal_id text, p_payload jsonb,
    p_workflow_id text default null
) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_task tasks := _activation_task(p_task_id, p_token);
    v_target text := case when p_workflow_id = '*' then null
                          else coalesce(p_workflow_id, v_task.job_id) end;
    v_outcome jsonb;
    v_error jsonb;
begin
    -- Checked before the step records the payload (a bad id fails the call, recorded, below).
    perform _check_value(format('the payload of signal "%s"', left(p_signal_id, 255)), p_payload);
    if not _begin_step(v_task, p_seq, 'send', p_signal_id,
                       jsonb_build_object('payload', p_payload, 'workflow_id', v_target)) then
        return _recorded_step(v_task, p_seq, 'send', p_signal_id);
    end if;
    -- A send that cannot be delivered (unknown target) fails the call, not the activation.
    begin
        v_outcome := signal(p_signal_id, p_payload, v_target);
    exception when sqlstate 'HM002' or sqlstate 'HM003' or sqlstate '22023' then
        v_error := _error_json(sqlstate, sqlerrm, 'SignalError');
    end;
    return _settle_step(v_task, p_seq, v_outcome, v_error);
end
$$;
