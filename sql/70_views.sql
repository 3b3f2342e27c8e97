-- Inspection for people in psql and for `hotmesh list / show / queues / history`: read-only
-- views over the engine's tables, and the timeline of one workflow.

-- `create or replace view` keeps views that other objects depend on, but can only add columns
-- at the end. A view whose columns differ from the ones listed here is dropped first, so an
-- upgrade that reshapes it still installs (and names what depends on it if anything does).
create or replace function _drop_view_unless(p_view text, p_columns text[]) returns void
language plpgsql
set search_path from current
as $$
declare
    v_view regclass := to_regclass(p_view);
begin
    if v_view is not null
       and (select array_agg(a.attname::text order by a.attnum)
              from pg_attribute as a
             where a.attrelid = v_view and a.attnum > 0 and not a.attisdropped)
           is distinct from p_columns then
        execute format('drop view %s', v_view);
    end if;
end
$$;

-- metrics reads queue_backlog: made again on every migrate, so queue_backlog may change.
drop view if exists metrics;
select _drop_view_unless('workflows', array[
    'id', 'workflow_name', 'entity', 'status', 'task_queue', 'created_at', 'updated_at',
    'completed_at', 'attempt', 'waits', 'parent_id', 'expire_at', 'age', 'waiting_on', 'error',
    'blocked_by', 'schedule_id', 'build_id'
]);
select _drop_view_unless('queue_backlog', array[
    'task_queue', 'kind', 'ready', 'delayed', 'leased', 'lease_expired', 'dead',
    'oldest_ready_age', 'next_run_at', 'max_running', 'running', 'rate', 'per', 'tokens',
    'next_token_at', 'key_max_running'
]);
select _drop_view_unless('failed_workflows', array[
    'id', 'workflow_name', 'entity', 'task_queue', 'attempt', 'created_at', 'completed_at',
    'expire_at', 'error', 'error_message', 'error_code', 'error_type'
]);

-- The engine's clock (_now: the time every lease, timer and retry is measured against), as
-- the views read it.
create or replace function engine_clock() returns timestamptz
language sql stable
set search_path from current
as $$
    select _now()
$$;

-- What each unfinished thread of a workflow waits on, one row per wait with its JSON object:
-- a timer (sleep), a signal, an activity (running, queued or between attempts), a child
-- workflow, a retry of the workflow body, or a task parked as dead (it needs a person: see
-- retry_workflow). Rows of finished workflows are left to their readers to ignore (workflows
-- and workflow_waits do). A view, not a function the workflows view calls per row: Citus
-- cannot run a query over the tables that calls a function that queries them again
-- (docs/citus.md), and a view is planned with its reader's query.
--   select job_id, wait from my_app.workflow_wait_list where job_id = 'Q1';
create or replace view workflow_wait_list as
select
    s.job_id,
    1 as rank,
    s.thread,
    s.seq,
    jsonb_strip_nulls(jsonb_build_object(
        'thread', s.thread, 'seq', s.seq,
        'kind', case s.kind when 'sleep' then 'timer' else s.kind end,
        'name', nullif(s.name, ''),
        -- A deferred signal wait (retrying) has a re-check time, not a timeout.
        'until', case
            when s.kind in ('sleep', 'signal') and s.status = 'scheduled'
                then s.wake_at
        end,
        'workflow_id', case when s.kind = 'child' then s.input ->> 'workflow_id' end,
        'state', case
            when s.kind <> 'activity' then null
            when s.status = 'retrying' or t.error is not null then 'retrying'
            when t.state = 'leased' then 'running'
            when t.state = 'ready' then 'queued'
            else coalesce(t.state, 'no task')
        end,
        'retry_at', case
            when s.status = 'retrying' then s.wake_at
            when t.error is not null and t.state = 'ready' then t.run_at
        end,
        'attempt', case when s.kind = 'activity' then coalesce(t.attempt, s.attempt) end,
        'error', case
            when s.status = 'retrying' then s.error ->> 'message'
            else t.error ->> 'message'
        end
    )) as wait
from steps as s
left join tasks as t
    on
        s.job_id = t.job_id and s.thread = t.thread and s.seq = t.seq
        and t.kind = 'activity'
where
    s.status in ('scheduled', 'retrying')
    and s.kind in ('sleep', 'signal', 'activity', 'child')
