-- The entity: the JSON document in jobs.context that a workflow, its hooks, other applications
-- and people share. One pure function (_entity_apply) defines what every operation does; the
-- workflow side (entity_step) and the SQL API (entity_<operation>) both apply it under the job's
-- row lock and record the change as a step (kind 'entity'), in the same transaction.
--
-- Paths: dotted text ("a.b.0.c"), or, when the text starts with "[", a JSON array of segments
-- (strings and whole numbers) for keys that contain dots. A segment indexes an array when the
-- value there is an array, and names a key otherwise.
-- Errors: HM007 a path that does not exist or cannot exist; HM008 a value of the wrong type;
-- HM002 an unknown workflow; 22023 a missing argument or unknown operation. Nothing changes on
-- any error.

-- ------------------------------------------------------------------------------ paths

-- A caller's path as segments. One parser for every caller (SQL, Python, the workflow side), so
-- a path means the same thing everywhere. SQL null stays null: "no path", the whole entity.
create or replace function _entity_path(p_path text) returns text[]
language plpgsql immutable
as $$
declare
    v_json jsonb;
    v_segment jsonb;
    v_segments text[] := '{}'::text[];
    v_position integer := 0;
begin
    if p_path is null then
        return null;
    end if;
    -- Bounded (docs/errors.md: Limits): every operation walks and rebuilds the path segment by
    -- segment, and a deeper path would nest the entity past what JSON parsers take.
    if length(p_path) > 10000 then
        raise exception using errcode = 'HM007',
            message = format('entity path is %s characters long; at most 10000',
                             length(p_path));
    end if;
    if left(p_path, 1) <> '[' then
        if p_path = '' then
            raise exception using errcode = 'HM007', message = 'entity path is empty';
        end if;
        v_segments := string_to_array(p_path, '.');
        if cardinality(v_segments) > 100 then
            raise exception using errcode = 'HM007',
                message = format('entity path has %s segments; at most 100',
                                 cardinality(v_segments));
        end if;
        if '' = any(v_segments) then
            raise exception using errcode = 'HM007',
                message = format('entity path "%s" has an empty segment', p_path),
                hint = 'Write a key that contains dots in the array form: ["a.b", "c"].';
        end if;
        return v_segments;
    end if;
    begin
        v_json := p_path::jsonb;
    exception when invalid_text_representation then
        raise exception using errcode = 'HM007',
            message = format('entity path %s starts with "[" but is not a JSON array', p_path),
            hint = 'Paths are dotted text ("a.b.0") or a JSON array of segments (["a.b", 0]).';
    end;
    if jsonb_typeof(v_json) <> 'array' then
        raise exception using errcode = 'HM007',
            message = format('entity path %s starts with "[" but is not a JSON array', p_path);
    end if;
    if jsonb_array_length(v_json) = 0 then
        raise exception using errcode = 'HM007', message = 'entity path is empty';
    end if;
    if jsonb_array_length(v_json) > 100 then
        raise exception using errcode = 'HM007',
            message = format('entity path has %s segments; at most 100',
                             jsonb_array_length(v_json));
    end if;
    for v_segment in select e.value from jsonb_array_elements(v_json) as e loop
        v_position := v_position + 1;
        if jsonb_typeof(v_segment) = 'string' then
            v_segments := v_segments || (v_segment #>> '{}');
        elsif (case when jsonb_typeof(v_segment) = 'number'
                    then v_segment::numeric >= 0 and v_segment::numeric < 2147483648
                         and v_segment::numeric = trunc(v_segment::numeric)
                    else false end) then
            v_segments := v_segments || v_segment::numeric::integer::text;
        else
            raise exception using errcode = 'HM007',
                message = format('segment %s of entity path %s is %s; segments are strings '
                                 '(keys) or whole numbers >= 0 (array indexes)',
                                 v_position, p_path, v_segment);
        end if;
    end loop;
    return v_segments;
end
$$;

-- Segments stored as a JSON array (steps.input -> 'path', query conditions) back to text[].
-- Immutable, so a query built on it is planned with the path as a constant (index matching).
create or replace function _entity_segments(p_path jsonb) returns text[]
language sql immutable
as $$
    select case when jsonb_typeof(p_path) = 'array'
                then array(select e.value from jsonb_array_elements_text(p_path) as e) end
$$;

-- How a path reads in a message: dotted when that is unambiguous, else its JSON array form.
create or replace function _entity_path_label(p_path text[]) returns text
language sql immutable
as $$
    select case
        when coalesce(cardinality(p_path), 0) = 0 then 'the entity'
        when left(p_path[1], 1) = '['
             or exists (select from unnest(p_path) as s (v) where s.v = '' or s.v like '%.%')
            then to_jsonb(p_path)::text
        else format('"%s"', array_to_string(p_path, '.'))
    end
$$;

-- A JSON value's type as a message says it ("an object", "a number", "null").
create or replace function _entity_type_name(p_value jsonb) returns text
language sql immutable
as $$
    select case jsonb_typeof(p_value)
        when 'object' then 'an object'
        when 'array' then 'an array'
        when 'string' then 'a string'
        when 'number' then 'a number'
        when 'boolean' then 'a boolean'
        else 'null'
    end
$$;

-- Follows p_path as far as it exists: depth = how many leading segments exist, node = the value
-- there, blocker = why the next one does not ('missing': no such key, or an index past the end;
-- 'index': an array and a segment that is not an index; else the JSON type of the scalar in
-- the way). Shared by every operation, so "exists" means one thing.
create or replace function _entity_walk(
    p_doc jsonb, p_path text[], out depth integer, out node jsonb, out blocker text
)
language plpgsql immutable
as $$
declare
    v_segment text;
begin
    depth := 0;
    node := p_doc;
    foreach v_segment in array coalesce(p_path, '{}'::text[]) loop
        case jsonb_typeof(node)
            when 'object' then
                if not node ? v_segment then
                    blocker := 'missing';
                    return;
                end if;
                node := node -> v_segment;
            when 'array' then
                if v_segment !~ '^[0-9]+$' then
                    blocker := 'index';
                    return;
                end if;
                if v_segment::numeric >= jsonb_array_length(node) then
                    blocker := 'missing';
                    return;
                end if;
                node := node -> v_segment::integer;
            else
                blocker := jsonb_typeof(node);
                return;
        end case;
        depth := depth + 1;
    end loop;
end
$$;

-- Raises the error for a path that cannot be followed to its end. An operation that needs the
-- path to exist (delete, remove) gets HM007 whatever stopped it; one that creates it gets
-- HM007 for arrays (elements are never created) and HM008 for a scalar in the way.
create or replace function _entity_unreachable(
    p_op text, p_path text[], p_depth integer, p_node jsonb, p_blocker text,
    p_creating boolean
) returns void
language plpgsql immutable
as $$
declare
    v_at text := _entity_path_label(p_path[1:p_depth]);
    v_next text := p_path[p_depth + 1];
    v_path text := _entity_path_label(p_path);
begin
    if p_blocker = 'missing' and jsonb_typeof(p_node) = 'object' then
        raise exception using errcode = 'HM007',
            message = format('entity %s: path %s does not exist: %s has no key "%s"',
                             p_op, v_path, v_at, v_next);
    elsif p_blocker = 'missing' then
        raise exception using errcode = 'HM007',
            message = format('entity %s: path %s does not exist: index %s is out of range for '
                             '%s (length %s)', p_op, v_path, v_next, v_at,
                             jsonb_array_length(p_node));
    elsif p_blocker = 'index' then
        raise exception using errcode = 'HM007',
            message = format('entity %s: path %s does not exist: %s is an array and "%s" is '
                             'not an index', p_op, v_path, v_at, v_next);
    elsif not p_creating then
        raise exception using errcode = 'HM007',
            message = format('entity %s: path %s does not exist: %s is %s', p_op, v_path, v_at,
                             _entity_type_name(p_node));
    else
        raise exception using errcode = 'HM008',
            message = format('entity %s: cannot create path %s: %s is %s, not an object',
                             p_op, v_path, v_at, _entity_type_name(p_node));
    end if;
end
$$;

-- p_value placed at p_path, creating missing intermediate objects. Array elements are never
-- created (an index past the end is an error), so no operation can pad an array with nulls.
create or replace function _entity_put(p_doc jsonb, p_op text, p_path text[], p_value jsonb)
returns jsonb
language plpgsql immutable
as $$
declare
    v_depth integer;
    v_node jsonb;
    v_blocker text;
    v_value jsonb := p_value;
    v_length integer := cardinality(p_path);
begin
    select w.depth, w.node, w.blocker into v_depth, v_node, v_blocker
      from _entity_walk(p_doc, p_path) as w;
    if v_depth = v_length then
        return jsonb_set(p_doc, p_path, p_value, false);
    end if;
    if v_blocker <> 'missing' or jsonb_typeof(v_node) <> 'object' then
        perform _entity_unreachable(p_op, p_path, v_depth, v_node, v_blocker, true);
    end if;
    for v_i in reverse v_length .. v_depth + 2 loop
        v_value := jsonb_build_object(p_path[v_i], v_value);
    end loop;
    return jsonb_set(p_doc, p_path[1:v_depth + 1], v_value, true);
end
$$;

-- Recursive deep merge: objects merge at every depth, anything else in the patch replaces.
-- (The seed merged two levels only and lost deeper keys.)
create or replace function _entity_merge(p_target jsonb, p_patch jsonb) returns jsonb
language plpgsql immutable
as $$
declare
    v_merged jsonb;
begin
    if jsonb_typeof(p_target) is distinct from 'object'
       or jsonb_typeof(p_patch) is distinct from 'object' then
        return p_patch;
    end if;
    select p_target || coalesce(jsonb_object_agg(e.key, _entity_merge(p_target -> e.key, e.value)),
                                '{}'::jsonb)
      into v_merged
      from jsonb_each(p_patch) as e;
    return v_merged;
end
$$;

-- ------------------------------------------------------------------------------ operations

-- One operation applied to a document: the new document and the operation's result. Pure (no
-- table access), so the workflow side, the SQL API and the history replay all share it.
-- Results: set/merge/delete the new document; append/prepend/remove the new array; increment
-- the new number; toggle the new boolean; set_if_not_exists and get the value at the path.
create or replace function _entity_apply(
    p_doc jsonb, p_op text, p_path text[], p_value jsonb, out doc jsonb, out result jsonb
)
language plpgsql immutable
as $$
declare
    v_depth integer;
    v_node jsonb;
    v_blocker text;
    v_found boolean;
    v_index numeric;
    v_length integer;
    v_label text := _entity_path_label(p_path);
