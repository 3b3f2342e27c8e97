-- Signals: never lost, delivered once. A signal goes to the oldest wait for its id (only in
-- its target workflow when it has one) or, when nobody waits, is kept for the first wait that
-- comes. What each side locks (docs/signals.md), so that a caller holding a signal in an open
-- transaction delays only the workflows that signal may go to and no worker ever waits for it:
--   * a delivery locks the one wait it fills (its activation task, its step, its job row in
--     key share mode);
--   * keeping a signal takes an advisory lock on what it is kept for, to commit:
--     (signal id, workflow) when targeted, (signal id, any workflow) when not;
--   * registering a wait takes (signal id, its workflow) and, shared, (signal id, any workflow)
--     without ever waiting: when either is held (a signal being kept by a transaction still
--     open), the wait is deferred (its step `retrying`, due after a short backoff; the
--     activation suspends) and registered when it runs again.
-- A keep and a registration thus never overlap, so a signal and a wait that cross always meet.

-- The advisory lock key of signal p_signal_id kept for workflow p_workflow_id (null: for any
-- workflow) in this app. A JSON array keeps ids containing separators apart.
create or replace function _signal_key(p_signal_id text, p_workflow_id text) returns bigint
language sql stable
as $$
    select hashtextextended(
        jsonb_build_array(current_schema(), 'signal', p_signal_id, p_workflow_id)::text, 0)
$$;

