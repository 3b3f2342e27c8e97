-- Starting workflows and reading their outcome: what any application calls from SQL.

-- Starts a workflow: a `jobs` row and its first activation task, committed together, and a
-- notification so an idle worker on the queue picks it up at once. Returns the workflow id.
-- p_options: {"retry_policy": {...}, "priority": int, "expire": seconds kept after finishing,
-- "concurrency_key": text} (its activations share their queue's per-key limit: 25_limits.sql).
create or replace function start_workflow(
    p_workflow_name text,
    p_args jsonb default '[]',
    p_task_queue text default null,
    p_workflow_id text default null,
    p_entity text default null,
    p_options jsonb default '{}'
) returns text
language plpgsql
set search_path from current
as $$
declare
    v_now timestamptz := _now();
    v_options jsonb := coalesce(p_options, '{}'::jsonb);
    v_queue text := coalesce(p_task_queue, p_entity);
    v_id text := coalesce(p_workflow_id, 'H' || replace(gen_random_uuid()::text, '-', ''));
    v_existing jobs;
    v_priority smallint;
    v_retention interval;
    v_key text;
begin
    if coalesce(p_workflow_name, '') = '' then
        raise exception using errcode = '22023', message = 'workflow_name is required';
    end if;
    if coalesce(v_queue, '') = '' then
        raise exception using errcode = '22023',
            message = format('workflow "%s": task_queue (or entity) is required', p_workflow_name);
    end if;
    if v_id = '' or length(v_id) > 255 then
        raise exception using errcode = '22023',
            message = format('workflow id must be 1 to 255 characters, got %s', length(v_id));
    end if;
    if jsonb_typeof(coalesce(p_args, '[]'::jsonb)) <> 'array' then
        raise exception using errcode = '22023',
            message = format('args of workflow "%s" must be a JSON array (positional arguments), '
                             'not %s', p_workflow_name, jsonb_typeof(p_args));
    end if;
    if jsonb_typeof(v_options) <> 'object' then
        raise exception using errcode = '22023', message = 'options must be a JSON object';
    end if;
    perform _check_name('workflow_name', p_workflow_name);
    perform _check_name('task_queue', v_queue);
    perform _check_name('entity', p_entity);
    perform _check_value(format('the args of workflow "%s"', left(p_workflow_name, 100)), p_args);
    perform _check_value('options', v_options);
    if jsonb_typeof(v_options -> 'priority') not in ('number', 'null')
       or (v_options ->> 'priority')::numeric not between -32768 and 32767
       or (v_options ->> 'priority')::numeric <> trunc((v_options ->> 'priority')::numeric) then
        raise exception using errcode = '22023',
            message = format('priority must be a whole number from -32768 to 32767, not %s',
                             v_options -> 'priority');
    end if;
    v_priority := coalesce((v_options ->> 'priority')::numeric::smallint, 0);
    -- Bounded: make_interval does not check overflow, a huge value would wrap to a negative
    -- retention and the finished workflow would expire at once.
    if jsonb_typeof(v_options -> 'expire') not in ('number', 'null')
       or (v_options ->> 'expire')::numeric not between 0 and 1e10 then
        raise exception using errcode = '22023',
            message = format('expire must be a number of seconds from 0 to 1e10, not %s',
                             v_options -> 'expire');
    end if;
    if jsonb_typeof(v_options -> 'concurrency_key') not in ('string', 'null') then
        raise exception using errcode = '22023',
            message = format('concurrency_key must be a string, not %s',
                             v_options -> 'concurrency_key');
    end if;
    v_key := v_options ->> 'concurrency_key';
    perform _check_concurrency_key(v_key);
    -- No `expire`: the app's default_retention (sql/71_retention.sql; 7 days unless set).
    v_retention := coalesce(make_interval(secs => (v_options ->> 'expire')::float8),
                            _default_retention());

    -- A finished workflow whose retention ran out no longer holds its id.
    select * into v_existing from jobs where id = v_id for update;
    if found then
        if v_existing.status in ('completed', 'failed', 'cancelled')
           and v_existing.expire_at <= v_now then
            perform _delete_jobs(array[v_id]);
        else
            raise exception using errcode = 'HM001',
                message = format('Duplicate job: workflow id "%s" is already taken (status %s)',
                                 v_id, v_existing.status);
        end if;
    end if;

    insert into jobs (id, entity, workflow_name, task_queue, args, retry_policy, priority,
                      retention, created_at, updated_at, concurrency_key)
    values (v_id, coalesce(p_entity, p_workflow_name), p_workflow_name, v_queue,
            coalesce(p_args, '[]'::jsonb), _retry_policy(v_options -> 'retry_policy'),
            v_priority, v_retention, v_now, v_now, v_key)
    on conflict (id) do nothing;
    if not found then
        raise exception using errcode = 'HM001',
            message = format('Duplicate job: workflow id "%s" is already taken', v_id);
    end if;
    insert into tasks (job_id, thread, kind, name, task_queue, priority, run_at,
                       concurrency_key, key_rank)
    values (v_id, 'main', 'workflow', p_workflow_name, v_queue, v_priority, v_now, v_key,
            case when v_key is not null then _key_rank(v_queue, v_key) end);
    perform _notify('q:' || v_queue);
    return v_id;
end
$$;

-- The status of a workflow (pending, running, waiting, completed, failed, cancelled).
create or replace function workflow_status(p_workflow_id text) returns text
language plpgsql stable
set search_path from current
as $$
declare
    v_status text;
begin
    select status into v_status from jobs where id = p_workflow_id;
    if not found then
        raise exception using errcode = 'HM002',
            message = format('workflow "%s" not found', p_workflow_id);
    end if;
    return v_status;
end
$$;

-- A workflow's status with its result (completed) or error (failed, cancelled).
create or replace function workflow_outcome(p_workflow_id text)
returns table (status text, result jsonb, error jsonb)
language plpgsql stable
set search_path from current
as $$
begin
    return query select j.status, j.result, j.error from jobs as j where j.id = p_workflow_id;
    if not found then
        raise exception using errcode = 'HM002',
            message = format('workflow "%s" not found', p_workflow_id);
    end if;
end
$$;