begin
    if p_op is null or p_op not in ('set', 'merge', 'get', 'delete', 'append', 'prepend',
                                    'remove', 'increment', 'toggle', 'set_if_not_exists') then
        raise exception using errcode = '22023',
            message = format('unknown entity operation "%s" (one of set, merge, get, delete, '
                             'append, prepend, remove, increment, toggle, set_if_not_exists)',
                             p_op);
    end if;
    if jsonb_typeof(p_doc) is distinct from 'object' then
        raise exception using errcode = 'HM008',
            message = format('entity %s: the entity is %s, not an object', p_op,
                             _entity_type_name(p_doc));
    end if;
    if p_path is null and p_op not in ('set', 'merge', 'get') then
        raise exception using errcode = 'HM007',
            message = format('entity %s: a path is required', p_op);
    end if;
    if cardinality(p_path) = 0 then
        raise exception using errcode = 'HM007', message = 'entity path is empty';
    end if;
    if p_path is not null and p_op = 'merge' then
        raise exception using errcode = '22023',
            message = 'entity merge takes no path: merge {"a": {"b": ...}} to change a nested key';
    end if;
    if p_value is null and p_op not in ('get', 'delete', 'toggle') then
        raise exception using errcode = '22023',
            message = format('entity %s: %s is required (SQL null; JSON null is ''null''::jsonb)',
                             p_op, case p_op when 'remove' then 'an index'
                                             when 'increment' then 'an amount'
                                             else 'a value' end);
    end if;

    select w.depth, w.node, w.blocker into v_depth, v_node, v_blocker
      from _entity_walk(p_doc, p_path) as w;
    v_found := v_depth = coalesce(cardinality(p_path), 0);
    doc := p_doc;
    case p_op
        when 'get' then
            result := case when v_found then v_node end;
        when 'set' then
            if p_path is not null then
                doc := _entity_put(p_doc, p_op, p_path, p_value);
            elsif jsonb_typeof(p_value) = 'object' then
                doc := p_value;
            else
                raise exception using errcode = 'HM008',
                    message = format('entity set: the entity must be a JSON object, not %s',
                                     _entity_type_name(p_value));
            end if;
            result := doc;
        when 'merge' then
            if jsonb_typeof(p_value) <> 'object' then
                raise exception using errcode = 'HM008',
                    message = format('entity merge: the value must be a JSON object, not %s',
                                     _entity_type_name(p_value));
            end if;
            doc := _entity_merge(p_doc, p_value);
            result := doc;
        when 'delete' then
            if not v_found then
                perform _entity_unreachable(p_op, p_path, v_depth, v_node, v_blocker, false);
            end if;
            doc := p_doc #- p_path;
            result := doc;
        when 'append', 'prepend' then
            if not v_found then
                result := jsonb_build_array(p_value);
            elsif jsonb_typeof(v_node) <> 'array' then
                raise exception using errcode = 'HM008',
                    message = format('entity %s: %s is %s, not an array', p_op, v_label,
                                     _entity_type_name(v_node));
            elsif p_op = 'append' then
                result := v_node || jsonb_build_array(p_value);
            else
                result := jsonb_build_array(p_value) || v_node;
            end if;
            doc := _entity_put(p_doc, p_op, p_path, result);
        when 'remove' then
            if (case when jsonb_typeof(p_value) = 'number'
                     then p_value::numeric <> trunc(p_value::numeric)
                     else true end) then
                raise exception using errcode = 'HM008',
                    message = format('entity remove: the index must be a whole number, not %s',
                                     p_value);
            end if;
            if not v_found then
                perform _entity_unreachable(p_op, p_path, v_depth, v_node, v_blocker, false);
            end if;
            if jsonb_typeof(v_node) <> 'array' then
                raise exception using errcode = 'HM008',
                    message = format('entity remove: %s is %s, not an array', v_label,
                                     _entity_type_name(v_node));
            end if;
            v_index := p_value::numeric;
            v_length := jsonb_array_length(v_node);
            if v_index < -v_length or v_index >= v_length then
                raise exception using errcode = 'HM007',
                    message = format('entity remove: index %s is out of range for %s (length %s)',
                                     p_value, v_label, v_length);
            end if;
            result := v_node - v_index::integer;
            doc := jsonb_set(p_doc, p_path, result, false);
        when 'increment' then
            if jsonb_typeof(p_value) <> 'number' then
                raise exception using errcode = 'HM008',
                    message = format('entity increment: the amount must be a number, not %s',
                                     _entity_type_name(p_value));
            end if;
            if not v_found then
                result := p_value;
            elsif jsonb_typeof(v_node) = 'number' then
                result := to_jsonb(v_node::numeric + p_value::numeric);
                -- Each operand is within a double's range (checked on the way in), their sum
                -- may not be: stored, it would break every JSON parser that reads it back.
                if abs(result::numeric) > 1.7976931348623157e308 then
                    raise exception using errcode = '22023',
                        message = format('entity increment: %s (%s) + %s is beyond the range '
                                         'of a double (1.8e308); nothing was changed', v_label,
                                         v_node::numeric::float8, p_value::numeric::float8);
                end if;
            else
                raise exception using errcode = 'HM008',
                    message = format('entity increment: %s is %s, not a number', v_label,
                                     _entity_type_name(v_node));
            end if;
            doc := _entity_put(p_doc, p_op, p_path, result);
        when 'toggle' then
            if not v_found then
                result := 'true'::jsonb;
            elsif jsonb_typeof(v_node) = 'boolean' then
                result := to_jsonb(not v_node::boolean);
            else
                raise exception using errcode = 'HM008',
                    message = format('entity toggle: %s is %s, not a boolean', v_label,
                                     _entity_type_name(v_node));
            end if;
            doc := _entity_put(p_doc, p_op, p_path, result);
        when 'set_if_not_exists' then
            if v_found then
                result := v_node;
            else
                doc := _entity_put(p_doc, p_op, p_path, p_value);
                result := p_value;
            end if;
    end case;
    if jsonb_typeof(doc) is distinct from 'object' then
        -- Unreachable by construction; the guard keeps any future bug from nulling an entity.
        raise exception using errcode = 'XX000',
            message = format('entity %s produced %s; nothing was changed', p_op,
                             _entity_type_name(doc));
    end if;
