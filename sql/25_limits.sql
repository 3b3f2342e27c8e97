-- Flow control (docs/flow-control.md): per task queue a limit on running tasks, a token
-- bucket of starts per interval and a limit per concurrency key, all enforced by the claim
-- (claim_tasks hands a limited queue to _admit), so they hold however many workers claim.
-- A task counts as running from its claim until it is finished, given back or its lease
-- expires; every task on the queue counts, workflow activations included.

-- Sets the limits of a task queue (null: no limit of that kind); all null removes them.
-- key_rate per key_per is a token bucket per concurrency key, as rate per per is the queue's.
-- Changes apply to the next claim, and the queue's workers are woken: a raised or removed
-- limit releases waiting tasks at once. A queue needs no task yet to be limited (a limit
-- set before the first start holds from that start). The parameters have plain names so
-- that a call reads `set_queue_limits('llm', max_running => 4, rate => 60, per => '1 minute')`.
create or replace function set_queue_limits(
    p_task_queue text,
    max_running integer default null,
    rate integer default null,
    per interval default null,
    key_max_running integer default null,
    key_rate integer default null,
    key_per interval default null
) returns void
language plpgsql
set search_path from current
as $$
begin
    if coalesce(p_task_queue, '') = '' then
        raise exception using errcode = '22023', message = 'task_queue is required';
    end if;
    perform _check_name('task_queue', p_task_queue);
    perform _check_limit('max_running', set_queue_limits.max_running);
    perform _check_limit('rate', set_queue_limits.rate);
    perform _check_limit('key_max_running', set_queue_limits.key_max_running);
    perform _check_limit('key_rate', set_queue_limits.key_rate);
    perform _check_rate(p_task_queue, '', set_queue_limits.rate, set_queue_limits.per);
    perform _check_rate(p_task_queue, 'key_', set_queue_limits.key_rate,
                        set_queue_limits.key_per);
    if num_nonnulls(set_queue_limits.max_running, set_queue_limits.rate,
                    set_queue_limits.key_max_running, set_queue_limits.key_rate) = 0 then
        delete from queue_limits as l where l.task_queue = p_task_queue;
    else
        insert into queue_limits as l (task_queue, max_running, rate, per, key_max_running,
                                       key_rate, key_per, updated_at)
        values (p_task_queue, set_queue_limits.max_running, set_queue_limits.rate,
                set_queue_limits.per, set_queue_limits.key_max_running,
                set_queue_limits.key_rate, set_queue_limits.key_per, _now())
        on conflict (task_queue) do update
           set max_running = excluded.max_running, rate = excluded.rate, per = excluded.per,
               key_max_running = excluded.key_max_running, key_rate = excluded.key_rate,
               key_per = excluded.key_per, updated_at = excluded.updated_at;
    end if;
    perform _notify('q:' || p_task_queue);
end
$$;

