-- Schedules: workflows the engine starts by itself, on a cron expression or an interval.
-- No daemon: every claim calls _fire_schedules, which costs one index probe when nothing is
-- due. A run's workflow id is derived from the schedule id and the fire's nominal time, so
-- two workers that fire the same schedule at once cannot start it twice (the second start
-- finds the id taken), and the schedule row is locked SKIP LOCKED so the second one does not
-- even try. The schedule state machine: active <-> paused (_legal_transitions).

-- One field of a cron expression as the sorted set of values it allows. p_names, when given,
-- are the names of the values from p_min on (jan..dec, sun..sat). Errors name the field.
create or replace function _cron_field(
    p_expr text, p_field text, p_text text, p_min integer, p_max integer,
    p_names text[] default null
) returns integer[]
language plpgsql immutable
as $$
declare
    v_item text;
    v_parts text[];
    v_range text;
    v_step integer := 1;
    v_from integer;
    v_to integer;
    v_values integer[] := '{}'::integer[];
begin
    foreach v_item in array string_to_array(p_text, ',') loop
        v_parts := regexp_match(lower(v_item), '^([^/]+)(?:/([0-9]{1,4}))?$');
        if v_parts is null then
            raise exception using errcode = '22023',
                message = format('cron "%s": %s field "%s" is not a value, range or step',
                                 p_expr, p_field, p_text);
        end if;
        v_range := v_parts[1];
        if v_parts[2] is not null then
            v_step := v_parts[2]::integer;
            if v_step < 1 or v_step > p_max then
                raise exception using errcode = '22023',
                    message = format('cron "%s": %s field "%s": step %s is out of range 1-%s',
                                     p_expr, p_field, p_text, v_step, p_max);
            end if;
        else
            v_step := 1;
        end if;
        if v_range = '*' then
            v_from := p_min;
            v_to := p_max;
        else
            v_parts := regexp_match(v_range, '^([a-z0-9]+)(?:-([a-z0-9]+))?$');
            if v_parts is null then
                raise exception using errcode = '22023',
                    message = format('cron "%s": %s field "%s" is not a value, range or step',
                                     p_expr, p_field, p_text);
            end if;
            v_from := _cron_value(p_expr, p_field, v_parts[1], p_min, p_max, p_names);
            -- "5/15" means 5-max/15, as in cronie.
            v_to := case when v_parts[2] is not null
                             then _cron_value(p_expr, p_field, v_parts[2], p_min, p_max, p_names)
                         when v_step > 1 then p_max
                         else v_from end;
            if v_to < v_from then
                raise exception using errcode = '22023',
                    message = format('cron "%s": %s field "%s": range %s-%s runs backwards',
                                     p_expr, p_field, p_text, v_from, v_to);
            end if;
        end if;
        v_values := v_values || array(select generate_series(v_from, v_to, v_step));
    end loop;
    return array(select distinct v from unnest(v_values) as v order by v);
end
$$;

-- One value of a cron field: a number within p_min..p_max or one of p_names.
create or replace function _cron_value(
    p_expr text, p_field text, p_text text, p_min integer, p_max integer, p_names text[]
) returns integer
language plpgsql immutable
as $$
declare
    v_name integer := array_position(p_names, p_text);
begin
    if v_name is not null then
        return p_min + v_name - 1;
    end if;
    if p_text !~ '^[0-9]{1,4}$' or p_text::integer not between p_min and p_max then
        raise exception using errcode = '22023',
            message = format('cron "%s": %s field: "%s" is not a value from %s to %s%s',
                             p_expr, p_field, p_text, p_min, p_max,
                             case when p_names is not null
                                  then ' or a name (' || array_to_string(p_names, ', ') || ')'
                                  else '' end);
    end if;
    return p_text::integer;
end
$$;