end
$$;

-- ------------------------------------------------------------------------------ the SQL API

-- The job whose entity a SQL caller addresses, row-locked (for no key update: it does not block
-- foreign-key checks) so concurrent writers apply one after another on the latest document.
-- A finished workflow whose retention ran out no longer exists, for this as for find.
create or replace function _entity_job(p_workflow_id text, p_lock boolean) returns jobs
language plpgsql
as $$
declare
    v_job jobs;
begin
    if p_workflow_id is null then
        raise exception using errcode = '22023', message = 'workflow id is required';
    end if;
    if p_lock then
        select * into v_job from jobs where id = p_workflow_id for no key update;
    else
        select * into v_job from jobs where id = p_workflow_id;
    end if;
    if not found or v_job.expire_at <= _now() then
        raise exception using errcode = 'HM002',
            message = format('workflow "%s" not found', p_workflow_id);
    end if;
    return v_job;
end
$$;

-- What a step records of an operation: its path (segments) and, when it has one, its operand.
create or replace function _entity_input(p_path jsonb, p_value jsonb) returns jsonb
language sql immutable
as $$
    select jsonb_build_object('path', p_path)
           || case when p_value is null then '{}'::jsonb
                   else jsonb_build_object('value', p_value) end
$$;

-- Applies one operation for a SQL caller and records it as a step of thread 'sql' (numbered
-- under the job lock). A repeated idempotency key returns the first call's result and changes
-- nothing; the same key with a different operation or arguments is refused.
create or replace function _entity_change(
    p_workflow_id text, p_op text, p_path text, p_value jsonb, p_idempotency_key text
) returns jsonb
language plpgsql
as $$
declare
    v_path text[] := _entity_path(p_path);
    v_job jobs := _entity_job(p_workflow_id, true);
    v_now timestamptz := _now();
    v_input jsonb := _entity_input(to_jsonb(v_path), p_value);
    v_step steps;
    v_doc jsonb;
    v_result jsonb;
    v_seq integer;