-- A rate and its interval go together; the interval is from 1 ms to 366 days. p_prefix
-- names the pair: '' (rate, per) or 'key_' (key_rate, key_per).
create or replace function _check_rate(
    p_task_queue text, p_prefix text, p_rate integer, p_per interval
) returns void
language plpgsql immutable
as $$
begin
    if (p_rate is null) <> (p_per is null) then
        raise exception using errcode = '22023',
            message = format('queue "%s": %srate and %sper go together (%srate => 60, %sper => '
                             '''1 minute''), not %srate %s per %s', p_task_queue, p_prefix,
                             p_prefix, p_prefix, p_prefix, p_prefix,
                             coalesce(p_rate::text, 'null'), coalesce(p_per::text, 'null'));
    end if;
    if not p_per between interval '1 millisecond' and interval '366 days' then
        raise exception using errcode = '22023',
            message = format('%sper must be from 1 millisecond to 366 days, not %s', p_prefix,
                             p_per);
    end if;
end
$$;

create or replace function _check_limit(p_what text, p_value integer) returns void
language plpgsql immutable
as $$
begin
    if p_value < 1 then
        raise exception using errcode = '22023',
            message = format('%s must be >= 1 (null: no limit), not %s', p_what, p_value);
    end if;
end
$$;

-- A concurrency key names what shares a per-key limit (a customer, a tenant): 1 to 255
-- characters, or null for none.
create or replace function _check_concurrency_key(p_key text) returns void
language plpgsql immutable
as $$
begin
    if p_key = '' or length(p_key) > 255 then
        raise exception using errcode = '22023',
            message = format('concurrency_key must be 1 to 255 characters, not %s long',
                             length(p_key));
    end if;
end
$$;

-- The rank of a new task of key p_key on a queue: after the key's last one, and never before
-- where the rotation stands (the lowest rank still waiting), so a key that arrives late takes
-- its turn instead of overtaking every key that waits. Null without a key (callers on the hot
-- path skip the call then).
create or replace function _key_rank(p_task_queue text, p_key text) returns bigint
language sql stable
as $$
    select case when p_key is not null then greatest(
        (select t.key_rank + 1 from tasks as t
          where t.task_queue = p_task_queue and t.concurrency_key = p_key
            and t.key_rank is not null
          order by t.key_rank desc limit 1),
        (select t.key_rank from tasks as t
          where t.task_queue = p_task_queue and t.key_rank is not null and t.state = 'ready'
          order by t.key_rank limit 1),
        0) end
$$;

-- The tokens in a bucket of p_rate per p_per at p_now that held p_tokens at p_refilled_at:
-- full (p_rate) before its first claim (null p_tokens), refilled at p_rate per p_per since,
-- never above p_rate (the burst a quiet queue or key saves up). Null without a rate.
create or replace function _bucket_tokens(
    p_rate integer, p_per interval, p_tokens double precision, p_refilled_at timestamptz,
    p_now timestamptz
) returns double precision
language sql immutable
as $$
    select case when p_rate is not null then least(
        p_rate::double precision,
        coalesce(p_tokens + greatest(extract(epoch from p_now - p_refilled_at), 0)
                 / extract(epoch from p_per) * p_rate,
                 p_rate)) end
$$;

-- The tokens in a queue's bucket at p_now (_bucket_tokens).
create or replace function _tokens(
    p_limits queue_limits, p_bucket queue_buckets, p_now timestamptz
) returns double precision
language sql immutable
as $$
    select _bucket_tokens(p_limits.rate, p_limits.per, p_bucket.tokens, p_bucket.refilled_at,
                          p_now)
$$;

-- Claims for queues of which some have limits (claim_tasks' plain path serves the others):
-- returns the ids of up to p_max_tasks due tasks it admitted, locked for the claim. Claims of
-- one limited queue take turns (a transaction-level advisory lock, which no application
-- takes), so the running tasks they count are those committed before; a claim never waits on
-- a task row (SKIP LOCKED) nor on queue_limits (read, not locked).
create or replace function _admit(p_task_queues text[], p_max_tasks integer, p_now timestamptz)
returns bigint[]
language plpgsql
as $$
declare
    v_queue text;
    v_limits queue_limits;
    v_bucket queue_buckets;
    v_tokens double precision;
    v_slots integer;
    v_taken bigint[];
    v_ids bigint[] := '{}'::bigint[];
begin
    for v_queue in select distinct q.name from unnest(p_task_queues) as q (name) order by 1 loop
        v_slots := p_max_tasks - cardinality(v_ids);
        exit when v_slots < 1;
        v_limits := null;
        v_tokens := null;
        if exists (select 1 from queue_limits as l where l.task_queue = v_queue) then
            perform pg_advisory_xact_lock(
                hashtextextended('hotmesh.limits:' || current_schema() || '.' || v_queue, 0));
            select * into v_limits from queue_limits as l where l.task_queue = v_queue;
        end if;
        if v_limits.max_running is not null then
            v_slots := least(v_slots, v_limits.max_running - (
                select count(*) from tasks as t
                 where t.task_queue = v_queue and t.state = 'leased'
                   and t.lease_expires_at > p_now));
        end if;
        if v_limits.rate is not null then
            -- The bucket apart (Citus: docs/citus.md).
            select * into v_bucket from queue_buckets as b where b.task_queue = v_queue;
            v_tokens := _tokens(v_limits, v_bucket, p_now);
            v_slots := least(v_slots, floor(v_tokens)::integer);
        end if;
        continue when v_slots < 1;
        if v_limits.task_queue is not null then
            -- Buckets full again are as good as none (and a removed key rate leaves none).
            delete from key_buckets as b
             where b.task_queue = v_queue
               and (v_limits.key_per is null or b.refilled_at < p_now - v_limits.key_per);
        end if;
        v_taken := _admit_from(v_queue, v_slots, v_limits.key_max_running, v_limits.key_rate,
                               v_limits.key_per, p_now);
        if v_tokens is not null and cardinality(v_taken) > 0 then
            insert into queue_buckets as b (task_queue, tokens, refilled_at)
            values (v_queue, v_tokens - cardinality(v_taken), p_now)
            on conflict (task_queue) do update
               set tokens = excluded.tokens, refilled_at = excluded.refilled_at;
        end if;
        v_ids := v_ids || v_taken;
    end loop;
    return v_ids;
end
$$;

-- Up to p_slots due tasks of one queue, in claim order (priority, then rotation rank, then
-- due time), skipping the tasks of a key that already runs p_key_max of them or whose bucket
-- (p_key_rate per p_key_per, key_buckets) has no token left: a key at its limit waits without
-- holding back the keys behind it; the buckets of the keys it takes are drawn on. It reads
-- the waiting tasks in claim order a window at a time, a larger one only while keys at their
-- limit leave slots unfilled,
-- and at most 16 x p_slots + 256 of them, so its cost does not grow with the backlog; the
-- rank order puts at most one task per key at each rank, so skipped keys use little of it.
create or replace function _admit_from(
    p_task_queue text, p_slots integer, p_key_max integer, p_key_rate integer,
    p_key_per interval, p_now timestamptz
) returns bigint[]
language plpgsql
as $$
declare
    v_keyed boolean := p_key_max is not null or p_key_rate is not null;
    v_window integer := case when v_keyed then p_slots * 2 + 16 else p_slots end;
    v_seen integer;
    v_chosen bigint[];
    v_taken bigint[];
begin
    loop
        with candidate as (
            select t.id, t.concurrency_key, row_number() over () as ord
              from (select t.id, t.concurrency_key
                      from tasks as t
                     where t.task_queue = p_task_queue and t.state <> 'dead'
                       and t.run_at <= p_now
                       -- timed out but held while the timeouts fired (25_timeouts.sql)
                       and (t.timeout_at is null or t.timeout_at > p_now)
                     order by t.priority desc, t.key_rank nulls first, t.run_at, t.id
                     limit v_window) as t
        ), busy as (
            select r.concurrency_key, count(*) as running
              from tasks as r
             where p_key_max is not null and r.task_queue = p_task_queue
               and r.state = 'leased' and r.lease_expires_at > p_now
               and r.concurrency_key is not null
             group by r.concurrency_key
        ), numbered as (
            select c.id, c.ord, coalesce(b.running, 0) as running, c.concurrency_key,
                   row_number() over (partition by c.concurrency_key order by c.ord) as nth,
                   _bucket_tokens(p_key_rate, p_key_per, k.tokens, k.refilled_at, p_now)
                       as tokens
              from candidate as c
              left join busy as b on b.concurrency_key = c.concurrency_key
              left join key_buckets as k
                on p_key_rate is not null and k.task_queue = p_task_queue
               and k.concurrency_key = c.concurrency_key
        )
        select (select count(*) from candidate),
               (select array_agg(n.id order by n.ord)
                  from (select n.id, n.ord from numbered as n
                         where n.concurrency_key is null
                            or ((p_key_max is null or n.running + n.nth <= p_key_max)
                                and (p_key_rate is null or n.nth <= n.tokens))
                         order by n.ord limit p_slots) as n)
          into v_seen, v_chosen;
        exit when coalesce(cardinality(v_chosen), 0) >= p_slots or v_seen < v_window
                  or v_window >= p_slots * 16 + 256;
        v_window := least(v_window * 4, p_slots * 16 + 256);
    end loop;
    -- Taken now; a task changed meanwhile is judged again by its committed row.
    select array_agg(t.id) into v_taken
      from (select t.id from tasks as t
             where t.id = any(v_chosen) and t.state <> 'dead' and t.run_at <= p_now
               and (t.timeout_at is null or t.timeout_at > p_now)
             order by t.id
               for update skip locked) as t;
    if p_key_rate is not null and v_taken is not null then
        insert into key_buckets as b (task_queue, concurrency_key, tokens, refilled_at)
        select p_task_queue, t.concurrency_key,
               _bucket_tokens(p_key_rate, p_key_per, min(k.tokens), min(k.refilled_at), p_now)
               - count(*),
               p_now
          from tasks as t
          left join key_buckets as k
            on k.task_queue = p_task_queue and k.concurrency_key = t.concurrency_key
         where t.id = any(v_taken) and t.concurrency_key is not null
         group by t.concurrency_key
        on conflict (task_queue, concurrency_key) do update
           set tokens = excluded.tokens, refilled_at = excluded.refilled_at;
    end if;
    return coalesce(v_taken, '{}');
end
$$;

-- When a limited queue's due tasks may next be admitted: at p_due, or at its next token when
-- the bucket is empty. Due tasks held back by a running limit have no such moment (a finishing
-- task frees the slot, and its worker claims again at once): other workers look again within
-- a second rather than at once, which would loop.
create or replace function _limited_due(p_task_queue text, p_due timestamptz)
returns timestamptz
language plpgsql stable
as $$
declare
    v_now timestamptz := _now();
    v_limits queue_limits;
    v_bucket queue_buckets;
    v_tokens double precision;
    v_due timestamptz := p_due;
    v_key_due timestamptz;
begin
    select * into v_limits from queue_limits as l where l.task_queue = p_task_queue;
    if p_due is null or not found then
        return p_due;
    end if;
    -- The bucket apart (Citus: docs/citus.md).
    select * into v_bucket from queue_buckets as b where b.task_queue = p_task_queue;
    v_tokens := _tokens(v_limits, v_bucket, v_now);
    if v_tokens < 1 then
        v_due := greatest(v_due, v_now + (1 - v_tokens) * v_limits.per / v_limits.rate);
    end if;
    if v_due <= v_now and v_limits.key_rate is not null then
        -- Held back by a key's empty bucket, perhaps: its next token may come within a second.
        v_key_due := (select min(b.refilled_at
                                 + (1 - b.tokens) * v_limits.key_per / v_limits.key_rate)
                        from key_buckets as b
                       where b.task_queue = p_task_queue and b.tokens < 1);
        if v_key_due > v_now and v_key_due < v_now + interval '1 second' then
            return v_key_due;
        end if;
    end if;
    return case when v_due <= v_now then v_now + interval '1 second' else v_due end;
end
$$;

-- Every limited queue with its limits and where it stands: running (tasks leased and not
-- expired) against max_running, the tokens in its bucket and when the next one comes.
--   select * from my_app.get_queue_limits();
create or replace function get_queue_limits()
returns table (
    task_queue text,
    max_running integer,
    running bigint,
    rate integer,
    per interval,
    tokens double precision,
    next_token_at timestamptz,
    key_max_running integer,
    key_rate integer,
    key_per interval,
    updated_at timestamptz
)
language plpgsql stable
set search_path from current
as $$
declare
    v_now timestamptz := _now();
    v_limits queue_limits;
    v_bucket queue_buckets;
begin
    -- One queue at a time (there are few): _tokens takes the rows, which Citus cannot pass
    -- in the query it sends to the node of the tables (docs/citus.md).
    for v_limits in select * from queue_limits as l order by l.task_queue loop
        select * into v_bucket from queue_buckets as b where b.task_queue = v_limits.task_queue;
        task_queue := v_limits.task_queue;
        max_running := v_limits.max_running;
        running := (select count(*) from tasks as t
                     where t.task_queue = v_limits.task_queue and t.state = 'leased'
                       and t.lease_expires_at > v_now);
        rate := v_limits.rate;
        per := v_limits.per;
        tokens := _tokens(v_limits, v_bucket, v_now);
        next_token_at := case when tokens < v_limits.rate
                              then v_now + (1 - tokens + floor(tokens)) * v_limits.per
                                   / v_limits.rate end;
        key_max_running := v_limits.key_max_running;
        key_rate := v_limits.key_rate;
        key_per := v_limits.key_per;
        updated_at := v_limits.updated_at;
        return next;
    end loop;
end
$$;

-- The concurrency keys of a task queue that have tasks, busiest first: how many of each run
-- now (leased, within their lease), are ready, wait for a later time (timers, retries), and
-- how long the oldest ready one has waited; with a key rate (set_queue_limits' key_rate), the
-- tokens left in the key's bucket and when its next one comes. At most p_limit keys (1 to
-- 10,000); the tasks_key index serves it. The per-key view of flow control (the dashboard's
-- queue page).
--   select * from my_app.queue_keys('ledger');
create or replace function queue_keys(p_task_queue text, p_limit integer default 100)
returns table (
    concurrency_key text,
    running bigint,
    ready bigint,
    delayed bigint,
    oldest_ready_age interval,
    tokens double precision,
    next_token_at timestamptz
)
language plpgsql stable
set search_path from current
as $$
begin
    if coalesce(p_task_queue, '') = '' then
        raise exception using errcode = '22023', message = 'task_queue is required';
    end if;
    if p_limit is null or p_limit not between 1 and 10000 then
        raise exception using errcode = '22023',
            message = format('limit must be from 1 to 10000, not %s',
                             coalesce(p_limit::text, 'null'));
    end if;
    return query
    select k.concurrency_key, k.running, k.ready, k.delayed, k.oldest_ready_age, b.tokens,
           case when b.tokens < l.key_rate
                then k.now + (1 - b.tokens + floor(b.tokens)) * l.key_per / l.key_rate end
      from (select t.concurrency_key,
                   count(*) filter (where t.state = 'leased'
                                      and t.lease_expires_at > c.now) as running,
                   count(*) filter (where t.state = 'ready' and t.run_at <= c.now) as ready,
                   count(*) filter (where t.state = 'ready' and t.run_at > c.now) as delayed,
                   c.now - min(t.run_at) filter (where t.state = 'ready'
                                                   and t.run_at <= c.now) as oldest_ready_age,
                   c.now
              from tasks as t
             cross join (select _now() as now) as c
             where t.task_queue = p_task_queue and t.concurrency_key is not null
               and t.state <> 'dead'
             group by t.concurrency_key, c.now
             order by 2 desc, 3 desc, 1
             limit p_limit) as k
      left join queue_limits as l on l.task_queue = p_task_queue
      left join lateral (
          select _bucket_tokens(l.key_rate, l.key_per, kb.tokens, kb.refilled_at, k.now)
                     as tokens
            from (select) as one
            left join key_buckets as kb
              on kb.task_queue = p_task_queue and kb.concurrency_key = k.concurrency_key
      ) as b on true
     order by k.running desc, k.ready desc, k.concurrency_key;
end
$$;