-- A cron expression (5 fields, or a macro) as its value sets. The day of month and the day
-- of week combine as in Vixie cron: when both are restricted (neither starts with "*"), a day
-- matching either one fires; otherwise a day must match both.
create or replace function _cron_parse(
    p_expr text,
    out minutes integer[], out hours integer[], out days integer[], out months integer[],
    out weekdays integer[], out either_day boolean
)
language plpgsql immutable
as $$
declare
    v_expr text := case lower(btrim(p_expr))
        when '@yearly' then '0 0 1 1 *'
        when '@annually' then '0 0 1 1 *'
        when '@monthly' then '0 0 1 * *'
        when '@weekly' then '0 0 * * 0'
        when '@daily' then '0 0 * * *'
        when '@midnight' then '0 0 * * *'
        when '@hourly' then '0 * * * *'
        else btrim(p_expr) end;
    v_fields text[] := regexp_split_to_array(v_expr, '\s+');
begin
    if cardinality(v_fields) <> 5 then
        raise exception using errcode = '22023',
            message = format('cron "%s" has %s fields; it needs 5 (minute hour day-of-month '
                             'month day-of-week), a macro such as @daily, or "@every <duration>"',
                             p_expr, cardinality(v_fields));
    end if;
    minutes := _cron_field(p_expr, 'minute', v_fields[1], 0, 59);
    hours := _cron_field(p_expr, 'hour', v_fields[2], 0, 23);
    days := _cron_field(p_expr, 'day-of-month', v_fields[3], 1, 31);
    months := _cron_field(p_expr, 'month', v_fields[4], 1, 12,
                          array['jan', 'feb', 'mar', 'apr', 'may', 'jun', 'jul', 'aug', 'sep',
                                'oct', 'nov', 'dec']);
    -- 7 is Sunday too.
    weekdays := array(select distinct d % 7 from unnest(
                    _cron_field(p_expr, 'day-of-week', v_fields[5], 0, 7,
                                array['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'])) as d
                      order by 1);
    either_day := left(v_fields[3], 1) <> '*' and left(v_fields[5], 1) <> '*';
end
$$;

-- The first moment after p_after at which cron p_expr fires in time zone p_tz (null if none
-- within 8 years: "0 0 30 2 *"). Cron speaks wall-clock time: each local time that matches
-- fires once. On a DST change a local time the clock skips fires when the clock jumps past
-- it (PostgreSQL reads 02:30 of a spring-forward night as 03:30); a local time that occurs
-- twice fires at its first occurrence only.
create or replace function cron_next(p_expr text, p_tz text, p_after timestamptz)
returns timestamptz
language plpgsql stable
set search_path from current
as $$
declare
    v_cron record;
    v_start timestamp;
    v_day date;
    v_from integer;
    v_at timestamptz;
    v_minute integer;
begin
    if p_expr is null or p_tz is null or p_after is null then
        raise exception using errcode = '22023',
            message = 'cron_next: the cron expression, the time zone and the moment are required';
    end if;
    -- Years 1900 to 9999: the 8-year search below stays inside the timestamp range.
    if not isfinite(p_after) or p_after not between '1900-01-01 00:00+00' and '9999-01-01 00:00+00'
    then
        raise exception using errcode = '22023',
            message = format('cron_next: %s is not a moment from 1900 to 9999', p_after);
    end if;
    v_cron := _cron_parse(p_expr);
    v_start := date_trunc('minute', p_after at time zone p_tz) + interval '1 minute';
    v_day := v_start::date;
    while v_day < v_start::date + interval '8 years' loop
        if extract(month from v_day)::integer <> all(v_cron.months) then
            v_day := date_trunc('month', v_day) + interval '1 month';
            continue;
        end if;
        if (case when v_cron.either_day
                 then extract(day from v_day)::integer = any(v_cron.days)
                      or extract(dow from v_day)::integer = any(v_cron.weekdays)
                 else extract(day from v_day)::integer = any(v_cron.days)
                      and extract(dow from v_day)::integer = any(v_cron.weekdays) end) then
            v_from := case when v_day = v_start::date
                           then extract(hour from v_start)::integer * 60
                                + extract(minute from v_start)::integer
                           else 0 end;
            -- The matching minutes of the day in order; the first that is a later instant
            -- (a local time of a DST fold may map to one already passed).
            for v_minute in
                select h * 60 + m from unnest(v_cron.hours) as h, unnest(v_cron.minutes) as m
                 where h * 60 + m >= v_from order by 1
            loop
                v_at := (v_day + make_interval(mins => v_minute)) at time zone p_tz;
                if v_at > p_after then
                    return v_at;
                end if;
            end loop;
        end if;
        v_day := v_day + 1;
    end loop;
    return null;