begin
    perform _check_name('idempotency key', p_idempotency_key);
    perform _check_value(format('the value of entity %s', p_op), p_value);
    if p_idempotency_key is not null then
        select * into v_step
          from steps
         where job_id = p_workflow_id and kind = 'entity' and idempotency_key = p_idempotency_key;
        if found then
            if v_step.name <> p_op or (v_step.input - 'by') is distinct from v_input then
                raise exception using errcode = '22023',
                    message = format('idempotency key "%s" of workflow "%s" was already used for '
                                     'entity %s %s; a retry must repeat the same call',
                                     p_idempotency_key, p_workflow_id, v_step.name,
                                     v_step.input - 'by');
            end if;
            return v_step.output;
        end if;
    end if;
    select a.doc, a.result into v_doc, v_result
      from _entity_apply(v_job.context, p_op, v_path, p_value) as a;
    select coalesce(max(s.seq), 0) + 1 into v_seq
      from steps as s
     where s.job_id = p_workflow_id and s.thread = 'sql';
    insert into steps (job_id, thread, seq, kind, name, status, input, output, idempotency_key,
                       entity_version, created_at, completed_at)
    values (p_workflow_id, 'sql', v_seq, 'entity', p_op, 'completed',
            v_input || jsonb_build_object(
                'by', session_user || coalesce(' (' || nullif(current_setting('application_name'),
                                                              '') || ')', '')),
            v_result, p_idempotency_key, v_job.entity_version + 1, v_now, v_now);
    update jobs
       set context = v_doc, entity_version = v_job.entity_version + 1, updated_at = v_now
     where id = p_workflow_id;
    return v_result;
