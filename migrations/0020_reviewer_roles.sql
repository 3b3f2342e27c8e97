-- Reviewers restricted to the human tasks of some roles (docs/people.md; opt-in): a database
-- role listed here (a review screen's login, or the role PostgREST sets from a token's role
-- claim) may list, read and act on the tasks of these task roles only; one not listed is not
-- restricted. Written by set_reviewer_roles, which only the schema's owner may call.
create table reviewer_roles (
    db_role text not null,
    task_role text not null,
    primary key (db_role, task_role)
);