end
$$;

-- The interval of "@every <duration>" (null for a cron expression): a sequence of
-- <number><unit> with units ms, s, m, h, d ("@every 1h30m"); at least one second.
create or replace function _every(p_spec text) returns interval
language plpgsql immutable
as $$
declare
    v_text text := lower(btrim(p_spec));
    v_body text;
    v_interval interval := interval '0';
    v_part text[];
begin
    if v_text !~ '^@every\s' then
        return null;
    end if;
    v_body := btrim(substr(v_text, 7));
    if v_body !~ '^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$' then
        raise exception using errcode = '22023',
            message = format('"%s": the duration after @every must be like 30s, 10m, '
                             '1h30m or 1d (units ms, s, m, h, d)', p_spec);
    end if;
    for v_part in select regexp_matches(v_body, '([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)', 'g') loop
        if v_part[1]::numeric > 1e6 then
            raise exception using errcode = '22023',
                message = format('"%s": %s%s is too long', p_spec, v_part[1],
                                 v_part[2]);
        end if;
        v_interval := v_interval + v_part[1]::numeric * case v_part[2]
            when 'ms' then interval '1 millisecond' when 's' then interval '1 second'
            when 'm' then interval '1 minute' when 'h' then interval '1 hour'
            else interval '1 day' end;
    end loop;
    if v_interval < interval '1 second' then
        raise exception using errcode = '22023',
            message = format('"%s": the interval must be at least 1 second', p_spec);
    end if;
    return v_interval;
end
$$;

-- The schedule's next nominal fire after p_after: "@every" fires at whole multiples of its
-- interval since the Unix epoch (@every 10m at :00, :10, ...), a cron expression at its next
-- match in the schedule's time zone.
create or replace function _schedule_next(p_schedule schedules, p_after timestamptz)
returns timestamptz
language plpgsql stable
as $$
declare
    v_every interval := _every(p_schedule.spec);
    v_seconds numeric;
begin
    if v_every is null then
        return cron_next(p_schedule.spec, p_schedule.timezone, p_after);
    end if;
    v_seconds := extract(epoch from v_every);
    return to_timestamp(0) + v_every * (floor(extract(epoch from p_after) / v_seconds) + 1);
end
$$;

-- When a claim should fire the fire at p_fire_at: that time plus a share of the jitter fixed
-- by the schedule id and the fire (every worker computes the same delay).
create or replace function _schedule_due(p_schedule schedules, p_fire_at timestamptz)
returns timestamptz
language sql immutable
as $$
    select p_fire_at + p_schedule.jitter
           * (('x' || left(md5(p_schedule.id || '@' || p_fire_at::text), 8))::bit(32)::bigint
              / 4294967296.0)
$$;