end
$$;

-- Replaces the whole entity (a JSON object), or, with p_path, the value there (creating
-- missing intermediate objects). Returns the new entity.
create or replace function entity_set(
    p_workflow_id text, p_value jsonb, p_path text default null,
    p_idempotency_key text default null
) returns jsonb
language sql
set search_path from current
as $$
    select _entity_change(p_workflow_id, 'set', p_path, p_value, p_idempotency_key)
$$;

-- Deep-merges a JSON object into the entity. Returns the new entity.
create or replace function entity_merge(
    p_workflow_id text, p_value jsonb, p_idempotency_key text default null
) returns jsonb
language sql
set search_path from current
as $$
    select _entity_change(p_workflow_id, 'merge', null, p_value, p_idempotency_key)
$$;

-- The entity, or the value at p_path (SQL null when the path does not exist; JSON null when it
-- holds null). A read takes no lock and records nothing.
create or replace function entity_get(p_workflow_id text, p_path text default null)
returns jsonb
language sql
set search_path from current
as $$
    select a.result
      from _entity_apply((_entity_job(p_workflow_id, false)).context, 'get',
                         _entity_path(p_path), null) as a
$$;

-- Removes the key or array element at p_path (HM007 when it does not exist). Returns the new
-- entity.
create or replace function entity_delete(
    p_workflow_id text, p_path text, p_idempotency_key text default null
) returns jsonb
language sql
set search_path from current
as $$
    select _entity_change(p_workflow_id, 'delete', p_path, null, p_idempotency_key)
$$;

-- Adds p_value as the last element of the array at p_path (created when missing). Returns the
-- new array.
create or replace function entity_append(
    p_workflow_id text, p_path text, p_value jsonb, p_idempotency_key text default null
) returns jsonb
language sql
set search_path from current
as $$
    select _entity_change(p_workflow_id, 'append', p_path, p_value, p_idempotency_key)
$$;

-- Adds p_value as the first element of the array at p_path (created when missing). Returns the
-- new array.
create or replace function entity_prepend(
    p_workflow_id text, p_path text, p_value jsonb, p_idempotency_key text default null
) returns jsonb
language sql
set search_path from current
as $$
    select _entity_change(p_workflow_id, 'prepend', p_path, p_value, p_idempotency_key)
$$;

-- Removes element p_index (negative counts from the end) of the array at p_path. Returns the
-- new array ([] after removing the last element).
create or replace function entity_remove(
    p_workflow_id text, p_path text, p_index integer, p_idempotency_key text default null
) returns jsonb
language sql
set search_path from current
as $$
    select _entity_change(p_workflow_id, 'remove', p_path, to_jsonb(p_index), p_idempotency_key)
$$;

-- Adds p_by to the number at p_path (a missing value counts as 0). Returns the new number.
create or replace function entity_increment(
    p_workflow_id text, p_path text, p_by numeric default 1, p_idempotency_key text default null
) returns numeric
language plpgsql
set search_path from current
as $$
begin
    if p_by is null or p_by in ('NaN', 'Infinity', '-Infinity') then
        raise exception using errcode = '22023',
            message = format('entity increment: the amount must be a finite number, not %s',
                             coalesce(p_by::text, 'null'));
    end if;
    return _entity_change(p_workflow_id, 'increment', p_path, to_jsonb(p_by),
                          p_idempotency_key)::numeric;
end
$$;

-- Flips the boolean at p_path (a missing value becomes true). Returns the new boolean.
create or replace function entity_toggle(
    p_workflow_id text, p_path text, p_idempotency_key text default null
) returns boolean
language sql
set search_path from current
as $$
    select _entity_change(p_workflow_id, 'toggle', p_path, null, p_idempotency_key)::boolean
$$;

-- Sets p_path to p_value only when the path does not exist (an existing JSON null counts as
-- existing). Returns the value at the path afterwards.
create or replace function entity_set_if_not_exists(
    p_workflow_id text, p_path text, p_value jsonb, p_idempotency_key text default null
) returns jsonb
language sql
set search_path from current
as $$
    select _entity_change(p_workflow_id, 'set_if_not_exists', p_path, p_value,
                          p_idempotency_key)
$$;

-- ------------------------------------------------------------------------------ workflow side

-- One entity operation of workflow code, at its code position (thread, seq): exactly once. A
-- recorded position returns its step and applies nothing; otherwise the change, its step and
-- the result commit together. A failing operation is recorded too (status failed), so a replay
-- raises the same error instead of trying again on a document that has moved on. `get` is
-- recorded as well: a replay sees the snapshot the first run saw. Returns the step.
create or replace function entity_step(
    p_task_id bigint, p_token uuid, p_seq integer, p_op text, p_path text, p_value jsonb
) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_task tasks := _activation_task(p_task_id, p_token);
    v_now timestamptz := _now();
    v_context jsonb;
    v_version bigint;
    v_path text[];
    v_doc jsonb;
    v_result jsonb;
    v_error jsonb;
    v_step steps;
    v_changes boolean;
