-- Credentials for people and processes (docs/credentials.md). One login role per worker
-- process or application, a member of the app's <app>_worker or <app>_app group (the NOLOGIN
-- roles sql/99_grants.sql grants to), so each can be rotated or revoked alone. Owner only:
-- these functions are granted to nobody (the owner needs CREATEROLE, and pg_signal_backend to
-- end a revoked login's sessions). A login is marked as ours by its comment; one made by hand
-- (`grant my_app_app to web_api`) is listed but never rotated or dropped here.

-- The comment that marks a login made by create_login for this app and group.
create or replace function _login_mark(p_group text) returns text
language sql stable
as $$
    select format('hotmesh login: app %s, group %s', current_schema(), p_group)
$$;

-- A new password: 244 random bits (two version-4 UUIDs) as 64 hex digits. Only its SCRAM
-- hash is kept by the server; the caller sees it once.
create or replace function _login_password() returns text
language sql volatile
as $$
    select replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')
$$;

-- The login role p_role of this app: refused unless create_login made it (HM002 when there is
-- no such role, 42501 when it is someone else's). Returns its group (app or worker).
create or replace function _login_group(p_role text) returns text
language plpgsql stable
as $$
declare
    v_comment text;
    v_group text;
begin
    select shobj_description(r.oid, 'pg_authid') into v_comment
      from pg_roles as r where r.rolname = p_role;
    if not found then
        raise exception using errcode = 'HM002',
            message = format('login role "%s" not found', p_role);
    end if;
    select g.name into v_group
      from unnest(array['app', 'worker']) as g (name)
     where v_comment is not distinct from _login_mark(g.name);
    if v_group is null then
        raise exception using errcode = '42501',
            message = format('role "%s" was not made by %s.create_login; change it yourself',
                             p_role, current_schema());
    end if;
    return v_group;
end
$$;

-- Makes login role <app>_<group>_<name> (group 'app' or 'worker') in the group role
-- <app>_<group>, with a generated password. Returns {"role", "group", "password"}: the
-- password is shown only here.
create or replace function create_login(p_group text, p_name text) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_role text := format('%s_%s_%s', current_schema(), p_group, p_name);
    v_group_role text := format('%s_%s', current_schema(), p_group);
    v_password text := _login_password();
begin
    if p_group is null or p_group not in ('app', 'worker') then
        raise exception using errcode = '22023',
            message = format('login group must be app or worker, not %s',
                             coalesce(p_group, 'null'));
    end if;
    if p_name is null or p_name !~ '^[a-z0-9_]+$' then
        raise exception using errcode = '22023',
            message = format('login name must be lowercase letters, digits and _, not %s',
                             coalesce(quote_literal(p_name), 'null'));
    end if;
    if length(v_role) > 63 then
        raise exception using errcode = '22023',
            message = format('login role "%s" is longer than 63 characters: use a shorter name',
                             v_role);
    end if;
    if not exists (select from pg_roles as r
                    where r.rolname = v_group_role and not r.rolcanlogin) then
        raise exception using errcode = 'HM002',
            message = format('group role %s does not exist: migrate the app as a role with '
                             'CREATEROLE first', v_group_role);
    end if;
    if exists (select from pg_roles as r where r.rolname = v_role) then
        raise exception using errcode = '42710',
            message = format('role "%s" already exists (rotate_login gives it a new password)',
                             v_role);
    end if;
    execute format('create role %I login password %L in role %I', v_role, v_password,
                   v_group_role);
    execute format('comment on role %I is %L', v_role, _login_mark(p_group));
    return jsonb_build_object('role', v_role, 'group', v_group_role, 'password', v_password);
end
$$;

-- Gives a login made by create_login a new generated password; sessions already open stay
-- open (revoke_login ends them). Returns {"role", "password"}.
create or replace function rotate_login(p_role text) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_password text := _login_password();
begin
    perform _login_group(p_role);
    execute format('alter role %I password %L', p_role, v_password);
    return jsonb_build_object('role', p_role, 'password', v_password);
end
$$;

-- Every login role in this app's groups: whether create_login made it (only those can be
-- rotated and revoked here) and how many sessions it has open now.
create or replace function list_logins()
returns table (role_name text, group_name text, managed boolean, connections integer)
language sql stable
set search_path from current
as $$
    select r.rolname::text, g.rolname::text,
           shobj_description(r.oid, 'pg_authid') is not distinct from
               _login_mark(substr(g.rolname, length(current_schema()) + 2)),
           (select count(*)::integer from pg_stat_activity as a where a.usesysid = r.oid)
      from pg_roles as g
      join pg_auth_members as m on m.roleid = g.oid
      join pg_roles as r on r.oid = m.member
     where g.rolname in (current_schema() || '_app', current_schema() || '_worker')
       and r.rolcanlogin
     order by 1
$$;

-- Ends a login made by create_login: it can no longer connect, its open sessions are ended
-- (waiting up to 5 s for each to exit; tasks a worker leased are taken over by others once
-- their lease expires) and the role is dropped. Returns {"role", "terminated": n}.
create or replace function revoke_login(p_role text) returns jsonb
language plpgsql
set search_path from current
as $$
declare
    v_group text := _login_group(p_role);
    v_pid integer;
    v_terminated integer := 0;
begin
    execute format('alter role %I nologin', p_role);
    execute format('revoke %I from %I', current_schema() || '_' || v_group, p_role);
    for v_pid in select a.pid from pg_stat_activity as a where a.usename = p_role loop
        if pg_terminate_backend(v_pid, 5000) then
            v_terminated := v_terminated + 1;
        end if;
    end loop;
    execute format('drop role %I', p_role);
    return jsonb_build_object('role', p_role, 'terminated', v_terminated);
end
$$;
