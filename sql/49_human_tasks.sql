-- Human tasks (docs/people.md): a person's part in a workflow. `workflow.ask_human(...)` calls
-- ask_human, which registers a signal wait and writes the task's row in the same transaction;
-- any application (a review screen, a ticketing system, psql) lists, claims, comments and
-- resolves tasks with the functions below, and resolve_human_task completes the wait with the
-- answer and closes the task in one transaction. At due_at a claim expires the task (the wait
-- fails with 596, like a wait_for timeout) or escalates it to another role.
--
-- State machine (_legal_transitions, machine 'human_task'):
--   open -> claimed -> resolved | expired | cancelled; claimed -> open (release, reassign,
--   escalation); open -> open (reassign, escalation); open -> resolved | expired | cancelled.
-- Every move but the cancellations goes through _move_human_task; _cancel_human_tasks cancels
-- the tasks of workflows that ended. Lock order, as everywhere: the thread's activation task,
-- then the job row, then the human task. The claim path (_fire_human_tasks) never waits for a
-- lock: what a caller holds is skipped and fired by a later claim.

-- A person's name in a call (who claims, resolves, comments): required, at most 255 characters.
create or replace function _check_who(p_what text, p_who text) returns void
language plpgsql immutable
as $$
begin
    if coalesce(p_who, '') = '' then
        raise exception using errcode = '22023', message = format('%s is required', p_what);
    end if;
    perform _check_name(p_what, p_who);
end
$$;

-- Checks that p_schema is a JSON schema in the subset resolve_human_task checks answers with
-- (docs/people.md): type, required, properties, enum, items, additionalProperties, and the
-- annotations title, description and default. Anything else is refused, so a form never
-- promises a check that is not made.
create or replace function _check_form(p_schema jsonb, p_at text default '$') returns void
language plpgsql immutable
as $$
declare
    v_key text;
    v_value jsonb;
    v_types text[] := array['object', 'array', 'string', 'number', 'integer', 'boolean', 'null'];