begin
    -- Checked before anything is recorded: a too large or too deep value fails the call.
    perform _check_value(format('the value of entity %s', p_op), p_value);
    select j.context, j.entity_version into v_context, v_version
      from jobs as j
     where j.id = v_task.job_id
       for no key update;
    select * into v_step
      from steps
     where job_id = v_task.job_id and thread = v_task.thread and seq = p_seq;
    if found then
        perform _check_step(v_step, 'entity', coalesce(p_op, ''));
        return _step_json(v_step);
    end if;
    begin
        v_path := _entity_path(p_path);
        select a.doc, a.result into v_doc, v_result
          from _entity_apply(v_context, p_op, v_path, p_value) as a;
    exception when sqlstate 'HM007' or sqlstate 'HM008' or sqlstate '22023' then
        v_error := jsonb_build_object(
            'message', sqlerrm, 'sqlstate', sqlstate, 'code', 598,
            'type', case sqlstate when 'HM007' then 'EntityPathError'
                                  when 'HM008' then 'EntityTypeError'
                                  else 'InvalidArgument' end);
    end;
    v_changes := v_error is null and p_op <> 'get';
    insert into steps (job_id, thread, seq, kind, name, status, input, output, error,
                       entity_version, created_at, completed_at)
    values (v_task.job_id, v_task.thread, p_seq, 'entity', coalesce(p_op, ''),
            case when v_error is null then 'completed' else 'failed' end,
            _entity_input(coalesce(to_jsonb(v_path), to_jsonb(p_path)), p_value)
            || jsonb_build_object('by', v_task.lease_owner),
            v_result, v_error, case when v_changes then v_version + 1 end, v_now, v_now)
    on conflict do nothing
    returning * into v_step;
    if not found then
        -- Another call recorded this position first: its outcome stands, nothing is applied.
        select * into v_step
          from steps
         where job_id = v_task.job_id and thread = v_task.thread and seq = p_seq;
        perform _check_step(v_step, 'entity', coalesce(p_op, ''));
        return _step_json(v_step);
    end if;
    if v_changes then
        update jobs
           set context = v_doc, entity_version = v_version + 1, updated_at = v_now
         where id = v_task.job_id;
    end if;
    return _step_json(v_step);
end
$$;

-- ------------------------------------------------------------------------------ history

-- Every change of a workflow's entity in the order it was applied (entity_version: the job
-- row lock orders changes across threads and SQL callers), with the document after it. The
-- documents are rebuilt by replaying the recorded operations from {} with _entity_apply, so
-- the log stores each operation once instead of a copy of the document per change. Reads and
-- failed operations are not changes and are not listed.
create or replace function entity_history(p_workflow_id text)
returns table (
    version bigint,
    thread text,
    seq integer,
    op text,
    path text[],
    value jsonb,
    result jsonb,
    document jsonb,
    caller text,
    recorded_at timestamptz
)
language plpgsql
set search_path from current
as $$
declare
    v_job jobs := _entity_job(p_workflow_id, false);
    v_doc jsonb := '{}'::jsonb;
    v_step record;
begin
    -- The changes made in earlier runs (continue_as_new) are archived in run_steps.
    for v_step in
        select s.entity_version, s.thread, s.seq, s.name, s.input, s.output, s.created_at
          from steps as s
         where s.job_id = p_workflow_id and s.entity_version is not null
        union all
        select s.entity_version, s.thread, s.seq, s.name, s.input, s.output, s.created_at
          from run_steps as s
         where s.job_id = p_workflow_id and s.entity_version is not null
         order by 1
    loop
        v_doc := (_entity_apply(v_doc, v_step.name, _entity_segments(v_step.input -> 'path'),
                                v_step.input -> 'value')).doc;
        version := v_step.entity_version;
        thread := v_step.thread;
        seq := v_step.seq;
        op := v_step.name;
        path := _entity_segments(v_step.input -> 'path');
        value := v_step.input -> 'value';
        result := v_step.output;
        document := v_doc;
        caller := v_step.input ->> 'by';
        recorded_at := v_step.created_at;
        return next;
    end loop;
    if v_doc is distinct from v_job.context then
        raise warning 'the entity of workflow "%" was changed outside the entity functions '
                      '(e.g. a direct UPDATE of jobs.context); its history lists only the '
                      'recorded operations', p_workflow_id;
    end if;
end
$$;

-- ------------------------------------------------------------------------------ queries

-- One query condition, checked: {"path": [...], "op": "=", "value": ...}. Operators come from
-- a fixed list; comparisons are typed (a number never equals a string).
create or replace function _entity_condition(p_path text[], p_op text, p_value jsonb)
returns jsonb
language plpgsql immutable
as $$
declare
    v_op text := lower(btrim(coalesce(p_op, '')));
