-- Starting workflows and reading their outcome: what any application calls from SQL.

-- Starts a workflow: a `jobs` row and its first activation task, committed together, and a
-- notification so an idle worker on the queue picks it up at once. Returns the workflow id
-- (with an idempotency key or a debounce, maybe that of a run started before).
-- p_options: {"retry_policy": {...}, "priority": int, "expire": seconds kept after finishing}
-- and the start options (docs/sql-api.md): "execution_timeout" (seconds), "id_reuse"
-- (reject | allow_finished | terminate), "idempotency_key", "debounce" (seconds), "start_at"
-- (a timestamp) or "start_in" (seconds), "search" ({attribute: value}); "concurrency_key"
-- (its activations share their queue's per-key limit: 25_limits.sql); "traceparent" (the W3C
-- trace context its tasks continue: docs/tracing.md).
-- A batch of one of start_workflows' _start_batch.
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
begin
    return (_start_batch(array[
        _start_plan(p_workflow_name, p_args, p_task_queue, p_workflow_id, p_entity, p_options)
    ]))[1];
end
$$;

-- Starts many workflows in one call, all or none: p_items is a JSON array of objects with
-- start_workflow's parameters as keys ({"workflow_name", "args", "task_queue", "workflow_id",
-- "entity", "options"}). Returns their workflow ids in item order. A bad item, a taken id or
-- an id given twice in the batch refuses the whole batch (the message names the item or the
-- id) and starts nothing. New ids are inserted with one statement per table, and one
-- notification goes to each queue.
-- The common start (names, args, no options) is checked and planned for the whole batch in
-- one statement: one by one, _start_plan's PL/pgSQL checks were most of a batch's time. Any
-- other item, or one that fails a check, goes through _start_plan, which names its fault.
create or replace function start_workflows(p_items jsonb) returns text[]
language plpgsql
set search_path from current
as $$
declare
    v_now timestamptz := _now();
    v_plans jsonb[];
    v_item jsonb;
    v_ord integer := 0;
    v_unknown text;
    v_retention interval := _default_retention();
    v_policy jsonb := _retry_policy(null);