union all
select
    t.job_id,
    case when t.state = 'dead' then 0 else 2 end as rank,
    t.thread,
    coalesce(t.seq, 0) as seq,
    jsonb_strip_nulls(jsonb_build_object(
        'thread', t.thread, 'seq', t.seq,
        'kind', case when t.state = 'dead' then 'dead' else 'workflow_retry' end,
        'name', t.name, 'task_id', t.id,
        'retry_at', case when t.state <> 'dead' then t.run_at end,
        'error', t.error ->> 'message'
    )) as wait
from tasks as t
where
    t.state = 'dead'
    or (
        t.kind = 'workflow' and t.state = 'ready' and t.error is not null
        and t.run_at > engine_clock()
    );

-- The waits of one workflow as a JSON array (workflow_wait_list, in order: main thread
-- first, then by thread, kind and position); finished workflows wait on nothing. Public
-- (like the two below): a view's reader needs EXECUTE on every function the view calls, and
-- no private helper (`_name`) is executable by anyone but the owner.
create or replace function workflow_waits(p_job_id text) returns jsonb
language sql stable
set search_path from current
as $$
    select coalesce(jsonb_agg(w.wait order by w.thread <> 'main', w.thread, w.rank, w.seq),
                    '[]'::jsonb)
      from workflow_wait_list as w
     where w.job_id = p_job_id
       and exists (select 1 from jobs as j
                    where j.id = p_job_id and j.status in ('pending', 'running', 'waiting'))
$$;

-- The waits as one line of text: "timer until ...", "signal approve", "activity charge
-- (retry 2 at ...)", "child order-7", "dead: ..."; threads other than main are prefixed.
create or replace function waits_text(p_waits jsonb) returns text
language sql immutable
set search_path from current
as $$
    select nullif(string_agg(
        case when w ->> 'thread' <> 'main' then (w ->> 'thread') || ': ' else '' end
        || case w ->> 'kind'
            when 'timer' then 'timer until ' || (w ->> 'until')
            when 'signal' then 'signal ' || (w ->> 'name')
                || coalesce(' (timeout ' || (w ->> 'until') || ')', '')
            when 'activity' then 'activity ' || (w ->> 'name') || ' ('
                || case when w ->> 'state' = 'retrying'
                        then 'retry ' || ((w ->> 'attempt')::integer + 1)
                             || coalesce(' at ' || (w ->> 'retry_at'), '')
                        else w ->> 'state' end || ')'
            when 'child' then 'child ' || (w ->> 'workflow_id')
            when 'workflow_retry' then 'retry of ' || (w ->> 'name') || ' at '
                || (w ->> 'retry_at')
            when 'dead' then 'dead task ' || (w ->> 'task_id') || ' (' || (w ->> 'name') || ')'
                || coalesce(': ' || (w ->> 'error'), '')
            else w ->> 'kind'
        end, ', ' order by n), '')
      from jsonb_array_elements(p_waits) with ordinality as e (w, n)
$$;

-- Who holds a workflow's row in a transaction still open, given the row's xmax: "pid N since
-- <start of its transaction>" (null when nobody does). Every transaction holds a lock on its
-- own xid, so pg_locks maps a live xmax to its backend; a committed or rolled-back one is not
-- there. Claims skip such a row and the worker's other calls wait for it at most lock_timeout
-- (docs/reliability.md), so this is why that one workflow is delayed. Security definer (like
-- every public function): it reads pg_stat_activity's xact_start of other roles' sessions.
-- (A row that several transactions share-lock at once has a multixact id in xmax; it is not
-- resolved here.)
create or replace function workflow_blocker(p_xmax xid) returns text
language sql stable
set search_path from current
as $$
    select format('pid %s since %s', l.pid,
                  coalesce(to_char(a.xact_start at time zone 'UTC',
                                   'YYYY-MM-DD"T"HH24:MI:SS"Z"'), '?'))
      from pg_locks as l
      left join pg_stat_activity as a on a.pid = l.pid
     where l.locktype = 'transactionid' and l.mode = 'ExclusiveLock' and l.granted
       and l.transactionid = p_xmax
     limit 1
$$;