begin
    if v_op = '<>' then
        v_op := '!=';
    end if;
    if v_op not in ('=', '!=', '>', '>=', '<', '<=', 'like', 'in') then
        raise exception using errcode = '22023',
            message = format('unknown operator "%s" (one of = != > >= < <= like in)', p_op);
    end if;
    if p_path is null then
        raise exception using errcode = 'HM007', message = 'a condition needs a path';
    end if;
    if p_value is null then
        raise exception using errcode = '22023',
            message = format('condition on %s %s: a value is required (JSON null is '
                             '''null''::jsonb)', _entity_path_label(p_path), v_op);
    end if;
    perform _check_value(format('the value compared with %s', v_op), p_value);
    if v_op in ('>', '>=', '<', '<=') and jsonb_typeof(p_value) not in ('number', 'string') then
        raise exception using errcode = '22023',
            message = format('condition on %s: %s compares numbers or strings, not %s',
                             _entity_path_label(p_path), v_op, _entity_type_name(p_value));
    end if;
    if v_op = 'like' and jsonb_typeof(p_value) <> 'string' then
        raise exception using errcode = '22023',
            message = format('condition on %s: like needs a string pattern, not %s',
                             _entity_path_label(p_path), _entity_type_name(p_value));
    end if;
    if v_op = 'in' and jsonb_typeof(p_value) <> 'array' then
        raise exception using errcode = '22023',
            message = format('condition on %s: in needs a JSON array of values, not %s',
                             _entity_path_label(p_path), _entity_type_name(p_value));
    end if;
    return jsonb_build_object('path', to_jsonb(p_path), 'op', v_op, 'value', p_value);
end
$$;

-- {"a": {"b": value}} for path a.b: the containment pattern that lets a GIN index on context
-- serve an equality condition.
create or replace function _entity_nest(p_path jsonb, p_value jsonb) returns jsonb
language plpgsql immutable
as $$
declare
    v_value jsonb := p_value;
    v_segments text[] := _entity_segments(p_path);
begin
    for v_i in reverse cardinality(v_segments) .. 1 loop
        v_value := jsonb_build_object(v_segments[v_i], v_value);
    end loop;
    return v_value;
end
$$;

-- The elements of a JSON array as jsonb[] (for `= any(...)`).
create or replace function _entity_elements(p_values jsonb) returns jsonb[]
language sql immutable
as $$
    select array(select e.value from jsonb_array_elements(p_values) as e)
$$;

-- Runs checked conditions against the jobs of one entity type, newest first. The statement is
-- assembled only from fixed fragments and numbered references to its parameters ($5 paths, $6
-- values): no input of the caller is ever part of its text. Because the references are to
-- immutable functions of parameters, each path is planned as a constant, so an index made by
-- entity_create_index on that path serves the query.
create or replace function _entity_query(
    p_entity text, p_conditions jsonb, p_limit integer, p_offset integer
) returns table (id text, context jsonb, status text)
language plpgsql stable
as $$
declare
    v_sql text := 'select j.id, j.context, j.status from jobs as j where j.entity = $1 '
                  'and (j.expire_at is null or j.expire_at > $2)';
    v_paths jsonb := '[]'::jsonb;
    v_values jsonb := '[]'::jsonb;
    v_condition jsonb;
    v_i integer := 0;
    v_at text;
    v_value text;
begin
    if p_entity is null then
        raise exception using errcode = '22023', message = 'entity (type) is required';
    end if;
    if p_limit < 0 or p_offset < 0 then
        raise exception using errcode = '22023',
            message = format('limit and offset must be >= 0, not %s and %s', p_limit, p_offset);
    end if;
    for v_condition in select e.value from jsonb_array_elements(p_conditions) as e loop
        v_paths := v_paths || jsonb_build_array(v_condition -> 'path');
        v_values := v_values || jsonb_build_array(v_condition -> 'value');
        v_at := format('(j.context #> _entity_segments($5 -> %s))', v_i);
        v_value := format('($6 -> %s)', v_i);
        v_sql := v_sql || ' and ' || case v_condition ->> 'op'
            when '=' then
                case when not exists (
                              select from jsonb_array_elements_text(v_condition -> 'path') as s
                               where s.value ~ '^[0-9]+$')
                     then format('j.context @> _entity_nest($5 -> %s, $6 -> %s) and ', v_i, v_i)
                     else '' end
                || v_at || ' = ' || v_value
            when '!=' then v_at || ' <> ' || v_value
            when 'like' then
                format('jsonb_typeof(%s) = ''string'' and (j.context #>> _entity_segments($5 -> %s))'
                       ' like (%s #>> ''{}'')', v_at, v_i, v_value)
            when 'in' then v_at || format(' = any(_entity_elements(%s))', v_value)
            else
                format('jsonb_typeof(%s) = jsonb_typeof(%s) and %s %s %s', v_at, v_value, v_at,
                       case v_condition ->> 'op' when '>' then '>' when '>=' then '>='
                                                 when '<' then '<' else '<=' end, v_value)
        end;
        v_i := v_i + 1;
    end loop;
    v_sql := v_sql || ' order by j.created_at desc, j.id limit $3 offset $4';
    return query execute v_sql
        using p_entity, _now(), p_limit, coalesce(p_offset, 0), v_paths, v_values;
end
$$;

-- Workflows of one entity type whose entity matches every condition of p_where, newest first.
-- p_where: {"<path>": value} for equality, or {"<path>": {"$gt": value, ...}} with $eq $ne $gt
-- $gte $lt $lte $in $like. Paths are dotted (nested) or JSON-array text, as everywhere.
create or replace function entity_find(
    p_entity text, p_where jsonb default '{}', p_limit integer default null,
    p_offset integer default 0
) returns table (id text, context jsonb, status text)
language plpgsql stable
set search_path from current
as $$
declare
    v_where jsonb := coalesce(p_where, '{}'::jsonb);
    v_conditions jsonb := '[]'::jsonb;
    v_key text;
    v_condition jsonb;
    v_op text;
    v_value jsonb;
begin
    if jsonb_typeof(v_where) <> 'object' then
        raise exception using errcode = '22023',
            message = format('where must be a JSON object of path: condition, not %s',
                             _entity_type_name(v_where));
    end if;
    for v_key, v_condition in select e.key, e.value from jsonb_each(v_where) as e loop
        if jsonb_typeof(v_condition) = 'object'
           and exists (select from jsonb_object_keys(v_condition) as k where left(k, 1) = '$') then
            for v_op, v_value in select e.key, e.value from jsonb_each(v_condition) as e loop
                v_conditions := v_conditions || jsonb_build_array(_entity_condition(
                    _entity_path(v_key),
                    case v_op when '$eq' then '=' when '$ne' then '!=' when '$gt' then '>'
                              when '$gte' then '>=' when '$lt' then '<' when '$lte' then '<='
                              when '$in' then 'in' when '$like' then 'like'
                              else v_op end,
                    v_value));
            end loop;
        else
            v_conditions := v_conditions
                            || jsonb_build_array(_entity_condition(_entity_path(v_key), '=',
                                                                   v_condition));
        end if;
    end loop;
    return query select * from _entity_query(p_entity, v_conditions, p_limit, p_offset);
end
$$;

-- Workflows of one entity type whose value at p_path compares with p_value by p_op
-- (= != > >= < <= like in), newest first.
create or replace function entity_find_by_condition(
    p_entity text, p_path text, p_op text, p_value jsonb, p_limit integer default null,
    p_offset integer default 0
) returns table (id text, context jsonb, status text)
language sql stable
set search_path from current
as $$
    select *
      from _entity_query(p_entity,
                         jsonb_build_array(_entity_condition(_entity_path(p_path), p_op, p_value)),
                         p_limit, p_offset)
$$;

-- One workflow of an entity type by id (no row when it is not of that type or does not exist).
create or replace function entity_find_by_id(p_entity text, p_workflow_id text)
returns table (id text, context jsonb, status text)
language sql stable
set search_path from current
as $$
    select j.id, j.context, j.status
      from jobs as j
     where j.id = p_workflow_id and j.entity = p_entity
       and (j.expire_at is null or j.expire_at > _now())
$$;

-- Creates (once) a partial index on jobs for one entity type: 'btree' on the value at p_path
-- (serves the find functions' = != > >= < <= in on that path), 'gin' (jsonb_path_ops) on the
-- whole entity or on the value at p_path (serves containment, so find's equality conditions).
-- DDL cannot take parameters: the path and entity go in as quoted literals (%L) and the name
-- is derived from them (only [a-z0-9_] plus a hash, so distinct inputs never share a name).
-- Returns the index name. On a large table prefer running the same statement yourself with
-- CREATE INDEX CONCURRENTLY (it cannot run inside a function).
create or replace function entity_create_index(
    p_entity text, p_path text default null, p_kind text default 'btree'
) returns text
language plpgsql
set search_path from current
as $$
declare
    v_path text[] := _entity_path(p_path);
    v_kind text := lower(btrim(coalesce(p_kind, 'btree')));
    v_name text;
begin
    if coalesce(p_entity, '') = '' then
        raise exception using errcode = '22023', message = 'entity (type) is required';
    end if;
    if v_kind not in ('btree', 'gin') then
        raise exception using errcode = '22023',
            message = format('index kind must be btree or gin, not "%s"', p_kind);
    end if;
    if v_kind = 'btree' and v_path is null then
        raise exception using errcode = 'HM007',
            message = 'a btree entity index needs a path (a gin index may cover the whole entity)';
    end if;
    v_name := left('jobs_' || v_kind || '_'
                   || trim(both '_' from regexp_replace(
                       lower(p_entity || '_' || coalesce(array_to_string(v_path, '_'), '')),
                       '[^a-z0-9]+', '_', 'g')), 50)
              || '_' || left(md5(concat_ws(chr(1), v_kind, p_entity, to_jsonb(v_path)::text)), 8);
    if to_regclass(format('%I.%I', current_schema(), v_name)) is not null then
        return v_name;
    elsif v_kind = 'btree' then
        execute format('create index if not exists %I on %I.jobs ((context #> %L::text[])) '
                       'where entity = %L', v_name, current_schema(), v_path, p_entity);
    elsif v_path is null then
        execute format('create index if not exists %I on %I.jobs using gin (context jsonb_path_ops) '
                       'where entity = %L', v_name, current_schema(), p_entity);
    else
        execute format('create index if not exists %I on %I.jobs '
                       'using gin ((context #> %L::text[]) jsonb_path_ops) where entity = %L',
                       v_name, current_schema(), v_path, p_entity);
    end if;
    return v_name;
end
$$;