begin
    if jsonb_typeof(p_items) is distinct from 'array' then
        raise exception using errcode = '22023',
            message = format('items must be a JSON array of starts, not %s',
                             coalesce(jsonb_typeof(p_items), 'null'));
    end if;
    -- _start_plan's plan of a start without options (the keys it sets to null left out: they
    -- read as null); null for an item it must see itself.
    select coalesce(array_agg(case when e.plain then jsonb_build_object(
               'id', coalesce(e.v ->> 'workflow_id',
                              'H' || replace(gen_random_uuid()::text, '-', '')),
               'entity', coalesce(e.v ->> 'entity', e.v ->> 'workflow_name'),
               'workflow_name', e.v ->> 'workflow_name', 'task_queue', e.v ->> 'task_queue',
               'args', coalesce(nullif(e.v -> 'args', 'null'), '[]'::jsonb),
               'retry_policy', v_policy, 'priority', 0, 'retention', v_retention,
               'search', '{}'::jsonb, 'run_at', v_now, 'id_reuse', 'reject') end
               order by e.ord), '{}')
      into v_plans
      from (select i.ord, i.v,
                   jsonb_typeof(i.v) = 'object'
                   and i.v - array['workflow_name', 'args', 'task_queue', 'workflow_id',
                                   'entity', 'options'] = '{}'::jsonb
                   and coalesce(nullif(i.v -> 'options', 'null'), '{}'::jsonb) = '{}'::jsonb
                   and jsonb_typeof(i.v -> 'workflow_name') = 'string'
                   and length(i.v ->> 'workflow_name') between 1 and 255
                   and jsonb_typeof(i.v -> 'task_queue') = 'string'
                   and length(i.v ->> 'task_queue') between 1 and 255
                   and coalesce(jsonb_typeof(i.v -> 'workflow_id'), 'null') in ('string', 'null')
                   and coalesce(length(i.v ->> 'workflow_id') between 1 and 255, true)
                   and coalesce(jsonb_typeof(i.v -> 'entity'), 'null') in ('string', 'null')
                   and coalesce(length(i.v ->> 'entity') <= 255, true)
                   and coalesce(jsonb_typeof(i.v -> 'args'), 'null') in ('array', 'null')
                   -- _check_value's limits, as one expression
                   and coalesce(pg_column_size(i.v -> 'args') <= 1048576
                                and not jsonb_path_exists(i.v -> 'args',
                                    'strict $.**{100} ? (@.type() == "array" '
                                    '|| @.type() == "object")')
                                and not jsonb_path_exists(i.v -> 'args',
                                    'strict $.** ? (@.type() == "number" '
                                    '&& @.abs() > 1.7976931348623157e308)'), true) as plain
              from jsonb_array_elements(p_items) with ordinality as i (v, ord)) as e;
    begin
        for v_item in select value from jsonb_array_elements(p_items) loop
            v_ord := v_ord + 1;
            continue when v_plans[v_ord] is not null;
            if jsonb_typeof(v_item) <> 'object' then
                raise exception using errcode = '22023',
                    message = format('a start must be a JSON object, not %s',
                                     jsonb_typeof(v_item));
            end if;
            select string_agg(k, ', ') into v_unknown
              from jsonb_object_keys(v_item) as k
             where k not in ('workflow_name', 'args', 'task_queue', 'workflow_id', 'entity',
                             'options');
            if v_unknown is not null then
                raise exception using errcode = '22023',
                    message = format('unknown field(s): %s (a start has workflow_name, args, '
                                     'task_queue, workflow_id, entity, options)', v_unknown);
            end if;
            if jsonb_typeof(v_item -> 'args') not in ('array', 'null') then
                raise exception using errcode = '22023',
                    message = format('args of workflow "%s" must be a JSON array (positional '
                                     'arguments), not %s', v_item ->> 'workflow_name',
                                     jsonb_typeof(v_item -> 'args'));
            end if;
            v_plans[v_ord] := _start_plan(
                v_item ->> 'workflow_name', nullif(v_item -> 'args', 'null'),
                v_item ->> 'task_queue', v_item ->> 'workflow_id', v_item ->> 'entity',
                coalesce(nullif(v_item -> 'options', 'null'), '{}'), v_retention, v_policy);
        end loop;
    exception when others then
        -- Which item: the batch is refused as a whole, so the caller must find the bad one.
        raise exception using errcode = sqlstate,
            message = format('start %s of %s: %s', v_ord, jsonb_array_length(p_items), sqlerrm);
    end;
    return _start_batch(v_plans);
end
$$;

