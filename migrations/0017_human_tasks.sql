-- Human tasks (sql/49_human_tasks.sql, docs/people.md): a person's part in a workflow. A row is
-- written with the workflow's wait (ask_human), in the same transaction, and closed with the
-- answer that completes that wait. Keyed by job_id first like every per-workflow table.
create table human_tasks (
    id bigint generated always as identity,
    job_id text not null,
    -- The waiting step: the wait that resolve_human_task completes.
    thread text not null,
    seq integer not null,
    signal_id text not null,
    role text not null,
    -- null: anyone with the role.
    assignee text,
    type text not null,
    -- Higher first, like a task's priority.
    priority integer not null default 0,
    title text not null,
    description text,
    metadata jsonb not null default '{}',
    -- The JSON schema (a subset: docs/people.md) the answer must match; null: any answer.
    form jsonb,
    -- The SLA: when the task expires (or escalates); null: never.
    due_at timestamptz,
    -- At due_at the task is re-opened for this role instead, due escalate_after later.
    escalate_to text,
    escalate_after interval,
    status text not null default 'open',
    created_at timestamptz not null,
    claimed_by text,
    claimed_at timestamptz,
    -- Who closed it (resolved, or 'engine' when it expired or its workflow ended) and when.
    resolved_by text,
    resolved_at timestamptz,
    answer jsonb,
    -- Append-only: comments and milestones ({"at", "who", "event", ...}).
    events jsonb not null default '[]',
    primary key (job_id, id),
    constraint human_tasks_step unique (job_id, thread, seq),
    constraint human_tasks_status check (
        status in ('open', 'claimed', 'resolved', 'expired', 'cancelled')
    ),
    constraint human_tasks_metadata check (jsonb_typeof(metadata) = 'object')
);

-- A task's calls name it by id alone.
create index human_tasks_id on human_tasks (id);
-- The inbox of a role (list_human_tasks, claim_next_human_task): most urgent first.
-- A task without a due time sorts after those with one.
create index human_tasks_inbox on human_tasks (
    role, priority desc, (coalesce(due_at, 'infinity'::timestamptz)), id
)
where status in ('open', 'claimed');
-- The claim path's probe for a due SLA: holds only live tasks with a due time.
create index human_tasks_due on human_tasks (due_at)
where status in ('open', 'claimed') and due_at is not null;
create index human_tasks_metadata on human_tasks using gin (metadata jsonb_path_ops);