-- The workflow id of the run a fire starts: the schedule id and the fire time in UTC
-- ("nightly@2030-01-01T02:00:00Z").
create or replace function _schedule_run_id(p_schedule_id text, p_fire_at timestamptz)
returns text
language sql immutable
as $$
    select p_schedule_id || '@'
           || regexp_replace(to_char(p_fire_at at time zone 'UTC',
                                     'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '\.?0*Z$', 'Z')
$$;

-- Checks a schedule (its spec, time zone, options) and fills in the defaults; raises 22023
-- naming the problem. p_options: timezone, overlap (skip | buffer_one | allow),
-- catchup_window, jitter (seconds), paused, entity, note; every other key is an option of
-- each run's start (start_workflow's p_options: retry_policy, priority, expire, ...).
create or replace function _schedule_row(
    p_schedule_id text, p_spec text, p_workflow_name text, p_args jsonb, p_task_queue text,
    p_options jsonb, p_now timestamptz
) returns schedules
language plpgsql stable
as $$
declare
    v_options jsonb := coalesce(p_options, '{}'::jsonb);
    v_row schedules;
    v_seconds numeric;
    v_key text;
begin
    if coalesce(p_schedule_id, '') = '' or length(p_schedule_id) > 200 then
        raise exception using errcode = '22023',
            message = format('schedule id must be 1 to 200 characters, got %s',
                             coalesce(length(p_schedule_id), 0));
    end if;
    if jsonb_typeof(v_options) <> 'object' then
        raise exception using errcode = '22023',
            message = format('schedule "%s": options must be a JSON object', p_schedule_id);
    end if;
    v_row.id := p_schedule_id;
    v_row.spec := btrim(coalesce(p_spec, ''));
    v_row.timezone := coalesce(v_options ->> 'timezone', 'UTC');
    v_row.workflow_name := p_workflow_name;
    v_row.args := coalesce(p_args, '[]'::jsonb);
    v_row.task_queue := coalesce(p_task_queue, v_options ->> 'entity');
    v_row.entity := v_options ->> 'entity';
    v_row.overlap := coalesce(v_options ->> 'overlap', 'skip');
    v_row.status := case when (v_options -> 'paused') = 'true' then 'paused' else 'active' end;
    v_row.note := v_options ->> 'note';
    v_row.start_options := v_options - array['timezone', 'overlap', 'catchup_window', 'jitter',
                                             'paused', 'entity', 'note'];
    v_row.fires := 0;
    v_row.skipped := 0;
    v_row.created_at := p_now;
    v_row.updated_at := p_now;
    if v_row.spec = '' then
        raise exception using errcode = '22023',
            message = format('schedule "%s": a cron expression or "@every <duration>" is '
                             'required', p_schedule_id);
    end if;
    if v_row.overlap not in ('skip', 'buffer_one', 'allow') then
        raise exception using errcode = '22023',
            message = format('schedule "%s": overlap must be skip, buffer_one or allow, not "%s"',
                             p_schedule_id, v_row.overlap);
    end if;
    foreach v_key in array array['catchup_window', 'jitter'] loop
        perform _check_seconds(format('schedule "%s": %s', p_schedule_id, v_key),
                               v_options -> v_key, 0, 1e9, 'from 0 to 1e9');
    end loop;
    v_seconds := (v_options ->> 'catchup_window')::numeric;
    v_row.catchup_window := coalesce(make_interval(secs => v_seconds), interval '1 hour');
    v_row.jitter := coalesce(make_interval(secs => (v_options ->> 'jitter')::numeric),
                             interval '0');
    if jsonb_typeof(v_options -> 'paused') not in ('boolean', 'null') then
        raise exception using errcode = '22023',
            message = format('schedule "%s": paused must be true or false', p_schedule_id);
    end if;
    perform _check_name('note', v_row.note);
    begin
        perform p_now at time zone v_row.timezone;
    exception when invalid_parameter_value then
        raise exception using errcode = '22023',
            message = format('schedule "%s": unknown time zone "%s"', p_schedule_id,
                             v_row.timezone);
    end;
    v_row.next_fire_at := _schedule_next(v_row, p_now);
    if v_row.next_fire_at is null then
        raise exception using errcode = '22023',
            message = format('schedule "%s": cron "%s" never fires', p_schedule_id, v_row.spec);
    end if;
    v_row.due_at := case when v_row.status = 'active'
                         then _schedule_due(v_row, v_row.next_fire_at) end;
    -- The start itself checks the workflow, queue, args and start options: tried here and
    -- undone, so a schedule that could not start its runs is refused now, not at every fire.
    begin
        perform start_workflow(v_row.workflow_name, v_row.args, v_row.task_queue,
                               _schedule_run_id(v_row.id, v_row.next_fire_at), v_row.entity,
                               v_row.start_options);
        raise exception using errcode = 'P0001', message = '_schedule_row: trial start';
    exception when raise_exception then
        if sqlerrm <> '_schedule_row: trial start' then
            raise;
        end if;
    end;
    return v_row;
end
$$;

-- Creates a schedule: runs of p_workflow_name(p_args) on p_task_queue at every fire of
-- p_spec (a 5-field cron expression, a macro such as @daily, or "@every 10m"). Options:
-- _schedule_row. Returns the schedule's next fire. HM001 when the id is taken.
create or replace function create_schedule(
    p_schedule_id text,
    p_spec text,
    p_workflow_name text,
    p_args jsonb default '[]',
    p_task_queue text default null,
    p_options jsonb default '{}'
) returns timestamptz
language plpgsql
set search_path from current
as $$
declare
    v_row schedules := _schedule_row(p_schedule_id, p_spec, p_workflow_name, p_args,
                                     p_task_queue, p_options, _now());
begin
    insert into schedules values (v_row.*) on conflict (id) do nothing;
    if not found then
        raise exception using errcode = 'HM001',
            message = format('schedule "%s" already exists', p_schedule_id);
    end if;
    perform _notify('s:' || p_schedule_id);
    return v_row.next_fire_at;
end
$$;

-- The schedule row, locked for a change by its owner; HM002 when there is none.
create or replace function _locked_schedule(p_schedule_id text) returns schedules
language plpgsql
as $$
declare
    v_row schedules;
begin
    select * into v_row from schedules where id = p_schedule_id for update;
    if not found then
        raise exception using errcode = 'HM002',
            message = format('schedule "%s" not found', p_schedule_id);
    end if;
    return v_row;
end
$$;

-- Replaces a schedule's spec, workflow, args, queue and options (as create_schedule takes
-- them). Its status (pause_schedule and resume_schedule move it), counters, last fire and
-- last run are kept; the next fire is computed anew from now, so fires missed before the
-- update are not caught up. Returns the next fire.
create or replace function update_schedule(
    p_schedule_id text,
    p_spec text,
    p_workflow_name text,
    p_args jsonb default '[]',
    p_task_queue text default null,
    p_options jsonb default '{}'
) returns timestamptz
language plpgsql
set search_path from current
as $$
declare
    v_old schedules := _locked_schedule(p_schedule_id);
    v_row schedules := _schedule_row(p_schedule_id, p_spec, p_workflow_name, p_args,
                                     p_task_queue, p_options, _now());