begin
    if jsonb_typeof(p_schema) is distinct from 'object' then
        raise exception using errcode = '22023',
            message = format('form: the schema at %s must be a JSON object, not %s', p_at,
                             coalesce(jsonb_typeof(p_schema), 'null'));
    end if;
    for v_key, v_value in select e.key, e.value from jsonb_each(p_schema) as e loop
        case v_key
            when 'type' then
                if not (jsonb_typeof(v_value) = 'string' and v_value #>> '{}' = any(v_types)
                        or jsonb_typeof(v_value) = 'array' and jsonb_array_length(v_value) > 0
                           and not exists (select from jsonb_array_elements(v_value) as t (v)
                                            where jsonb_typeof(t.v) <> 'string'
                                               or t.v #>> '{}' <> all(v_types))) then
                    raise exception using errcode = '22023',
                        message = format('form: "type" at %s must be one of %s (or a list of '
                                         'them), not %s', p_at, array_to_string(v_types, ', '),
                                         v_value);
                end if;
            when 'required' then
                if jsonb_typeof(v_value) <> 'array'
                   or exists (select from jsonb_array_elements(v_value) as r (v)
                               where jsonb_typeof(r.v) <> 'string') then
                    raise exception using errcode = '22023',
                        message = format('form: "required" at %s must be a list of field '
                                         'names, not %s', p_at, v_value);
                end if;
            when 'properties' then
                if jsonb_typeof(v_value) <> 'object' then
                    raise exception using errcode = '22023',
                        message = format('form: "properties" at %s must be an object of '
                                         'schemas, not %s', p_at, v_value);
                end if;
                perform _check_form(p.value, p_at || '.' || p.key)
                   from jsonb_each(v_value) as p;
            when 'items' then
                perform _check_form(v_value, p_at || '[]');
            when 'enum' then
                if jsonb_typeof(v_value) <> 'array' or jsonb_array_length(v_value) = 0 then
                    raise exception using errcode = '22023',
                        message = format('form: "enum" at %s must be a non-empty list, not %s',
                                         p_at, v_value);
                end if;
            when 'additionalProperties' then
                if jsonb_typeof(v_value) <> 'boolean' then
                    raise exception using errcode = '22023',
                        message = format('form: "additionalProperties" at %s must be true or '
                                         'false (schemas are not supported), not %s', p_at,
                                         v_value);
                end if;
            when 'title', 'description', 'default', '$schema' then
                null;
            else
                raise exception using errcode = '22023',
                    message = format('form: keyword "%s" at %s is not supported (supported: '
                                     'type, required, properties, enum, items, '
                                     'additionalProperties, title, description, default)',
                                     v_key, p_at);
        end case;
    end loop;
end
$$;

-- The first way p_value fails p_schema (a schema _check_form accepted), as a message naming
-- the place (`$.amount`); null when it matches.
create or replace function _form_error(p_schema jsonb, p_value jsonb, p_at text default '$')
returns text
language plpgsql immutable
as $$
declare
    v_type text := jsonb_typeof(p_value);
    v_types jsonb := p_schema -> 'type';
    v_error text;
    v_key text;
    v_sub jsonb;
begin
    if v_types is not null then
        if jsonb_typeof(v_types) = 'string' then
            v_types := jsonb_build_array(v_types);
        end if;
        if not (v_types ? v_type
                or v_type = 'number' and v_types ? 'integer' and p_value::numeric % 1 = 0) then
            return format('%s must be %s, not %s', p_at,
                          (select string_agg(t.v, ' or ')
                             from jsonb_array_elements_text(v_types) as t (v)),
                          v_type);
        end if;
    end if;
    if p_schema ? 'enum' and not exists (select from jsonb_array_elements(p_schema -> 'enum') as e (v)
                                           where e.v = p_value) then
        return format('%s must be one of %s, not %s', p_at, p_schema -> 'enum', p_value);
    end if;
    if v_type = 'object' then
        select format('%s is missing the required field "%s"', p_at, r.v) into v_error
          from jsonb_array_elements_text(coalesce(p_schema -> 'required', '[]')) as r (v)
         where not p_value ? r.v
         limit 1;
        if v_error is not null then
            return v_error;
        end if;
        for v_key, v_sub in
            select p.key, p.value from jsonb_each(coalesce(p_schema -> 'properties', '{}')) as p
             order by p.key
        loop
            if p_value ? v_key then
                v_error := _form_error(v_sub, p_value -> v_key, p_at || '.' || v_key);
                if v_error is not null then
                    return v_error;
                end if;
            end if;
        end loop;
        if p_schema -> 'additionalProperties' = 'false' then
            select format('%s.%s is not a field of the form', p_at, k.k) into v_error
              from jsonb_object_keys(p_value) as k (k)
             where not coalesce(p_schema -> 'properties', '{}') ? k.k
             order by k.k
             limit 1;
            return v_error;
        end if;
    elsif v_type = 'array' and p_schema ? 'items' then
        for v_i in 0 .. jsonb_array_length(p_value) - 1 loop
            v_error := _form_error(p_schema -> 'items', p_value -> v_i, format('%s[%s]', p_at, v_i));
            if v_error is not null then
                return v_error;
            end if;
        end loop;
    end if;
    return null;
end
$$;

-- Its durations are checked by _check_seconds (sql/10_core.sql), as every other one.
drop function if exists _human_seconds(text, jsonb);

-- Checks what workflow.ask_human asks for and fills in the defaults: {role, title,
-- description, type, priority, metadata, assignee, due, form, escalate_to, escalate_due}.
create or replace function _human_request(p_request jsonb) returns jsonb
language plpgsql immutable
as $$
declare
    v_unknown text;
    v_role text := p_request ->> 'role';
    v_title text := p_request ->> 'title';
    v_priority jsonb := coalesce(p_request -> 'priority', '0');
    v_due numeric;
    v_escalate_due numeric;
begin
    if jsonb_typeof(p_request) is distinct from 'object' then
        raise exception using errcode = '22023',
            message = format('a human task request must be a JSON object, not %s',
                             coalesce(p_request::text, 'null'));
    end if;
    select string_agg(k.k, ', ' order by k.k) into v_unknown
      from jsonb_object_keys(p_request) as k (k)
     where k.k not in ('role', 'title', 'description', 'type', 'priority', 'metadata',
                       'assignee', 'due', 'form', 'escalate_to', 'escalate_due');
    if v_unknown is not null then
        raise exception using errcode = '22023',
            message = format('unknown human task field(s): %s', v_unknown);
    end if;
    perform _check_who('human task role', v_role);
    perform _check_who('human task title', v_title);
    perform _check_name('human task type', p_request ->> 'type');
    perform _check_name('human task assignee', p_request ->> 'assignee');
    perform _check_name('human task escalate_to', p_request ->> 'escalate_to');
    perform _check_value('human task description', p_request -> 'description');
    if jsonb_typeof(v_priority) <> 'number' or (v_priority #>> '{}')::numeric % 1 <> 0
       or (v_priority #>> '{}')::numeric not between -2147483648 and 2147483647 then
        raise exception using errcode = '22023',
            message = format('human task priority must be an integer, not %s', v_priority);
    end if;
    if p_request ? 'metadata' and p_request -> 'metadata' <> 'null'
       and jsonb_typeof(p_request -> 'metadata') <> 'object' then
        raise exception using errcode = '22023',
            message = format('human task metadata must be a JSON object, not %s',
                             p_request -> 'metadata');
    end if;
    perform _check_value('human task metadata', p_request -> 'metadata');
    if p_request -> 'form' is not null and p_request -> 'form' <> 'null' then
        perform _check_value('human task form', p_request -> 'form');
        perform _check_form(p_request -> 'form');
    end if;
    v_due := _check_seconds('human task due', p_request -> 'due', 0, 1e10,
                            'more than 0 (a due time in the future) and at most 1e10', true);
    v_escalate_due := _check_seconds('human task escalate_due', p_request -> 'escalate_due', 0,
                                     1e10, 'more than 0 (a due time in the future) and at most '
                                     '1e10', true);
    if p_request ->> 'escalate_to' is not null and v_due is null then
        raise exception using errcode = '22023',
            message = 'human task escalate_to needs a due time (escalation happens at due)';
    end if;
    return jsonb_build_object(
        'role', v_role, 'title', v_title, 'description', p_request ->> 'description',
        'type', coalesce(p_request ->> 'type', 'approval'), 'priority', v_priority,
        'metadata', coalesce(nullif(p_request -> 'metadata', 'null'), '{}'),
        'assignee', p_request ->> 'assignee', 'due', v_due,
        'form', nullif(p_request -> 'form', 'null'), 'escalate_to', p_request ->> 'escalate_to',
        'escalate_due', coalesce(v_escalate_due, v_due));
end
$$;

-- Tells listeners of the app's channel (the dashboard) that a human task changed.
create or replace function _notify_human_task(p_task human_tasks) returns void
language sql volatile
as $$
    select _notify('h:' || jsonb_build_object('id', p_task.id, 'workflow_id', p_task.job_id,
                                              'status', p_task.status,
                                              'role', p_task.role)::text)
$$;

-- The human task state machine: every move but a cancellation. p_task is the locked row with
-- the caller's changes (role, assignee, due, claim, answer); it is written with status p_to
-- when the table allows the move from the stored status (HM003 otherwise), and p_event (with
-- the time and p_who) is appended to its events.
create or replace function _move_human_task(
    p_task human_tasks, p_to text, p_who text, p_event jsonb
) returns human_tasks
language plpgsql
as $$
declare
    v_from text;
    v_task human_tasks;
begin
    select status into v_from from human_tasks where job_id = p_task.job_id and id = p_task.id;
    perform _check_transition('human_task', format('human task %s', p_task.id), v_from, p_to,
                              '_move_human_task');
    update human_tasks
       set role = p_task.role, assignee = p_task.assignee, due_at = p_task.due_at,
           escalate_to = p_task.escalate_to, status = p_to, claimed_by = p_task.claimed_by,
           claimed_at = p_task.claimed_at, resolved_by = p_task.resolved_by,
           resolved_at = p_task.resolved_at, answer = p_task.answer,
           events = events || jsonb_build_array(
               jsonb_build_object('at', _now(), 'who', p_who) || p_event)
     where job_id = p_task.job_id and id = p_task.id
    returning * into v_task;
    perform _notify_human_task(v_task);
    return v_task;
end
$$;

-- The live tasks of workflows that ended become cancelled (with p_thread: those of that hook
-- thread, which timed out). A task that a caller's open transaction holds is skipped when
-- p_skip_locked (a worker ending its workflow never waits for a reviewer): resolving it
-- later is refused, as its workflow has ended.
drop function if exists _cancel_human_tasks(text[], boolean);
create or replace function _cancel_human_tasks(
    p_job_ids text[], p_skip_locked boolean, p_thread text default null
) returns void
language plpgsql
as $$
declare
    v_task human_tasks;
begin
    for v_task in
        update human_tasks as h
           set status = 'cancelled', resolved_by = 'engine', resolved_at = _now(),
               events = h.events || jsonb_build_array(jsonb_build_object(
                   'at', _now(), 'who', 'engine', 'event', 'cancelled',
                   'text', case when p_thread is null then 'the workflow ended'
                                else format('hook %s timed out', p_thread) end))
         where (h.job_id, h.id) in (
                   select l.job_id, l.id from human_tasks as l
                    where l.job_id = any(p_job_ids) and l.status in ('open', 'claimed')
                      and l.thread = coalesce(p_thread, l.thread)
                      and (not p_skip_locked
                           or exists (select 1 from human_tasks as f
                                       where f.job_id = l.job_id and f.id = l.id
                                         for update skip locked)))
           and h.status in (select t.from_state from _legal_transitions() as t
                             where t.machine = 'human_task' and t.to_state = 'cancelled'
                               and t.owner = '_cancel_human_tasks')
        returning h.*
    loop
        perform _notify_human_task(v_task);
    end loop;
end
$$;

-- A workflow thread asks a person: registers the signal wait p_signal_id (wait_signal, no
-- timeout: the task's due time is its SLA) and, once the wait is registered, writes the task's
-- row in the same transaction (once: a replay finds it). A wait deferred by a signal being
-- kept (`retrying`) writes no task yet: when it runs again it takes that signal (and nobody is
-- asked) or registers. Returns the wait's step.
create or replace function ask_human(
    p_task_id bigint, p_token uuid, p_seq integer, p_signal_id text, p_request jsonb
) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_task tasks := _activation_task(p_task_id, p_token);
    v_request jsonb := _human_request(p_request);
    v_step jsonb;
    v_row human_tasks;
    v_now timestamptz := _now();
begin
    v_step := wait_signal(p_task_id, p_token, p_seq, p_signal_id, null);
    if v_step ->> 'status' = 'scheduled' then
        insert into human_tasks (
            job_id, thread, seq, signal_id, role, assignee, type, priority, title,
            description, metadata, form, due_at, escalate_to, escalate_after, created_at,
            events
        )
        values (
            v_task.job_id, v_task.thread, p_seq, p_signal_id, v_request ->> 'role',
            v_request ->> 'assignee', v_request ->> 'type', (v_request ->> 'priority')::integer,
            v_request ->> 'title', v_request ->> 'description', v_request -> 'metadata',
            v_request -> 'form',
            v_now + make_interval(secs => (v_request ->> 'due')::float8),
            v_request ->> 'escalate_to',
            case when v_request ->> 'escalate_to' is not null
                 then make_interval(secs => (v_request ->> 'escalate_due')::float8) end,
            v_now,
            jsonb_build_array(jsonb_build_object('at', v_now, 'who', v_task.job_id,
                                                 'event', 'created'))
        )
        -- By its columns, not its name: a per-shard engine inserts through a view (no
        -- constraint of that name), whose shard has the unique index (hotmesh/_citus.py).
        on conflict (job_id, thread, seq) do nothing
        returning * into v_row;
        if found then
            -- Its roles are known from now on (human_roles, _check_human_role).
            insert into human_roles (role, first_asked_at)
            select r.role, v_now
              from unnest(array[v_row.role, v_row.escalate_to]) as r (role)
             where r.role is not null
               and not exists (select 1 from human_roles as k where k.role = r.role)
            on conflict do nothing;
            perform _notify_human_task(v_row);
        end if;
    end if;
    return v_step;
end
$$;

-- A signal filled the wait of a live human task (signal() to its signal id, another
-- workflow's send, a hook's result): the task is resolved in the same transaction, with the
-- payload as its answer (null when the signal carried an error, kept in the event) and the
-- sender (null when unknown) as who resolved it. The form is not checked: a signal is never
-- refused by the wait it fills (docs/people.md). Called by _fill_wait, which holds the wait's
-- thread and job: the lock order of resolve_human_task.
create or replace function _signal_human_task(
    p_wait steps, p_payload jsonb, p_error jsonb, p_sender text
) returns void
language plpgsql
as $$
declare
    v_task human_tasks;
begin
    select * into v_task
      from human_tasks
     where job_id = p_wait.job_id and thread = p_wait.thread and seq = p_wait.seq
       for update;
    if v_task.status in ('open', 'claimed') then
        v_task.resolved_by := p_sender;
        v_task.resolved_at := _now();
        v_task.answer := case when p_error is null then p_payload end;
        perform _move_human_task(v_task, 'resolved', p_sender, jsonb_build_object(
            'event', 'resolved', 'signal_id', p_wait.name)
            || case when p_error is not null then jsonb_build_object('error', p_error)
                    else '{}' end);
    end if;
end
$$;

-- The task roles the calling database role may work, or null when it is not restricted
-- (reviewer_roles, set_reviewer_roles): those of the role the session has set (`set role`, as
-- PostgREST does from a token), else those of its login. Read from the session, which a
-- security-definer function does not change; a restricted login that sets an unlisted role
-- (its <app>_reviewer) stays restricted.
create or replace function _reviewer_scope() returns text[]
language sql stable
as $$
    select coalesce(
        (select array_agg(r.task_role order by r.task_role) from reviewer_roles as r
          where r.db_role = nullif(current_setting('role'), 'none')),
        (select array_agg(r.task_role order by r.task_role) from reviewer_roles as r
          where r.db_role = session_user::text))
$$;

-- Refuses (42501) a task role the caller may not work; p_what names the call or task.
create or replace function _check_scope(p_role text, p_what text) returns void
language plpgsql stable
as $$
declare
    v_scope text[] := _reviewer_scope();
begin
    if v_scope is not null and not p_role = any(v_scope) then
        raise exception using errcode = '42501',
            message = format('%s: database role %s may work the human tasks of %s only, not '
                             'of role %s', p_what,
                             coalesce(nullif(current_setting('role'), 'none'), session_user),
                             array_to_string(v_scope, ', '), p_role);
    end if;
end
$$;

-- Restricts database role p_db_role (a review screen's login, a role PostgREST sets) to the
-- human tasks of p_task_roles: list_human_tasks shows it only those, and the other calls
-- refuse it any other (42501). Null or empty: not restricted any more. The schema owner's
-- call (like set_setting). Returns the roles it may work now (none: not restricted).
create or replace function set_reviewer_roles(p_db_role text, p_task_roles text[])
returns setof text
language plpgsql
set search_path from current
as $$
declare
    v_role text;
begin
    if not exists (select from pg_roles where rolname = p_db_role) then
        raise exception using errcode = '22023',
            message = format('database role "%s" does not exist', p_db_role);
    end if;
    foreach v_role in array coalesce(p_task_roles, '{}') loop
        perform _check_who('a task role', v_role);
    end loop;
    delete from reviewer_roles where db_role = p_db_role;
    insert into reviewer_roles (db_role, task_role)
    select distinct p_db_role, r.role from unnest(p_task_roles) as r (role);
    return query
    select r.task_role from reviewer_roles as r where r.db_role = p_db_role
     order by r.task_role;
end
$$;

-- The task with id p_id (HM005 when there is none), locked when p_lock; 42501 when the caller
-- may not work its role (_check_scope).
create or replace function _human_task(p_id bigint, p_lock boolean) returns human_tasks
language plpgsql
as $$
declare
    v_task human_tasks;
begin
    if p_id is null then
        raise exception using errcode = '22023', message = 'human task id is required';
    end if;
    if p_lock then
        select * into v_task from human_tasks where id = p_id for update;
    else
        select * into v_task from human_tasks where id = p_id;
    end if;
    if not found then
        raise exception using errcode = 'HM005',
            message = format('human task %s not found', p_id);
    end if;
    perform _check_scope(v_task.role, format('human task %s', p_id));
    return v_task;
end
$$;

-- One human task, for a review screen.
create or replace function get_human_task(p_id bigint) returns human_tasks
language plpgsql stable
set search_path from current
as $$
declare
    v_task human_tasks;
begin
    if p_id is null then
        raise exception using errcode = '22023', message = 'human task id is required';
    end if;
    select * into v_task from human_tasks where id = p_id;
    if not found then
        raise exception using errcode = 'HM005',
            message = format('human task %s not found', p_id);
    end if;
    perform _check_scope(v_task.role, format('human task %s', p_id));
    return v_task;
end
$$;

-- The inbox: human tasks by role, assignee (assigned to or claimed by), status (null: open
-- and claimed), type and metadata (containment: '{"region": "eu"}'), most urgent first
-- (priority, higher first; then due time, none last; then id); at most max_rows (1 to 1000).
-- after (a task id from the previous page) continues after that task. The parameters have
-- plain names, for calls like list_human_tasks(role => 'approver', metadata => '{...}').
-- A caller restricted to some roles (set_reviewer_roles) sees only their tasks.
create or replace function list_human_tasks(
    role text default null,
    assignee text default null,
    status text default null,
    type text default null,
    metadata jsonb default null,
    max_rows integer default 50,
    after bigint default null
) returns setof human_tasks
language plpgsql stable
set search_path from current
as $$
declare
    v_after human_tasks;
    v_status text := list_human_tasks.status;
    v_metadata jsonb := list_human_tasks.metadata;
    v_scope text[] := _reviewer_scope();
begin
    if v_status is not null
       and v_status not in ('open', 'claimed', 'resolved', 'expired', 'cancelled') then
        raise exception using errcode = '22023',
            message = format('unknown human task status "%s" (open, claimed, resolved, expired, '
                             'cancelled; null: open and claimed)', v_status);
    end if;
    if v_metadata is not null and jsonb_typeof(v_metadata) <> 'object' then
        raise exception using errcode = '22023',
            message = format('the metadata filter must be a JSON object, not %s', v_metadata);
    end if;
    if max_rows is null or max_rows not between 1 and 1000 then
        raise exception using errcode = '22023',
            message = format('max_rows must be from 1 to 1000, not %s',
                             coalesce(max_rows::text, 'null'));
    end if;
    if list_human_tasks.after is not null then
        select * into v_after from human_tasks as a where a.id = list_human_tasks.after;
        if not found then
            raise exception using errcode = 'HM005',
                message = format('human task %s not found (the "after" of the page)',
                                 list_human_tasks.after);
        end if;
    end if;
    return query
    select h.*
      from human_tasks as h
     where (v_status is null and h.status in ('open', 'claimed') or h.status = v_status)
       and (list_human_tasks.role is null or h.role = list_human_tasks.role)
       and (list_human_tasks.assignee is null or h.assignee = list_human_tasks.assignee
            or h.claimed_by = list_human_tasks.assignee)
       and (list_human_tasks.type is null or h.type = list_human_tasks.type)
       and (v_metadata is null or h.metadata @> v_metadata)
       and (v_scope is null or h.role = any(v_scope))
       and (v_after.id is null
            or (-h.priority, coalesce(h.due_at, 'infinity'::timestamptz), h.id)
               > (-v_after.priority, coalesce(v_after.due_at, 'infinity'::timestamptz),
                  v_after.id))
     order by h.priority desc, coalesce(h.due_at, 'infinity'::timestamptz), h.id
     limit max_rows;
end
$$;

-- Refuses a role no task was ever asked of (22023, naming some known ones): a reviewer
-- claiming the next task of a misspelt role would otherwise wait for ever. A role is known
-- once a workflow asked a task of it, as its role or escalate_to (human_roles, written by
-- ask_human only, so no caller's transaction holds an insert a worker would wait for), and
-- while a live task has it (reassigned to it).
create or replace function _check_human_role(p_role text) returns void
language plpgsql stable
as $$
begin
    if not exists (select 1 from human_roles where role = p_role)
       and not exists (select 1 from human_tasks
                        where role = p_role and status in ('open', 'claimed')) then
        raise exception using errcode = '22023',
            message = format('unknown human task role "%s": no task was ever asked of it '
                             '(known roles: %s)', p_role,
                             coalesce((select string_agg(k.role, ', ' order by k.role)
                                         from (select role from human_roles order by role
                                               limit 10) as k), 'none yet'));
    end if;
end
$$;

-- Refuses a person the task is assigned to someone else (reassign it first).
create or replace function _check_assignee(p_task human_tasks, p_who text, p_what text)
returns void
language plpgsql immutable
as $$
begin
    if p_task.assignee is not null and p_task.assignee <> p_who then
        raise exception using errcode = 'HM003',
            message = format('human task %s is assigned to %s; %s cannot %s it', p_task.id,
                             p_task.assignee, p_who, p_what);
    end if;
    if p_task.status = 'claimed' and p_task.claimed_by <> p_who then
        raise exception using errcode = 'HM003',
            message = format('human task %s is claimed by %s; %s cannot %s it', p_task.id,
                             p_task.claimed_by, p_who, p_what);
    end if;
end
$$;

-- p_who takes an open task (claimed -> claimed by the same person again is a no-op).
create or replace function _claim_human_task(p_task human_tasks, p_who text)
returns human_tasks
language plpgsql
as $$
declare
    v_task human_tasks := p_task;
begin
    if v_task.status = 'claimed' and v_task.claimed_by = p_who then
        return v_task;
    end if;
    if v_task.status <> 'open' then
        perform _check_assignee(v_task, p_who, 'claim');
        perform _check_transition('human_task', format('human task %s', v_task.id),
                                  v_task.status, 'claimed');
    end if;
    perform _check_assignee(v_task, p_who, 'claim');
    v_task.claimed_by := p_who;
    v_task.claimed_at := _now();
    return _move_human_task(v_task, 'claimed', p_who, '{"event": "claimed"}');
end
$$;

-- A person claims a task: nobody else may resolve it until they release it (or it is
-- reassigned). Claiming one's own claimed task again changes nothing.
create or replace function claim_human_task(p_id bigint, p_who text) returns human_tasks
language plpgsql
set search_path from current
as $$
begin
    perform _check_who('who', p_who);
    return _claim_human_task(_human_task(p_id, true), p_who);
end
$$;

-- A person claims the most urgent open task of a role (assigned to nobody or to them). SKIP
-- LOCKED: two reviewers asking at once get two different tasks. No row when none is open; a
-- role no task was ever asked of is refused (22023).
create or replace function claim_next_human_task(p_role text, p_who text)
returns setof human_tasks
language plpgsql
set search_path from current
as $$
declare
    v_task human_tasks;
begin
    perform _check_who('role', p_role);
    perform _check_who('who', p_who);
    perform _check_scope(p_role, 'claim_next_human_task');
    select * into v_task
      from human_tasks as h
     where h.role = p_role and h.status = 'open'
       and (h.assignee is null or h.assignee = p_who)
     order by h.priority desc, coalesce(h.due_at, 'infinity'::timestamptz), h.id
     limit 1
       for update skip locked;
    if found then
        return next _claim_human_task(v_task, p_who);
    else
        perform _check_human_role(p_role);
    end if;
end
$$;

-- The person who claimed a task gives it back: it is open again for its role.
create or replace function release_human_task(p_id bigint, p_who text) returns human_tasks
language plpgsql
set search_path from current
as $$
declare
    v_task human_tasks;
begin
    perform _check_who('who', p_who);
    v_task := _human_task(p_id, true);
    if v_task.status <> 'claimed' then
        raise exception using errcode = 'HM003',
            message = format('human task %s is %s; only a claimed task can be released',
                             p_id, v_task.status);
    end if;
    if v_task.claimed_by <> p_who then
        raise exception using errcode = 'HM003',
            message = format('human task %s is claimed by %s; %s cannot release it', p_id,
                             v_task.claimed_by, p_who);
    end if;
    v_task.claimed_by := null;
    v_task.claimed_at := null;
    return _move_human_task(v_task, 'open', p_who, '{"event": "released"}');
end
$$;

-- Assigns a live task to p_assignee (null: to anyone with the role) and, with p_role, to
-- another role (any: a person may route a task to a new one); a claim on it ends (it is open
-- again).
create or replace function reassign_human_task(
    p_id bigint, p_who text, p_assignee text, p_role text default null
) returns human_tasks
language plpgsql
set search_path from current
as $$
declare
    v_task human_tasks;
begin
    perform _check_who('who', p_who);
    perform _check_name('assignee', p_assignee);
    if p_role = '' then
        raise exception using errcode = '22023', message = 'role must not be empty';
    end if;
    perform _check_name('role', p_role);
    if p_role is not null then
        perform _check_scope(p_role, format('reassign human task %s', p_id));
    end if;
    v_task := _human_task(p_id, true);
    v_task.assignee := nullif(p_assignee, '');
    v_task.role := coalesce(p_role, v_task.role);
    v_task.claimed_by := null;
    v_task.claimed_at := null;
    return _move_human_task(v_task, 'open', p_who, jsonb_build_object(
        'event', 'reassigned', 'assignee', v_task.assignee, 'role', v_task.role));
end
$$;

-- Appends a comment to a task's events (any status: a note after the decision is kept too).
create or replace function comment_human_task(p_id bigint, p_who text, p_text text)
returns human_tasks
language plpgsql
set search_path from current
as $$
declare
    v_task human_tasks;
begin
    perform _check_who('who', p_who);
    if coalesce(p_text, '') = '' then
        raise exception using errcode = '22023', message = 'a comment needs some text';
    end if;
    perform _check_value('the comment', to_jsonb(p_text));
    v_task := _human_task(p_id, true);
    update human_tasks
       set events = events || jsonb_build_array(jsonb_build_object(
               'at', _now(), 'who', p_who, 'event', 'comment', 'text', p_text))
     where job_id = v_task.job_id and id = v_task.id
    returning * into v_task;
    perform _notify_human_task(v_task);
    return v_task;
end
$$;

-- Answers a task: p_answer is checked against the task's form, delivered to the waiting
-- workflow (its wait completes with p_answer and its thread wakes) and the task is closed, in
-- one transaction, once. A task that is closed, claimed by someone else or assigned to someone
-- else is refused with HM003 and nothing changes; so is a task whose wait already ended.
create or replace function resolve_human_task(p_id bigint, p_who text, p_answer jsonb)
returns human_tasks
language plpgsql
set search_path from current
as $$
declare
    v_task human_tasks;
    v_error text;
    v_answer jsonb := coalesce(p_answer, 'null');
begin
    perform _check_who('who', p_who);
    perform _check_value('the answer', v_answer);
    v_task := _human_task(p_id, false);
    -- The lock order of signal deliveries and cancel_workflow: the thread's activation task,
    -- the job, then this task's row (read again: it may have moved while we waited).
    perform from tasks
     where job_id = v_task.job_id and thread = v_task.thread and kind = 'workflow'
       for update;
    perform from jobs where id = v_task.job_id for key share;
    v_task := _human_task(p_id, true);
    if v_task.status in ('resolved', 'expired', 'cancelled') then
        perform _check_transition('human_task', format('human task %s', p_id), v_task.status,
                                  'resolved');
    end if;
    perform _check_assignee(v_task, p_who, 'resolve');
    if v_task.form is not null then
        v_error := _form_error(v_task.form, v_answer);
        if v_error is not null then
            raise exception using errcode = '22023',
                message = format('the answer to human task %s does not match its form: %s',
                                 p_id, v_error);
        end if;
    end if;
    if (_move_step(v_task.job_id, v_task.thread, v_task.seq, 'completed', v_answer, null,
                   null, null, false)).job_id is null then
        raise exception using errcode = 'HM003',
            message = format('human task %s: workflow "%s" no longer waits for it (it ended, '
                             'or signal "%s" answered the wait)', p_id, v_task.job_id,
                             v_task.signal_id);
    end if;
    perform _wake(v_task.job_id, v_task.thread);
    v_task.resolved_by := p_who;
    v_task.resolved_at := _now();
    v_task.answer := v_answer;
    return _move_human_task(v_task, 'resolved', p_who, '{"event": "resolved"}');
end
$$;

-- Due human tasks, fired by claim_tasks (after _fire_timeouts): one with escalate_to is opened
-- again for that role, due escalate_after later; the others expire, and their wait
-- fails with 596 (TimeoutFailure, "timeout": "due"), as a wait_for timeout does. Nothing here
-- waits for a lock: a task, thread, job or step a caller holds is left for a later claim.
create or replace function _fire_human_tasks(p_now timestamptz) returns void
language plpgsql
as $$
declare
    v_task human_tasks;
    v_role text;
begin
    for v_task in
        select * from human_tasks
         where due_at <= p_now and status in ('open', 'claimed')
         order by due_at
         limit 100
           for update skip locked
    loop
        if v_task.escalate_to is not null then
            v_role := v_task.role;
            v_task.role := v_task.escalate_to;
            v_task.escalate_to := null;
            v_task.assignee := null;
            v_task.claimed_by := null;
            v_task.claimed_at := null;
            v_task.due_at := p_now + v_task.escalate_after;
            perform _move_human_task(v_task, 'open', 'engine', jsonb_build_object(
                'event', 'escalated', 'from', v_role, 'to', v_task.role));
            continue;
        end if;
        begin
            perform from tasks
             where job_id = v_task.job_id and thread = v_task.thread and kind = 'workflow'
               for update nowait;
            perform from jobs where id = v_task.job_id for key share nowait;
            perform from steps
             where job_id = v_task.job_id and thread = v_task.thread and seq = v_task.seq
               for update nowait;
            if (_move_step(v_task.job_id, v_task.thread, v_task.seq, 'failed', null,
                           jsonb_build_object(
                               'message', format('human task %s "%s" (role %s) was not resolved '
                                                 'by its due time', v_task.id, v_task.title,
                                                 v_task.role),
                               'type', 'TimeoutFailure', 'code', 596, 'timeout', 'due',
                               'human_task_id', v_task.id),
                           null, null, false)).job_id is not null then
                perform _wake(v_task.job_id, v_task.thread);
            end if;
            v_task.resolved_by := 'engine';
            v_task.resolved_at := p_now;
            perform _move_human_task(v_task, 'expired', 'engine', '{"event": "expired"}');
        exception when lock_not_available then
            null;  -- held by a caller's open transaction: a later claim fires it
        end;
    end loop;
end
$$;
