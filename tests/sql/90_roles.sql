-- Login roles (sql/80_roles.sql): create_login makes <app>_<group>_<name> in the app's worker
-- or app group with a generated password (stored as a SCRAM hash), list_logins shows every
-- login of the groups, rotate_login changes the password, revoke_login drops the role; a
-- login made by hand is listed but never changed; bad input changes nothing; none of these
-- is executable by the app's roles.
begin;
\ir _preamble.psql

select plan(24);

create temp table made on commit drop as
select
    create_login('worker', 'w1') as w,
    create_login('app', 'web') as a;

select is(
    (select w - 'password' from made),
    jsonb_build_object('role', :'app' || '_worker_w1', 'group', :'app' || '_worker'),
    format('create_login(worker, w1) makes %s_worker_w1 in group %s_worker', :'app', :'app')
);
select matches(
    (select w ->> 'password' from made), '^[0-9a-f]{64}$', '... with a generated password'
);
select isnt(
    (select w ->> 'password' from made), (select a ->> 'password' from made),
    '... a new one for every login'
);
select results_eq(
    $$select rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolinherit
        from pg_roles where rolname = current_schema() || '_worker_w1'$$,
    $$values (true, false, false, false, true)$$,
    'the login can log in and holds no attribute'
);
select is(
    (select left(rolpassword, 14) from pg_authid where rolname = :'app' || '_worker_w1'),
    'SCRAM-SHA-256$', 'only a SCRAM hash of the password is stored'
);
select ok(
    pg_has_role(:'app' || '_worker_w1', :'app' || '_worker', 'member')
    and not pg_has_role(:'app' || '_worker_w1', :'app' || '_app', 'member'),
    'the worker login is a member of ' || :'app' || '_worker only'
);
select ok(
    has_function_privilege(
        :'app' || '_worker_w1',
        'claim_tasks(text[], text, integer, interval, text, integer, interval)', 'execute'
    )
    and not has_function_privilege(
        :'app' || '_app_web',
        'claim_tasks(text[], text, integer, interval, text, integer, interval)', 'execute'
    )
    and has_function_privilege(
        :'app' || '_app_web', 'signal(text, jsonb, text, text)', 'execute'
    ),
    'the worker login may claim; the app login may signal but not claim'
);

-- A login granted the group by hand: listed, not managed here.
select format('create role %I login in role %I', :'app' || '_by_hand', :'app' || '_app') \gexec
select results_eq(
    $$select role_name, group_name, managed, connections from list_logins()$$,
    format(
        $$values (%1$L || '_app_web', %1$L || '_app', true, 0),
                 (%1$L || '_by_hand', %1$L || '_app', false, 0),
                 (%1$L || '_worker_w1', %1$L || '_worker', true, 0)$$,
        :'app'
    ),
    'list_logins: every login of both groups, which ones create_login made, their sessions'
);
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select rotate_login(current_schema() || '_by_hand')$$, '42501', format('role "%s_by_hand" was not made by %s.create_login; change it yourself', :'app', :'app'), 'a login made by hand is not rotated'),
    ($$select revoke_login(current_schema() || '_by_hand')$$, '42501', null, '... nor revoked'),
    ($$select revoke_login('postgres')$$, '42501', null, '... nor any other role')
) as t (call, sqlstate, message, description);

-- Rotation.
create temp table hash_before on commit drop as
select rolpassword from pg_authid where rolname = :'app' || '_worker_w1';
create temp table rotated on commit drop as
select rotate_login(:'app' || '_worker_w1') as r;
select is(
    (select r ->> 'role' from rotated), :'app' || '_worker_w1', 'rotate_login names the role'
);
select isnt(
    (select r ->> 'password' from rotated), (select w ->> 'password' from made),
    '... and returns a new password'
);
select isnt(
    (select rolpassword from pg_authid where rolname = :'app' || '_worker_w1'),
    (select rolpassword from hash_before), '... whose hash replaced the old one'
);

-- Revocation.
select is(
    revoke_login(:'app' || '_worker_w1'),
    jsonb_build_object('role', :'app' || '_worker_w1', 'terminated', 0),
    'revoke_login drops the login (it had no session to end)'
);
select hasnt_role(:'app' || '_worker_w1', '... the role is gone');
select throws_ok(
    $$select revoke_login(current_schema() || '_worker_w1')$$, 'HM002',
    format('login role "%s_worker_w1" not found', :'app'), 'revoking it again: HM002'
);

-- Bad input changes nothing.
create temp table roles_before on commit drop as select count(*) as n from pg_roles;
select throws_ok(t.call, t.sqlstate, t.message, t.description)
from (
    values
    ($$select create_login('admin', 'x')$$, '22023', 'login group must be app or worker, not admin', 'an unknown group: 22023'),
    ($$select create_login('worker', 'Bad-Name')$$, '22023', 'login name must be lowercase letters, digits and _, not ''Bad-Name''', 'a bad name: 22023'),
    ($$select create_login('worker', repeat('x', 60))$$, '22023', null, 'a role name over 63 characters: 22023'),
    ($$select create_login('app', 'web')$$, '42710', null, 'an existing login: 42710')
) as t (call, sqlstate, message, description);
select is(
    (select count(*) from pg_roles), (select n from roles_before), '... none made a role'
);

-- Owner only.
select is(
    (
        select array_agg(p.proname::text order by p.proname)
        from pg_proc as p
        where
            p.pronamespace = :'app'::regnamespace
            and p.proname in ('create_login', 'rotate_login', 'list_logins', 'revoke_login')
            and (
                has_function_privilege(:'app' || '_app', p.oid, 'execute')
                or has_function_privilege(:'app' || '_worker', p.oid, 'execute')
            )
    ),
    null, 'no role but the owner may execute the login functions'
);
select is(
    (
        select count(*)::integer from pg_proc as p
        where
            p.pronamespace = :'app'::regnamespace
            and p.proname in ('create_login', 'rotate_login', 'list_logins', 'revoke_login')
    ),
    4, '... all four of them'
);

select * from finish();
rollback;