-- Every workflow with its status, age and, while it is unfinished, what it waits on
-- (waiting_on: text; waits: the same as JSON), and the build id of its last activation.
-- `error` is the message of the error the workflow failed with, or of its last failed attempt
-- while it retries.
--   select id, status, age, waiting_on from my_app.workflows where status = 'waiting';
create or replace view workflows as
with clock as (
    select engine_clock() as now
),

-- The transactions running now (each holds a lock on its own xid): read once per query, so
-- only a row whose xmax is one of them calls workflow_blocker. An xmax left by a transaction
-- that ended (a committed share lock stays in the row) costs nothing more.
live_xids as (
    select l.transactionid as xid
    from pg_locks as l
    where
        l.locktype = 'transactionid'
        and l.mode = 'ExclusiveLock'
        and l.granted
),

job_waits as (
    select
        j.*,
        j.xmax,
        coalesce(jw.waits, '[]'::jsonb) as waits
    from jobs as j
    left join lateral (
        select jsonb_agg(w.wait order by w.thread <> 'main', w.thread, w.rank, w.seq) as waits
        from workflow_wait_list as w
        where
            w.job_id = j.id
            and j.status in ('pending', 'running', 'waiting')
    ) as jw on true
)

-- A view's new columns go at its end (create or replace view), computed or not.
select  -- noqa: ST06
    w.id,
    w.workflow_name,
    w.entity,
    w.status,
    w.task_queue,
    w.created_at,
    w.updated_at,
    w.completed_at,
    w.attempt,
    w.waits,
    w.parent_id,
    w.expire_at,
    c.now - w.created_at as age,
    waits_text(w.waits) as waiting_on,
    w.error ->> 'message' as error,
    -- "pid N since T": an open transaction holds this workflow's row (an application's
    -- entity_merge, a psql session); the workflow is delayed until it ends.
    case
        when
            w.status in ('pending', 'running', 'waiting')
            and w.xmax in (select x.xid from live_xids as x)
            then workflow_blocker(w.xmax)
    end as blocked_by,
    -- The schedule that started this run (sql/48_schedules.sql), if one did.
    w.schedule_id,
    -- The code (build id) of its last activation (sql/30_tasks.sql: claim_tasks).
    w.build_id
from job_waits as w
cross join clock as c;

-- Each schedule with its next and last fires: when it fires next (next_fire_at, and due_at
-- with its jitter, null while paused), its last fire and how that run stands, a fire that
-- waits for the previous run (buffer_one), how many runs it started and how many fires it
-- skipped, and the error of a run that could not start.
--   select id, spec, next_fire_at, last_fire_at, last_run_status from my_app.schedule_fires;
create or replace view schedule_fires as
select
    s.id,
    s.spec,
    s.timezone,
    s.status,
    s.workflow_name,
    s.task_queue,
    s.overlap,
    s.catchup_window,
    s.jitter,
    s.next_fire_at,
    s.due_at,
    s.last_fire_at,
    s.last_run_id,
    j.status as last_run_status,
    s.buffered_at,
    s.fires,
    s.skipped,
    s.last_error,
    s.note,
    s.created_at,
    s.updated_at
from schedules as s
left join jobs as j on s.last_run_id = j.id;

-- The task backlog per task queue and kind (workflow activations, activities): ready (due
-- now), delayed (due later: timers, retries), leased (running; lease_expired of them have
-- outlived their lease, their worker is probably gone, and any worker may take them over),
-- dead (parked until a person retries them), and how long the oldest ready task has waited.
-- A limited queue (set_queue_limits) shows its limits and where it stands, on each of its
-- rows: running (of every kind) against max_running, the tokens left and the next one's time,
-- the limits per key (get_queue_limits lists limited queues that have no task too).
--   select * from my_app.queue_backlog order by ready desc;
create or replace view queue_backlog as
with clock as (
    select engine_clock() as now
),

-- What get_queue_limits returns, read from its tables here: Citus cannot run a function
-- that queries the tables from a query over them (docs/citus.md). The tokens are
-- _bucket_tokens' (a view may call only public functions).
bucket as (
    select
        q.*,
        least(
            q.rate::double precision,
            coalesce(
                b.tokens + greatest(extract(epoch from c.now - b.refilled_at), 0)
                / extract(epoch from q.per) * q.rate, q.rate
            )
        ) as now_tokens
    from queue_limits as q
    cross join clock as c
    left join queue_buckets as b on q.task_queue = b.task_queue
),

