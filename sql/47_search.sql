-- Search attributes and events. Search attributes are flat key -> JSON value pairs per
-- workflow, in jobs.search (GIN-indexed: `where search @> '{"region": "eu"}'`). Events are
-- ephemeral: a NOTIFY on the app's channel, kept nowhere.

-- Applies one search operation to a workflow's attributes, exactly once per code position
-- (the step is recorded first; a replay returns its recorded result):
--   set {fields} -> number of fields set      get [key] -> value or null
--   mget [keys]  -> values                    del [keys] -> number of keys deleted
--   incr [key, n] -> new value                mult [key, n] -> new value
create or replace function search_step(
    p_task_id bigint, p_token uuid, p_seq integer, p_op text, p_args jsonb
) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_task tasks := _activation_task(p_task_id, p_token);
    v_search jsonb;
    v_result jsonb;
    v_key text := p_args ->> 0;
    v_value jsonb;
    v_error jsonb;
begin
    if p_op is null or p_op not in ('set', 'get', 'mget', 'del', 'incr', 'mult') then
        raise exception using errcode = '22023',
            message = format('unknown search operation "%s" (set, get, mget, del, incr, mult)',
                             p_op);
    end if;
    perform _check_value(format('the arguments of search %s', p_op), p_args);
    if not _begin_step(v_task, p_seq, 'search', p_op, p_args) then
        return _recorded_step(v_task, p_seq, 'search', p_op);
    end if;
    -- A bad operation (wrong types, bad arguments, a number out of range) fails the call,
    -- not the activation.
    begin
        select search into v_search from jobs where id = v_task.job_id for no key update;
        if p_op = 'set' and jsonb_typeof(p_args) is distinct from 'object' then
            raise exception using errcode = '22023',
                message = 'search set takes an object of fields';
        elsif p_op <> 'set' and jsonb_typeof(p_args) is distinct from 'array' then
            raise exception using errcode = '22023',
                message = format('search %s takes an array of arguments', p_op);
        elsif p_op in ('get', 'incr', 'mult')
              and jsonb_typeof(p_args -> 0) is distinct from 'string' then
            raise exception using errcode = '22023',
                message = format('search %s needs a key (a string) as its first argument', p_op);
        end if;
        if p_op = 'set' then
            v_search := v_search || p_args;
            v_result := to_jsonb((select count(*) from jsonb_object_keys(p_args)));
        elsif p_op = 'get' then
            v_result := coalesce(v_search -> v_key, 'null');
        elsif p_op = 'mget' then
            v_result := coalesce(
                (select jsonb_agg(coalesce(v_search -> a.k, 'null') order by a.n)
                   from jsonb_array_elements_text(p_args) with ordinality as a (k, n)),
                '[]');
        elsif p_op = 'del' then
            v_result := to_jsonb((select count(*) from jsonb_array_elements_text(p_args) as k
                                   where v_search ? k));
            v_search := v_search - (select coalesce(array_agg(k), '{}')
                                      from jsonb_array_elements_text(p_args) as k);
        else
            v_value := coalesce(v_search -> v_key,
                                case when p_op = 'incr' then '0' else '1' end::jsonb);
            if jsonb_typeof(v_value) <> 'number'
               or jsonb_typeof(p_args -> 1) is distinct from 'number' then
                raise exception using errcode = 'HM008',
                    message = format('search %s "%s": needs numbers, found %s and %s', p_op,
                                     v_key, jsonb_typeof(v_value),
                                     coalesce(jsonb_typeof(p_args -> 1), 'nothing'));
            end if;
            v_result := to_jsonb(
                case when p_op = 'incr'
                     then (v_value #>> '{}')::numeric + (p_args ->> 1)::numeric
                     else (v_value #>> '{}')::numeric * (p_args ->> 1)::numeric end);
            -- Repeated mult would otherwise grow a number past what JSON readers parse.
            perform _check_value(format('the result of search %s', p_op), v_result);
            v_search := jsonb_set(v_search, array[v_key], v_result);
        end if;
        if p_op not in ('get', 'mget') then
            update jobs set search = v_search, updated_at = _now() where id = v_task.job_id;
        end if;
    exception when sqlstate 'HM008' or sqlstate '22023' or sqlstate '22003' then
        v_error := _error_json(sqlstate, sqlerrm, 'SearchError');
    end;
    return _settle_step(v_task, p_seq, v_result, v_error);
end
$$;

-- Publishes events once per code position: a NOTIFY on the app's channel per topic, payload
-- 'e:{"workflow_id", "topic", "data"}'. Listeners receive them; nothing is stored.
create or replace function emit_step(
    p_task_id bigint, p_token uuid, p_seq integer, p_events jsonb
) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_task tasks := _activation_task(p_task_id, p_token);
    v_step steps;
    v_topic text;
    v_data jsonb;
    v_payload text;
begin
    if jsonb_typeof(p_events) is distinct from 'object' then
        raise exception using errcode = '22023',
            message = 'emit takes an object of {topic: data}';
    end if;
    -- Sizes are checked before anything is recorded: NOTIFY payloads are limited.
    for v_topic, v_data in select key, value from jsonb_each(p_events) loop
        if octet_length(v_data::text) + octet_length(v_task.job_id) + octet_length(v_topic)
           > 7800 then
            raise exception using errcode = '22023',
                message = format('event "%s" is too large for NOTIFY (keep it under 7800 bytes)',
                                 v_topic);
        end if;
    end loop;
    insert into steps (job_id, thread, seq, kind, name, status, input, output, created_at,
                       completed_at)
    values (v_task.job_id, v_task.thread, p_seq, 'emit', '', 'completed', p_events, 'true',
            _now(), _now())
    on conflict do nothing
    returning * into v_step;
    if not found then
        return _recorded_step(v_task, p_seq, 'emit', '');
    end if;
    for v_topic, v_data in select key, value from jsonb_each(p_events) loop
        v_payload := 'e:' || jsonb_build_object('workflow_id', v_task.job_id, 'topic', v_topic,
                                                'data', v_data)::text;
        perform _notify(v_payload);
    end loop;
    return _step_json(v_step);
end
$$;