-- The checked, normalised start of one workflow (start_workflow's parameters): its jobs row's
-- values, its first activation's due time (run_at), and what only the one-by-one path of
-- _start_batch handles (idempotency_key, debounce, id_reuse). Bad input: 22023 naming it.
-- A batch passes the app's default retention and retry policy, read once for all its starts.
create or replace function _start_plan(
    p_workflow_name text,
    p_args jsonb,
    p_task_queue text,
    p_workflow_id text,
    p_entity text,
    p_options jsonb,
    p_default_retention interval default null,
    p_default_policy jsonb default null
) returns jsonb
language plpgsql
as $$
declare
    v_now timestamptz := _now();
    v_options jsonb := coalesce(p_options, '{}'::jsonb);
    v_queue text := coalesce(p_task_queue, p_entity);
    v_id text := coalesce(p_workflow_id, 'H' || replace(gen_random_uuid()::text, '-', ''));
    v_priority smallint;
    v_retention interval;
    v_policy jsonb;
    v_start jsonb;
    v_run_at timestamptz;
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
    perform _check_seconds('expire', v_options -> 'expire', 0, 1e10, 'from 0 to 1e10');
    if jsonb_typeof(v_options -> 'concurrency_key') not in ('string', 'null') then
        raise exception using errcode = '22023',
            message = format('concurrency_key must be a string, not %s',
                             v_options -> 'concurrency_key');
    end if;
    v_key := v_options ->> 'concurrency_key';
    perform _check_concurrency_key(v_key);
    perform _check_traceparent(v_options -> 'traceparent');
    -- No `expire`: the app's default_retention (sql/71_retention.sql; 7 days unless set).
    v_retention := coalesce(make_interval(secs => (v_options ->> 'expire')::float8),
                            p_default_retention, _default_retention());
    if nullif(v_options -> 'retry_policy', 'null') is null and p_default_policy is not null then
        v_policy := p_default_policy;
    else
        v_policy := _retry_policy(v_options -> 'retry_policy');
    end if;
    if v_policy ?| array['start_to_close', 'schedule_to_close', 'heartbeat_timeout'] then
        raise exception using errcode = '22023',
            message = 'a workflow''s retry policy takes no activity timeouts (start_to_close, '
                      'schedule_to_close, heartbeat_timeout): use execution_timeout';
    end if;
    v_start := _start_options(v_options, v_retention, v_id, p_workflow_id is not null);
    v_run_at := greatest(v_now, (v_start ->> 'run_at')::timestamptz);
    return jsonb_build_object(
        'id', v_id, 'entity', coalesce(p_entity, p_workflow_name),
        'workflow_name', p_workflow_name, 'task_queue', v_queue,
        'args', coalesce(p_args, '[]'::jsonb), 'retry_policy', v_policy, 'priority', v_priority,
        'retention', v_retention, 'execution_timeout', v_start -> 'execution_timeout',
        'timeout_at', v_run_at + (v_start ->> 'execution_timeout')::interval,
        'idempotency_key', v_start -> 'idempotency_key',
        'search', coalesce(v_start -> 'search', '{}'::jsonb), 'concurrency_key', v_key,
        'run_at', v_run_at, 'debounce', v_start -> 'debounce', 'id_reuse', v_start -> 'id_reuse',
        'traceparent', v_options -> 'traceparent'
    );
end
$$;

-- Starts the workflows of p_plans (_start_plan's, in order) and returns their ids in that
-- order. An id given twice is refused (22023 naming it) before anything changes. A start with
-- an idempotency key, a debounce or an id a row holds goes first through _start_check, in
-- order; every new run is then one INSERT per table for the whole batch, and each queue gets
-- one notification.
create or replace function _start_batch(p_plans jsonb[]) returns text[]
language plpgsql
-- Planned once, not at every call (a start's statements are all lookups by key or inserts):
-- a custom plan of the id lookup below, made while a statement starting thousands of
-- workflows grew the table past its statistics, read jobs_created whole for each start.
set plan_cache_mode = force_generic_plan
as $$
declare
    v_now timestamptz := _now();
    v_dup text;
    v_ids text[] := array(select p ->> 'id' from unnest(p_plans) as p);
    v_answered integer[] := '{}'::integer[];
    v_answer text;
    v_inserted text[];
    v_queues text[];
    v_queue text;
    v_special record;
    v_keyed boolean := false;
    v_taken text[];
begin
    -- The ids a run holds, read by one lookup of the batch's ids (not a subquery per plan:
    -- Citus cannot plan a correlated subquery over unnest). Under this function's generic
    -- plan (a single server), each a keyed probe (`offset 0`): `id = any(...)` was a seq scan
    -- when the statistics still saw an empty table, so 10,000 starts in one statement read
    -- 10,000 growing tables (2.7 ms a start at the end). On Citus (sql/97_citus.sql resets
    -- the plan mode: custom plans) `id = any(...)`, which it can push down and the lateral
    -- probe it cannot ("Offset clause is currently unsupported when a lateral subquery
    -- references a column from a table function").
    if current_setting('plan_cache_mode') = 'force_generic_plan' then
        v_taken := array(select j.id from unnest(v_ids) as i (id)
                          cross join lateral (select j.id from jobs as j
                                               where j.id = i.id offset 0) as j);
    else
        v_taken := array(select j.id from jobs as j where j.id = any(v_ids));
    end if;
    if cardinality(p_plans) > 1 then
        select p ->> 'id' into v_dup
          from unnest(p_plans) as p
         group by p ->> 'id' having count(*) > 1 limit 1;
        if found then
            raise exception using errcode = '22023',
                message = format('workflow id "%s" is given more than once in the batch; nothing '
                                 'was started', v_dup);
        end if;
    end if;
    for v_special in
        select p.plan, p.ord
          from unnest(p_plans) with ordinality as p (plan, ord)
         where p.plan ->> 'idempotency_key' is not null or p.plan ->> 'debounce' is not null
            or (p.plan ->> 'id') = any(v_taken)
         order by p.ord
    loop
        v_answer := _start_check(v_special.plan);
        if v_answer is not null then
            v_ids[v_special.ord] := v_answer;
            v_answered := v_answered || v_special.ord::integer;
        elsif v_special.plan ->> 'idempotency_key' is not null then
            v_keyed := true;
        end if;
    end loop;
    if v_keyed then
        -- The new runs take their keys in order. A key taken meanwhile (earlier in the batch, or
        -- by a start racing this one: the insert waits for it) answers the run that holds it.
        with taken as (
            insert into start_keys (idempotency_key, job_id)
            select plan ->> 'idempotency_key', plan ->> 'id'
              from unnest(p_plans) with ordinality as p (plan, ord)
             where p.ord <> all(v_answered) and plan ->> 'idempotency_key' is not null
             order by p.ord
            on conflict do nothing
            returning job_id
        )
        select array_agg(job_id) into v_inserted from taken;
        for v_special in
            select p.plan, p.ord
              from unnest(p_plans) with ordinality as p (plan, ord)
             where p.ord <> all(v_answered) and plan ->> 'idempotency_key' is not null
               and (p.plan ->> 'id') <> all(coalesce(v_inserted, '{}'))
        loop
            select job_id into strict v_answer from start_keys
             where idempotency_key = v_special.plan ->> 'idempotency_key';
            v_ids[v_special.ord] := v_answer;
            v_answered := v_answered || v_special.ord::integer;
        end loop;
    end if;
    with inserted as (
        insert into jobs (id, entity, workflow_name, task_queue, args, retry_policy, priority,
                          retention, created_at, updated_at, execution_timeout, timeout_at,
                          idempotency_key, search, concurrency_key, traceparent)
        select plan ->> 'id', plan ->> 'entity', plan ->> 'workflow_name', plan ->> 'task_queue',
               plan -> 'args', plan -> 'retry_policy', (plan ->> 'priority')::smallint,
               (plan ->> 'retention')::interval, v_now, v_now,
               (plan ->> 'execution_timeout')::interval, (plan ->> 'timeout_at')::timestamptz,
               plan ->> 'idempotency_key', plan -> 'search', plan ->> 'concurrency_key',
               plan ->> 'traceparent'
          from unnest(p_plans) with ordinality as p (plan, ord)
         where p.ord <> all(v_answered)
        on conflict do nothing
        returning id
    )
    select array_agg(id) into v_inserted from inserted;
    if coalesce(cardinality(v_inserted), 0) < cardinality(p_plans) - cardinality(v_answered) then
        -- A start racing this one took an id first (rare: read by array lookups).
        select p ->> 'id' into v_dup
          from unnest(p_plans) with ordinality as e (p, ord)
         where e.ord <> all(v_answered) and (p ->> 'id') <> all(coalesce(v_inserted, '{}'))
         order by e.ord limit 1;
        raise exception using errcode = 'HM001',
            message = format('Duplicate job: workflow id "%s" is already taken', v_dup);
    end if;
    -- A key's starts in one batch rank one after another, as one by one they would. Without
    -- keys (most batches) no rank is computed: the window sorted the whole batch.
    if exists (select from unnest(p_plans) as p where p ->> 'concurrency_key' is not null) then
        insert into tasks (job_id, thread, kind, name, task_queue, priority, run_at,
                           concurrency_key, key_rank)
        select plan ->> 'id', 'main', 'workflow', plan ->> 'workflow_name', plan ->> 'task_queue',
               (plan ->> 'priority')::smallint, (plan ->> 'run_at')::timestamptz,
               plan ->> 'concurrency_key',
               case when plan ->> 'concurrency_key' is not null then
                   _key_rank(plan ->> 'task_queue', plan ->> 'concurrency_key')
                   + row_number() over (partition by plan ->> 'task_queue',
                                                     plan ->> 'concurrency_key'
                                        order by ord) - 1
               end
          from unnest(p_plans) with ordinality as p (plan, ord)
         where p.ord <> all(v_answered);
    else
        insert into tasks (job_id, thread, kind, name, task_queue, priority, run_at)
        select plan ->> 'id', 'main', 'workflow', plan ->> 'workflow_name', plan ->> 'task_queue',
               (plan ->> 'priority')::smallint, (plan ->> 'run_at')::timestamptz
          from unnest(p_plans) with ordinality as p (plan, ord)
         where p.ord <> all(v_answered);
    end if;
    select array_agg(distinct p ->> 'task_queue') into v_queues
      from unnest(p_plans) with ordinality as e (p, ord)
     where e.ord <> all(v_answered) and (p ->> 'run_at')::timestamptz <= v_now;
    foreach v_queue in array coalesce(v_queues, '{}') loop
        perform _notify('q:' || v_queue);
    end loop;
    return v_ids;
end
$$;

-- A start of _start_batch that may need no new run: the run that holds its idempotency key,
-- or a pending run of its id that a debounce gives the new arguments and due time (the
-- answer: that run's id); otherwise null, its id free for the new run (an old run that held
-- it deleted per id_reuse: _reuse_id, which refuses with HM001).
create or replace function _start_check(p_plan jsonb) returns text
language plpgsql
as $$
declare
    v_existing jobs;
    v_held_by text;
begin
    -- A start that carries a key another run holds returns that run: nothing changes.
    if p_plan ->> 'idempotency_key' is not null then
        select job_id into v_held_by from start_keys
         where idempotency_key = p_plan ->> 'idempotency_key';
        if found then
            return v_held_by;
        end if;
    end if;
    select * into v_existing from jobs where id = p_plan ->> 'id' for update;
    if found then
        if p_plan ->> 'debounce' is not null
           and _debounce_start(v_existing, p_plan -> 'args', (p_plan ->> 'run_at')::timestamptz)
        then
            return v_existing.id;
        end if;
        perform _reuse_id(v_existing, p_plan ->> 'id_reuse', _now());
    end if;
    return null;
end
$$;

-- The start options of start_workflow's p_options, checked (22023 naming the option, before
-- anything changes) and normalised: {"execution_timeout": interval text, "id_reuse",
-- "idempotency_key", "debounce": interval text, "run_at": when the first activation is due,
-- "search"}. p_retention bounds the timeout; a debounce needs a chosen workflow id (its key).
-- Whether p_value is a W3C traceparent (version 00:
-- https://www.w3.org/TR/trace-context/#traceparent-header), with a trace id and a span id that
-- are not all zeros.
create or replace function _is_traceparent(p_value text) returns boolean
language sql immutable
as $$
    select p_value ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
           and p_value !~ '^00-0{32}-' and p_value !~ '-0{16}-[0-9a-f]{2}$'
$$;

-- A W3C traceparent (_is_traceparent) or null. Anything else is refused, so a trace id read
-- back is always one a tracer accepts.
create or replace function _check_traceparent(p_value jsonb) returns void
language plpgsql immutable
as $$
begin
    if p_value is null or jsonb_typeof(p_value) = 'null' then
        return;
    end if;
    if jsonb_typeof(p_value) <> 'string' or not _is_traceparent(p_value #>> '{}') then
        raise exception using errcode = '22023',
            message = format('traceparent must be a W3C trace context such as '
                             '"00-<32 hex trace id>-<16 hex span id>-<2 hex flags>", not %s',
                             left(p_value::text, 100));
    end if;
end
$$;

create or replace function _start_options(
    p_options jsonb, p_retention interval, p_workflow_id text, p_id_given boolean
) returns jsonb
language plpgsql stable
as $$
declare
    v_out jsonb := jsonb_build_object('id_reuse', coalesce(p_options ->> 'id_reuse', 'reject'));
    v_debounce interval;
    v_run_at timestamptz := _now();
begin
    if jsonb_typeof(p_options -> 'id_reuse') not in ('string', 'null')
       or (v_out ->> 'id_reuse') not in ('reject', 'allow_finished', 'terminate') then
        raise exception using errcode = '22023',
            message = format('id_reuse must be reject, allow_finished or terminate, not %s',
                             p_options -> 'id_reuse');
    end if;
    v_out := v_out || jsonb_strip_nulls(jsonb_build_object(
        'execution_timeout', _check_timeout('execution_timeout',
                                            p_options -> 'execution_timeout', p_retention)));
    if nullif(p_options -> 'idempotency_key', 'null') is not null then
        if jsonb_typeof(p_options -> 'idempotency_key') <> 'string'
           or p_options ->> 'idempotency_key' = '' then
            raise exception using errcode = '22023',
                message = format('idempotency_key must be a non-empty string, not %s',
                                 p_options -> 'idempotency_key');
        end if;
        perform _check_name('idempotency_key', p_options ->> 'idempotency_key');
        v_out := v_out || jsonb_build_object('idempotency_key',
                                             p_options ->> 'idempotency_key');
    end if;
    if nullif(p_options -> 'start_at', 'null') is not null
       and nullif(p_options -> 'start_in', 'null') is not null then
        raise exception using errcode = '22023',
            message = 'give start_at or start_in, not both';
    end if;
    if nullif(p_options -> 'start_at', 'null') is not null then
        begin
            v_run_at := (p_options ->> 'start_at')::timestamptz;
        exception when others then
            v_run_at := null;
        end;
        -- Bounded like start_in: a deadline counted from it must not overflow.
        if jsonb_typeof(p_options -> 'start_at') <> 'string' or v_run_at is null
           or not isfinite(v_run_at) or v_run_at > _now() + make_interval(secs => 1e10) then
            raise exception using errcode = '22023',
                message = format('start_at must be a timestamp with a time zone, at most 1e10 '
                                 'seconds ahead, not %s', p_options -> 'start_at');
        end if;
    end if;
    if nullif(p_options -> 'start_in', 'null') is not null then
        v_run_at := v_run_at + make_interval(secs => _check_seconds(
            'start_in', p_options -> 'start_in', 0, 1e10, 'from 0 to 1e10')::float8);
    end if;
    if nullif(p_options -> 'debounce', 'null') is not null then
        v_debounce := _check_timeout('debounce', p_options -> 'debounce', p_retention);
        if not p_id_given then
            raise exception using errcode = '22023',
                message = 'debounce needs a workflow id: starts with the same id collapse';
        end if;
        v_run_at := v_run_at + v_debounce;
        v_out := v_out || jsonb_build_object('debounce', v_debounce);
    end if;
    if nullif(p_options -> 'search', 'null') is not null then
        if jsonb_typeof(p_options -> 'search') <> 'object' then
            raise exception using errcode = '22023',
                message = format('search must be an object of {attribute: value}, not %s',
                                 jsonb_typeof(p_options -> 'search'));
        end if;
        v_out := v_out || jsonb_build_object('search', p_options -> 'search');
    end if;
    return v_out || jsonb_build_object('run_at', v_run_at);
end
$$;

-- A debounced start of a workflow that has not started yet (pending, its first activation
-- not claimed): the run takes the latest arguments and starts p_run_at instead. True when it
-- did; false when the run already started (the id is then reused, or not, per id_reuse).
create or replace function _debounce_start(p_job jobs, p_args jsonb, p_run_at timestamptz)
returns boolean
language plpgsql
as $$
begin
    if p_job.status <> 'pending' then
        return false;
    end if;
    update tasks
       set run_at = p_run_at
     where job_id = p_job.id and thread = 'main' and kind = 'workflow' and state = 'ready';
    if not found then
        return false;
    end if;
    update jobs
       set args = coalesce(p_args, '[]'::jsonb), updated_at = _now(),
           timeout_at = _after(p_run_at, execution_timeout)
     where id = p_job.id;
    return true;
end
$$;

-- Frees the id of p_job (its row locked) for a new run, as p_policy allows: reject (the
-- default) refuses with HM001; allow_finished deletes a finished run; terminate also cancels
-- a running one (and its children) first. A finished run whose retention ran out never holds
-- its id.
create or replace function _reuse_id(p_job jobs, p_policy text, p_now timestamptz)
returns void
language plpgsql
as $$
declare
    v_finished boolean := p_job.status in ('completed', 'failed', 'cancelled');
begin
    if not v_finished and p_policy = 'terminate' then
        perform cancel_workflow(p_job.id, format('workflow "%s" terminated: a new run took its '
                                                 'id (id_reuse terminate)', p_job.id), true);
        v_finished := true;
    elsif not (v_finished and (p_policy <> 'reject' or coalesce(p_job.expire_at <= p_now, false)))
    then
        raise exception using errcode = 'HM001',
            message = format('Duplicate job: workflow id "%s" is already taken (status %s)',
                             p_job.id, p_job.status);
    end if;
    perform _delete_jobs(array[p_job.id]);
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