limits as (
    select
        l.task_queue,
        l.max_running,
        l.rate,
        l.per,
        l.now_tokens as tokens,
        l.key_max_running,
        l.key_rate,
        l.key_per,
        (
            select count(*) from tasks as r
            where
                r.task_queue = l.task_queue and r.state = 'leased'
                and r.lease_expires_at > c.now
        ) as running,
        case
            when l.now_tokens < l.rate
                then c.now + (1 - l.now_tokens + floor(l.now_tokens)) * l.per / l.rate
        end as next_token_at
    from bucket as l
    cross join clock as c
)

select
    t.task_queue,
    t.kind,
    count(*) filter (where t.state = 'ready' and t.run_at <= c.now) as ready,
    count(*) filter (where t.state = 'ready' and t.run_at > c.now) as delayed,
    count(*) filter (where t.state = 'leased') as leased,
    count(*) filter (where t.state = 'leased' and t.lease_expires_at <= c.now) as lease_expired,
    count(*) filter (where t.state = 'dead') as dead,
    c.now - min(t.run_at) filter (
        where t.state = 'ready' and t.run_at <= c.now
    ) as oldest_ready_age,
    min(t.run_at) filter (where t.state = 'ready' and t.run_at > c.now) as next_run_at,
    -- One row of limits per queue: min() only carries it through the grouping.
    min(l.max_running) as max_running,
    min(l.running) as running,
    min(l.rate) as rate,
    min(l.per) as per,
    min(l.tokens) as tokens,
    min(l.next_token_at) as next_token_at,
    min(l.key_max_running) as key_max_running,
    min(l.key_rate) as key_rate,
    min(l.key_per) as key_per
from tasks as t
cross join clock as c
left join limits as l on t.task_queue = l.task_queue
group by t.task_queue, t.kind, c.now;

-- Failed workflows with their error: message, code (598 fatal, 597 retries exhausted, 596
-- timeout, ...), the original exception type, and when they failed.
--   select id, workflow_name, error_code, error_message from my_app.failed_workflows
--    order by completed_at desc limit 20;
create or replace view failed_workflows as
select
    j.id,
    j.workflow_name,
    j.entity,
    j.task_queue,
    j.attempt,
    j.created_at,
    j.completed_at,
    j.expire_at,
    j.error,
    j.error ->> 'message' as error_message,
    case
        when (j.error ->> 'code') ~ '^[0-9]{1,9}$' then (j.error ->> 'code')::integer
    end as error_code,
    j.error ->> 'type' as error_type
from jobs as j
where j.status = 'failed';

-- The views' helpers were private until they had to be executable by the views' readers:
-- replaced by workflow_waits and waits_text above.
drop function if exists _waits(text);
drop function if exists _waits_text(jsonb);

-- The database's own truth as Prometheus series (docs/metrics.md; `hotmesh metrics` prints
-- them): the backlog per queue and kind, the age of its oldest ready task, the tasks running,
-- and the unfinished workflows per queue and status. One scrape target per database, however
-- many workers. The workflow counts read every unfinished job row: scrape every 30 s or
-- slower on a big app.
--   select * from my_app.metrics;
create or replace view metrics as
select
    m.metric,
    jsonb_build_object('queue', b.task_queue, 'kind', b.kind) as labels,
    m.value
from queue_backlog as b
cross join
    lateral (
        values
        ('hotmesh_tasks_ready', b.ready::float8),
        ('hotmesh_tasks_delayed', b.delayed::float8),
        ('hotmesh_tasks_running', b.leased::float8),
        ('hotmesh_tasks_lease_expired', b.lease_expired::float8),
        ('hotmesh_tasks_dead', b.dead::float8),
        (
            'hotmesh_oldest_ready_task_seconds',
            coalesce(extract(epoch from b.oldest_ready_age)::float8, 0)
        )
    ) as m (metric, value)
union all
select
    'hotmesh_workflows' as metric,
    jsonb_build_object('queue', j.task_queue, 'status', j.status) as labels,
    count(*)::float8 as value
from jobs as j
where j.status in ('pending', 'running', 'waiting')
group by j.task_queue, j.status;
