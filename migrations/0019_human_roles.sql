-- The roles human tasks are asked of (docs/people.md): a role is known once a workflow asked a
-- task of it (its role or escalate_to). A call that acts on a role (claim_next_human_task,
-- reassign_human_task) refuses one that is not known, so a misspelt role is an error rather
-- than an inbox that stays empty. Written only by ask_human (a worker's transaction).
create table human_roles (
    role text primary key,
    first_asked_at timestamptz not null
);

insert into human_roles (role, first_asked_at)
select
    r.role,
    min(r.created_at) as first_asked_at
from (
    select
        role,
        created_at
    from human_tasks
    union all
    select
        escalate_to as role,
        created_at
    from human_tasks
    where escalate_to is not null
) as r
group by r.role;