begin
    if p_options ? 'paused' then
        raise exception using errcode = '22023',
            message = format('schedule "%s": update_schedule keeps the status; '
                             'pause_schedule and resume_schedule change it', p_schedule_id);
    end if;
    update schedules as s
       set spec = v_row.spec, timezone = v_row.timezone, workflow_name = v_row.workflow_name,
           args = v_row.args, task_queue = v_row.task_queue, entity = v_row.entity,
           start_options = v_row.start_options, overlap = v_row.overlap,
           catchup_window = v_row.catchup_window, jitter = v_row.jitter,
           next_fire_at = v_row.next_fire_at,
           -- A kept fire is looked at again by the next claim (_schedule_runs_ended).
           due_at = case when s.status = 'active'
                         then least(v_row.due_at,
                                    case when s.buffered_at is not null then v_row.updated_at end)
                    end,
           note = v_row.note, updated_at = v_row.updated_at
     where s.id = v_old.id;
    perform _notify('s:' || p_schedule_id);
    return v_row.next_fire_at;
end
$$;

-- Pauses (p_to 'paused') or resumes ('active') a schedule: the schedule state machine's two
-- moves. A resumed schedule fires next at its first fire after now: what it missed while
-- paused is not caught up.
create or replace function _move_schedule(p_schedule_id text, p_to text, p_owner text)
returns schedules
language plpgsql
as $$
declare
    v_row schedules := _locked_schedule(p_schedule_id);
    v_due timestamptz;
    v_now timestamptz := _now();
begin
    perform _check_transition('schedule', format('schedule "%s"', p_schedule_id), v_row.status,
                              p_to, p_owner);
    v_row.status := p_to;
    if p_to = 'active' then
        v_row.next_fire_at := _schedule_next(v_row, v_now);
    end if;
    -- Computed apart from the UPDATE, which Citus sends to the node of the table with the row
    -- typed as its shard (docs/citus.md).
    v_due := case when p_to = 'active'
                  then least(_schedule_due(v_row, v_row.next_fire_at),
                             case when v_row.buffered_at is not null then v_now end)
             end;
    update schedules
       set status = p_to, next_fire_at = v_row.next_fire_at,
           due_at = v_due,
           updated_at = v_now
     where id = p_schedule_id
    returning * into v_row;
    perform _notify('s:' || p_schedule_id);
    return v_row;