-- Hands a payload (or, for a failed hook, an error) to the oldest live wait for p_signal_id
-- (in p_workflow_id only, when given), recording its step and waking its thread; null when no
-- wait took it. A wait left behind by a workflow (or hook thread) that already ended takes
-- nothing: a signal given to it would be lost. A human task waiting on it is resolved with the
-- payload, by p_sender (the sending workflow; null for an application's signal).
drop function if exists _fill_wait(text, text, jsonb, jsonb);
create or replace function _fill_wait(
    p_signal_id text, p_workflow_id text, p_payload jsonb, p_error jsonb,
    p_sender text default null
) returns jsonb
language plpgsql
as $$
declare
    v_wait steps;
begin
    loop
        select s.* into v_wait
          from steps as s
          join jobs as j on j.id = s.job_id
         where s.kind = 'signal' and s.status = 'scheduled' and s.name = p_signal_id
           and (p_workflow_id is null or s.job_id = p_workflow_id)
           and j.status not in ('completed', 'failed', 'cancelled')
           and (s.thread = 'main'
                or exists (select 1 from threads as th
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
        -- The wait may be ending right now (its timeout fired in a claim, another signal
        -- filled it): the move waits for that and then finds it no longer scheduled, and the
        -- next oldest wait is tried.
        if (_move_step(v_wait.job_id, v_wait.thread, v_wait.seq,
                       case when p_error is null then 'completed' else 'failed' end,
                       p_payload, p_error, null, null, false)).job_id is not null then
            perform _wake(v_wait.job_id, v_wait.thread);
            if exists (select 1 from human_tasks
                        where job_id = v_wait.job_id and thread = v_wait.thread
                          and seq = v_wait.seq and status in ('open', 'claimed')) then
                perform _signal_human_task(v_wait, p_payload, p_error, p_sender);
            end if;
            return jsonb_build_object('status', 'delivered', 'workflow_id', v_wait.job_id,
                                      'thread', v_wait.thread, 'seq', v_wait.seq);
        end if;
    end loop;
    return null;
end
$$;

-- Delivers a signal to the oldest live wait for it, or keeps it when nobody waits. Returns
-- {"status": "delivered", "workflow_id", "thread", "seq"} or {"status": "kept", "id"}.
drop function if exists _deliver(text, text, jsonb, jsonb);
create or replace function _deliver(
    p_signal_id text, p_workflow_id text, p_payload jsonb, p_error jsonb default null,
    p_sender text default null
) returns jsonb
language plpgsql
as $$
declare
    v_outcome jsonb := _fill_wait(p_signal_id, p_workflow_id, p_payload, p_error, p_sender);
    v_kept bigint;
begin
    if v_outcome is not null then
        return v_outcome;
    end if;
    -- Nobody waited: take the keep lock, then look again. A wait registering meanwhile either
    -- committed before the lock was granted (and is found now: each statement reads what is
    -- committed) or is deferred until this transaction ends (and then finds the signal kept).
    -- A snapshot older than the lock would miss that wait, and both would wait forever.
    if current_setting('transaction_isolation') <> 'read committed' then
        raise exception using errcode = '25000',
            message = format('signal "%s" would be kept, which needs read committed isolation, '
                             'not %s: send it in a read committed transaction', p_signal_id,
                             current_setting('transaction_isolation'));
    end if;
    perform pg_advisory_xact_lock(_signal_key(p_signal_id, p_workflow_id));
    v_outcome := _fill_wait(p_signal_id, p_workflow_id, p_payload, p_error, p_sender);
    if v_outcome is not null then
        return v_outcome;
    end if;
    insert into signals (signal_id, job_id, payload, error, created_at)
    values (p_signal_id, p_workflow_id, p_payload, p_error, _now())
    returning id into v_kept;
    return jsonb_build_object('status', 'kept', 'id', v_kept);
end
$$;

-- Sends a signal from any application: `select my_app.signal('human-approval', 'true')`.
-- With p_workflow_id only that workflow receives it (HM002 when there is no such workflow,
-- HM003 when it has finished: it will never wait again, a kept signal would be lost). An
-- idempotency key belongs to the signal it came with (signal id and target): a repeat of the
-- same send is ignored ({"status": "duplicate"}), even after the workflow finished; the same
-- key with another payload is refused (22023: a retry must repeat the same call); on another
-- signal id or target it is another send. A payload must be JSON (a bad one fails the cast).
-- A human task waiting on the signal id is resolved with the payload (docs/people.md).
-- _signal is the body, with the sender (a workflow's send_signal; null: an application).
create or replace function _signal(
    p_signal_id text, p_payload jsonb, p_workflow_id text, p_idempotency_key text,
    p_sender text
) returns jsonb
language plpgsql
as $$
declare
    v_status text;
    v_outcome jsonb;
    v_md5 text := md5(coalesce(p_payload, 'null'::jsonb)::text);
    v_used_md5 text;
begin
    if coalesce(p_signal_id, '') = '' then
        raise exception using errcode = '22023', message = 'signal id is required';
    end if;
    perform _check_name('signal id', p_signal_id);
    perform _check_name('idempotency key', p_idempotency_key);
    perform _check_value(format('the payload of signal "%s"', p_signal_id), p_payload);
    if p_idempotency_key is not null then
        -- A key recorded before keys had a scope (migration 0007) stops any send with it.
        if exists (select 1 from signal_keys
                    where idempotency_key = p_idempotency_key and signal_id is null) then
            return jsonb_build_object('status', 'duplicate');
        end if;
        insert into signal_keys (idempotency_key, signal_id, job_id, payload_md5, used_at)
        values (p_idempotency_key, p_signal_id, p_workflow_id, v_md5, _now())
        on conflict on constraint signal_keys_scope do nothing;
        if not found then
            select k.payload_md5 into v_used_md5
              from signal_keys as k
             where k.idempotency_key = p_idempotency_key and k.signal_id = p_signal_id
               and k.job_id is not distinct from p_workflow_id;
            if v_used_md5 is distinct from v_md5 then
                raise exception using errcode = '22023',
                    message = format('idempotency key "%s" was already used for signal "%s"%s '
                                     'with another payload; a retry must repeat the same call',
                                     p_idempotency_key, p_signal_id,
                                     case when p_workflow_id is not null
                                          then format(' to workflow "%s"', p_workflow_id)
                                          else '' end);
            end if;
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
    v_outcome := _deliver(p_signal_id, p_workflow_id, coalesce(p_payload, 'null'::jsonb), null,
                          p_sender);
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

-- The application's call: the sender is not known.
create or replace function signal(
    p_signal_id text,
    p_payload jsonb default 'null',
    p_workflow_id text default null,
    p_idempotency_key text default null
) returns jsonb
language sql
set search_path from current
as $$
    select _signal(p_signal_id, p_payload, p_workflow_id, p_idempotency_key, null)
$$;

-- Defers a step whose call met a lock that a caller's open transaction holds: the step is
-- `retrying`, due after 50 ms doubling to 1 s; the activation suspends (its slot is free) and
-- makes the call again when the step is due.
create or replace function _defer_step(p_task tasks, p_seq integer) returns jsonb
language plpgsql
as $$
declare
    v_step steps;
    v_again boolean;
begin
    select * into v_step
      from steps
     where job_id = p_task.job_id and thread = p_task.thread and seq = p_seq;
    v_again := v_step.status = 'retrying';
    v_step := _move_step(p_task.job_id, p_task.thread, p_seq, 'retrying', null, null,
                         v_step.attempt + v_again::integer,
                         _now() + least(interval '50 ms' * 2 ^ (case when v_again
                                                                    then v_step.attempt
                                                                    else 0 end),
                                        interval '1 s'));
    return _step_json(v_step);
end
$$;

-- A workflow thread waits for a signal: the oldest kept signal for it (untargeted, or
-- targeted at this workflow) is taken at once; otherwise the step waits, until p_timeout
-- seconds after the first call when given (then claim_tasks fails it with code 596). It never
-- waits for a lock: while a signal of this id that may go to this workflow is being kept by a
-- transaction still open, the step is deferred (`retrying`, due after a backoff of 50 ms
-- doubling to 1 s) and registered when the thread runs again. Returns the step.
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
    select * into v_step
      from steps
     where job_id = v_task.job_id and thread = v_task.thread and seq = p_seq;
    if found then
        perform _check_step(v_step, 'signal', p_signal_id);
        if v_step.status <> 'retrying' then
            return _step_json(v_step);  -- registered before: a replay
        end if;
    end if;
    if not (pg_try_advisory_xact_lock(_signal_key(p_signal_id, v_task.job_id))
            and pg_try_advisory_xact_lock_shared(_signal_key(p_signal_id, null))) then
        if v_step.seq is null then
            insert into steps (job_id, thread, seq, kind, name, status, input, created_at)
            values (v_task.job_id, v_task.thread, p_seq, 'signal', p_signal_id, 'scheduled',
                    jsonb_build_object('timeout', p_timeout), v_now);
        end if;
        return _defer_step(v_task, p_seq);
    end if;
    if v_step.seq is null then
        insert into steps (job_id, thread, seq, kind, name, status, input, wake_at, created_at)
        values (v_task.job_id, v_task.thread, p_seq, 'signal', p_signal_id, 'scheduled',
                jsonb_build_object('timeout', p_timeout),
                v_now + make_interval(secs => p_timeout::float8), v_now)
        returning * into v_step;
    else
        v_step := _move_step(v_task.job_id, v_task.thread, p_seq, 'scheduled', null, null,
                             null, v_step.created_at + make_interval(secs => p_timeout::float8));
    end if;
    -- The oldest kept signal for this workflow. Another wait taking it right now holds its
    -- row: that one is waited for (a worker's short transaction) and the next is tried.
    loop
        select * into v_kept
          from signals
         where signal_id = p_signal_id and (job_id is null or job_id = v_task.job_id)
         order by id
         limit 1
           for update;
        exit when found or not exists (
            select 1 from signals
             where signal_id = p_signal_id and (job_id is null or job_id = v_task.job_id));
    end loop;
    if v_kept.id is not null then
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
-- sends it to whoever waits anywhere. A caller's open transaction may hold what the send
-- needs (a keep of the same signal, a delivery to the same wait): it is waited for at most
-- 50 ms, then the step is deferred (_defer_step) and sent again when due.
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
    v_lock_timeout text := current_setting('lock_timeout');
    v_step steps;
begin
    -- Checked before the step records the payload (a bad id fails the call, recorded, below).
    perform _check_value(format('the payload of signal "%s"', left(p_signal_id, 255)), p_payload);
    if not _begin_step(v_task, p_seq, 'send', p_signal_id,
                       jsonb_build_object('payload', p_payload, 'workflow_id', v_target)) then
        select * into v_step
          from steps
         where job_id = v_task.job_id and thread = v_task.thread and seq = p_seq;
        perform _check_step(v_step, 'send', p_signal_id);
        if v_step.status <> 'retrying' then
            return _step_json(v_step);
        end if;
    end if;
    -- A send that cannot be delivered (unknown target) fails the call, not the activation.
    begin
        perform set_config('lock_timeout', '50ms', true);
        v_outcome := _signal(p_signal_id, p_payload, v_target, null, v_task.job_id);
        perform set_config('lock_timeout', v_lock_timeout, true);
    exception
        when lock_not_available then
            return _defer_step(v_task, p_seq);
        when sqlstate 'HM002' or sqlstate 'HM003' or sqlstate '22023' then
            v_error := _error_json(sqlstate, sqlerrm, 'SignalError');
    end;
    return _settle_step(v_task, p_seq, v_outcome, v_error);
end
$$;