end
$$;

-- Pauses a schedule: it fires no more until resumed. HM003 when it is paused already.
create or replace function pause_schedule(p_schedule_id text) returns void
language plpgsql
set search_path from current
as $$
begin
    perform _move_schedule(p_schedule_id, 'paused', 'pause_schedule');
end
$$;

-- Resumes a paused schedule; returns its next fire. HM003 when it is active already.
create or replace function resume_schedule(p_schedule_id text) returns timestamptz
language plpgsql
set search_path from current
as $$
begin
    return (_move_schedule(p_schedule_id, 'active', 'resume_schedule')).next_fire_at;
end
$$;

-- Deletes a schedule. Its runs stay (their schedule_id still names it). HM002 when unknown.
create or replace function delete_schedule(p_schedule_id text) returns void
language plpgsql
set search_path from current
as $$
begin
    perform _locked_schedule(p_schedule_id);
    delete from schedules where id = p_schedule_id;
    perform _notify('s:' || p_schedule_id);
end
$$;

-- Starts the run of the schedule's fire at p_fire_at and records it as the last run;
-- returns the run's workflow id. Errors are start_workflow's (HM001: that fire already ran).
create or replace function _start_run(p_schedule schedules, p_fire_at timestamptz)
returns text
language plpgsql
as $$
declare
    v_id text := _schedule_run_id(p_schedule.id, p_fire_at);
begin
    perform start_workflow(p_schedule.workflow_name, p_schedule.args, p_schedule.task_queue,
                           v_id, p_schedule.entity, p_schedule.start_options);
    update jobs set schedule_id = p_schedule.id where id = v_id;
    update schedules
       set fires = fires + 1, last_fire_at = p_fire_at, last_run_id = v_id, last_error = null
     where id = p_schedule.id;
    return v_id;
end
$$;

-- _start_run for a claim, which must go on whatever happens: a fire whose run exists
-- already counts as skipped; a run that cannot start (its workflow's options were refused)
-- leaves its error in last_error, and the schedule moves on.
create or replace function _start_fire(p_schedule schedules, p_fire_at timestamptz)
returns void
language plpgsql
as $$
begin
    perform _start_run(p_schedule, p_fire_at);
exception
    when sqlstate 'HM001' then
        update schedules set skipped = skipped + 1 where id = p_schedule.id;
    when others then
        update schedules
           set last_error = jsonb_build_object('message', sqlerrm, 'sqlstate', sqlstate,
                                               'fire_at', p_fire_at)
         where id = p_schedule.id;
end
$$;

-- Whether the schedule's last run has not ended yet (overlap: skip, buffer_one).
create or replace function _schedule_busy(p_schedule schedules) returns boolean
language sql stable
as $$
    select exists(select 1 from jobs where id = p_schedule.last_run_id
                                   and status not in ('completed', 'failed', 'cancelled'))
$$;

-- The runs p_job_ids ended, started by the schedules p_schedule_ids (_transitions calls this
-- in the transaction that ends them): a schedule that kept a fire behind one of them
-- (buffer_one) is due at once, and its queue's workers are woken, so the next claim starts the
-- kept fire. The schedule row is locked before its kept fire is read: a claim that holds it
-- may be keeping a fire right now because this run looked alive to it, and once that claim
-- commits the fire is seen here. Claims hold it for milliseconds; a longer holder (an
-- application's open transaction around update_schedule) is not waited for beyond 100 ms, and
-- the owner functions that change a schedule make it due when it keeps a fire, so the next
-- claim looks again after them.
create or replace function _schedule_runs_ended(p_schedule_ids text[], p_job_ids text[])
returns void
language plpgsql
set lock_timeout = '100ms'
as $$
declare
    v_queue text;
begin
    perform from schedules as s
      join unnest(p_schedule_ids, p_job_ids) as e (schedule_id, job_id)
        on s.id = e.schedule_id and s.last_run_id = e.job_id
       for no key update of s;
    for v_queue in
        update schedules as s
           set due_at = least(s.due_at, _now())
          from unnest(p_schedule_ids, p_job_ids) as e (schedule_id, job_id)
         where s.id = e.schedule_id and s.last_run_id = e.job_id
           and s.buffered_at is not null and s.status = 'active'
        returning s.task_queue
    loop
        perform _notify('q:' || v_queue);
    end loop;
exception when lock_not_available then
    null;  -- held by a transaction of its own: that owner function made it due (see above)
end
$$;

-- Handles the due fires of one locked schedule, at most p_budget of them; returns what is
-- left of the budget. A fire older than the catch-up window is missed (the schedule jumps
-- to its first fire inside the window). The overlap policy decides about a fire whose
-- previous run has not ended: skip it, keep one (buffer_one: it starts once that run has
-- ended, which makes the schedule due: _schedule_runs_ended) or start it anyway (allow).
create or replace function _fire_schedule(p_id text, p_now timestamptz, p_budget integer)
returns integer
language plpgsql
as $$
declare
    v_s schedules;
    v_due timestamptz;
    v_budget integer := p_budget;
    v_next timestamptz;
begin
    select * into v_s from schedules where id = p_id;
    if v_s.buffered_at is not null and not _schedule_busy(v_s) then
        perform _start_fire(v_s, v_s.buffered_at);
        v_budget := v_budget - 1;
        update schedules set buffered_at = null where id = p_id returning * into v_s;
    end if;
    while v_budget > 0 and _schedule_due(v_s, v_s.next_fire_at) <= p_now loop
        v_budget := v_budget - 1;
        if _schedule_due(v_s, v_s.next_fire_at) < p_now - v_s.catchup_window then
            -- Straight to the first fire that may be inside the window (an every-second
            -- schedule that missed a week is not walked fire by fire).
            v_next := _schedule_next(v_s, greatest(v_s.next_fire_at, p_now - v_s.catchup_window
                                                   - v_s.jitter - interval '1 microsecond'));
        else
            if v_s.overlap = 'allow' or not _schedule_busy(v_s) then
                perform _start_fire(v_s, v_s.next_fire_at);
            elsif v_s.overlap = 'buffer_one' and v_s.buffered_at is null then
                update schedules set buffered_at = v_s.next_fire_at where id = p_id;
            else
                update schedules set skipped = skipped + 1 where id = p_id;
            end if;
            v_next := _schedule_next(v_s, v_s.next_fire_at);
        end if;
        update schedules set next_fire_at = v_next where id = p_id returning * into v_s;
    end loop;
    -- Computed apart from the UPDATE (Citus: docs/citus.md).
    v_due := _schedule_due(v_s, v_s.next_fire_at);
    update schedules set due_at = v_due, updated_at = p_now
     where id = p_id;
    return v_budget;
end
$$;

-- Called by every claim: fires the schedules that are due, without waiting for any (a
-- schedule another claim or an application's transaction holds is skipped, and fired by a
-- later claim). When none is due this is one probe of the schedules_due index. At most 100
-- runs start per call, so a long catch-up is spread over several claims.
create or replace function _fire_schedules(p_now timestamptz) returns void
language plpgsql
as $$
declare
    v_id text;
    v_budget integer := 100;
begin
    -- The common case, nothing due: a plain probe, half the cost of opening the locking loop.
    if not exists (select 1 from schedules where due_at <= p_now) then
        return;
    end if;
    for v_id in
        select id from schedules where due_at <= p_now order by due_at limit 10
           for update skip locked
    loop
        v_budget := _fire_schedule(v_id, p_now, v_budget);
        exit when v_budget <= 0;
    end loop;
end
$$;

-- Starts a run of the schedule now, whatever its overlap policy; returns its workflow id.
create or replace function trigger_schedule(p_schedule_id text) returns text
language plpgsql
set search_path from current
as $$
begin
    return _start_run(_locked_schedule(p_schedule_id), _now());
end
$$;
