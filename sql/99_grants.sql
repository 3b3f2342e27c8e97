-- Least privilege. This file runs last on every migrate, after every function and view has
-- been (re)created, and sets every privilege of the app schema from scratch:
--
-- * Every function runs as the schema's owner (SECURITY DEFINER) with its search_path pinned to
--   `<app>, pg_temp` (checked here: a function without a pinned search_path fails the install).
--   So nobody but the owner needs, or gets, any right to write the engine's tables.
-- * EXECUTE is revoked from PUBLIC on every routine and granted explicitly, per role:
--     <app>_app     the application: start, signal, hook, cancel and read workflows, use the
--                   entity functions; SELECT on jobs, steps, threads, runs, run_steps and the
--                   views.
--     <app>_worker  a worker process: everything <app>_app may do, plus the calls a worker
--                   makes while it runs tasks (claim, complete, record steps, ...).
--     <app>_reader  reading only (the dashboard's pages, a report): the read functions
--                   (v_reader_functions) and SELECT on what <app>_app may select; none of
--                   the functions that change anything. <app>_app is a member of it, so a
--                   login of <app>_app may `set role <app>_reader` to read with no more.
--     <app>_reviewer a person's review screen: list, claim, comment and resolve human tasks
--                   (v_reviewer_functions, docs/people.md), and nothing else: no table, no
--                   view, no workflow. (Not made for app ids over 54 characters.)
--   Operations (prune, prune_signals, prune_runs, set_setting, set_reviewer_roles,
--   retry_workflow, entity_create_index) stay with the owner.
-- * The roles are NOLOGIN: grant them to your login roles (`grant my_app_app to web_api`).
--   They are created here when the installer may create roles (CREATEROLE or superuser);
--   otherwise a WARNING says so and the grants wait until the roles exist (create them as
--   shown in the warning, then migrate again). A role of that name that can log in, or is a
--   superuser, is never used: it is not one of ours.
-- * No role gets USAGE on another app's schema, so one app's roles cannot read or call
--   anything of another app.
-- * A per-shard engine `<app>_s<n>` of an app distributed by job_id (hotmesh/_citus.py sets
--   hotmesh.app to `<app>`) gets the app's roles, not roles of its own: one login serves
--   (or reads) every engine of the app. Its views named like the app's tables are those
--   tables' shards, granted as the tables are.
do $grants$
declare
    v_schema text := current_schema();
    -- The app: this schema, or the app of this per-shard engine.
    v_of text := coalesce(nullif(current_setting('hotmesh.app', true), ''), current_schema());
    v_app text := v_of || '_app';
    v_worker text := v_of || '_worker';
    v_reader text := v_of || '_reader';
    v_reviewer text := v_of || '_reviewer';
    -- What an application may call. The views' own helper functions are added below.
    v_app_functions text[] := array[
        'start_workflow', 'start_workflows', 'workflow_status', 'workflow_outcome',
        'get_workflow', 'workflow_history', 'signal', 'hook', 'cancel_workflow', 'retry_delay',
        'get_setting',
        'entity_set', 'entity_merge', 'entity_get', 'entity_delete', 'entity_append',
        'entity_prepend', 'entity_remove', 'entity_increment', 'entity_toggle',
        'entity_set_if_not_exists', 'entity_history', 'entity_find',
        'entity_find_by_condition', 'entity_find_by_id', 'engine_clock', 'workflow_waits',
        'waits_text', 'workflow_blocker', 'engine_version', 'create_schedule',
        'update_schedule', 'pause_schedule', 'resume_schedule', 'trigger_schedule',
        'delete_schedule', 'cron_next', 'export_workflow', 'export_workflows',
        'workflow_runs', 'run_history', 'get_queue_limits', 'queue_keys', 'list_human_tasks',
        'get_human_task', 'claim_human_task', 'claim_next_human_task', 'release_human_task',
        'reassign_human_task', 'comment_human_task', 'resolve_human_task'
    ];
    -- What a person's review screen calls (docs/people.md): the human task functions, which
    -- the application may call too.
    v_reviewer_functions text[] := array[
        'list_human_tasks', 'get_human_task', 'claim_human_task', 'claim_next_human_task',
        'release_human_task', 'reassign_human_task', 'comment_human_task', 'resolve_human_task'
    ];
    -- What a reader may call: the application's functions that change nothing.
    v_reader_functions text[] := array[
        'workflow_status', 'workflow_outcome', 'get_workflow', 'workflow_history', 'retry_delay',
        'get_setting', 'entity_get', 'entity_history', 'entity_find', 'entity_find_by_condition',
        'entity_find_by_id', 'engine_clock', 'workflow_waits', 'waits_text', 'workflow_blocker',
        'engine_version', 'cron_next', 'export_workflow', 'export_workflows', 'workflow_runs',
        'run_history', 'get_queue_limits', 'queue_keys', 'list_human_tasks', 'get_human_task'
    ];
    -- What a worker calls while it runs tasks, on top of the application's functions.
    v_worker_functions text[] := array[
        'claim_tasks', 'next_due', 'complete_task', 'complete_tasks', 'fail_task',
        'suspend_task', 'suspend_tasks', 'bury_task', 'heartbeat', 'activity_heartbeat',
        'release_tasks', 'start_tasks',
        'record_step',
        'record_steps', 'schedule_activity', 'schedule_sleep', 'entity_step', 'search_step',
        'emit_step', 'wait_signal', 'send_signal', 'start_child', 'start_hook', 'cancel_step',
        'record_patch', 'continue_task', 'ask_human'
    ];
    v_tables text[] := array['jobs', 'steps', 'threads', 'schedules', 'runs', 'run_steps'];
    v_can_create boolean;
    v_role text;
    v_roles text[] := array[]::text[];
    v_routine regprocedure;
    v_table text;
    v_columns text;
    v_distributed boolean := false;
    v_unpinned text;
    -- The functions the views call: their readers need EXECUTE on them.
    v_view_functions oid[] := array(
        select d.refobjid
          from pg_depend as d
          join pg_rewrite as w on w.oid = d.objid
          join pg_class as c on c.oid = w.ev_class
         where d.classid = 'pg_rewrite'::regclass and d.refclassid = 'pg_proc'::regclass
           and c.relnamespace = current_schema()::regnamespace and c.relkind = 'v'
    );
begin
    -- Every routine a role may call must pin its search_path before it may run as the owner.
    -- Exceptions: a procedure that commits (prune: it cannot have a SET clause, its body names
    -- the schema), and private helpers (`_name`) that only the engine's own functions call:
    -- they inherit their caller's pinned path, run as their caller (the owner), are executable
    -- by nobody else, and skip the cost of a SET clause on every call of the hot path. A
    -- view may call only public functions: its readers need EXECUTE on them.
    select string_agg(p.oid::regprocedure::text, ', ') into v_unpinned
      from pg_proc as p
     where p.pronamespace = v_schema::regnamespace and p.proname ~ '^_'
       and p.oid = any(v_view_functions);
    if v_unpinned is not null then
        raise exception using errcode = '42501',
            message = format('views of schema %s call private helpers, which nobody but the '
                             'owner may execute: %s', v_schema, v_unpinned),
            hint = 'Give the helper a public name (and a pinned search_path).';
    end if;
    select string_agg(p.oid::regprocedure::text, ', ') into v_unpinned
      from pg_proc as p
     where p.pronamespace = v_schema::regnamespace and p.prokind <> 'p'
       and not exists (select from unnest(p.proconfig) as c (setting)
                        where c.setting like 'search_path=%')
       and p.proname !~ '^_';
    if v_unpinned is not null then
        raise exception using errcode = '42501',
            message = format('functions of schema %s without a pinned search_path cannot be '
                             'made SECURITY DEFINER: %s', v_schema, v_unpinned),
            hint = 'Create them with "set search_path from current".';
    end if;
    for v_routine in
        select p.oid from pg_proc as p
         where p.pronamespace = v_schema::regnamespace and p.prokind <> 'p'
           and not p.prosecdef
           and exists (select from unnest(p.proconfig) as c (setting)
                        where c.setting like 'search_path=%')
    loop
        execute format('alter function %s security definer', v_routine);
    end loop;

    execute format('revoke all on all routines in schema %I from public', v_schema);
    execute format('revoke all on all tables in schema %I from public', v_schema);
    execute format('revoke all on all sequences in schema %I from public', v_schema);

    -- The roles: created when allowed, used only when they are what they should be.
    if length(v_worker) > 63 then
        raise warning using
            message = format('app id %s is too long for role names (at most 56 characters): '
                             'no %s / %s roles; grant the privileges yourself (docs/security.md, '
                             'Least privilege)', v_schema, v_app, v_worker);
        return;
    end if;
    select r.rolsuper or r.rolcreaterole into v_can_create
      from pg_roles as r where r.rolname = current_user;
    foreach v_role in array array[v_app, v_worker, v_reader, v_reviewer] loop
        continue when length(v_role) > 63;
        if not exists (select from pg_roles as r where r.rolname = v_role) then
            if not v_can_create then
                raise warning using
                    message = format('role %s does not exist and %s may not create roles: the '
                                     'app is installed, but only its owner may use it',
                                     v_role, current_user),
                    hint = format('As a role with CREATEROLE: create role %I nologin; then '
                                  'migrate again.', v_role);
                continue;
            end if;
            begin
                execute format('create role %I nologin', v_role);
            exception when duplicate_object or unique_violation then
                null;  -- created at this moment by an install of the same app elsewhere
            end;
        end if;
        if exists (select from pg_roles as r
                    where r.rolname = v_role and (r.rolcanlogin or r.rolsuper)) then
            raise warning using
                message = format('role %s can log in or is a superuser: it is not a hotmesh '
                                 'role and gets no privileges on app %s', v_role, v_schema),
                hint = 'Rename that role, or make it NOLOGIN, then migrate again.';
            continue;
        end if;
        v_roles := v_roles || v_role;
        -- From scratch: a function or table dropped from the lists loses its grant.
        execute format('revoke all on schema %I from %I', v_schema, v_role);
        execute format('revoke all on all routines in schema %I from %I', v_schema, v_role);
        execute format('revoke all on all tables in schema %I from %I', v_schema, v_role);
        execute format('revoke all on all sequences in schema %I from %I', v_schema, v_role);
        execute format('grant usage on schema %I to %I', v_schema, v_role);
    end loop;

    -- Reading: the tables and every view. A view's functions are executed with the rights of
    -- whoever selects from it, so they are granted too (they run as the owner).
    for v_routine in
        select p.oid
          from pg_proc as p
         where p.pronamespace = v_schema::regnamespace
           and p.proname !~ '^_'
           and (p.proname = any(v_app_functions) or p.oid = any(v_view_functions))
    loop
        foreach v_role in array v_roles loop
            continue when v_role = v_reviewer;
            if v_role <> v_reader
               or (select p.proname = any(v_reader_functions) or p.oid = any(v_view_functions)
                     from pg_proc as p where p.oid = v_routine) then
                execute format('grant execute on function %s to %I', v_routine, v_role);
            end if;
        end loop;
    end loop;
    for v_routine in
        select p.oid from pg_proc as p
         where p.pronamespace = v_schema::regnamespace and p.proname = any(v_reviewer_functions)
    loop
        if v_reviewer = any(v_roles) then
            execute format('grant execute on function %s to %I', v_routine, v_reviewer);
        end if;
    end loop;
    for v_routine in
        select p.oid from pg_proc as p
         where p.pronamespace = v_schema::regnamespace and p.proname = any(v_worker_functions)
    loop
        if v_worker = any(v_roles) then
            execute format('grant execute on function %s to %I', v_routine, v_worker);
        end if;
    end loop;
    foreach v_role in array v_roles loop
        continue when v_role = v_reviewer;
        execute format('grant select on %s to %I',
                       (select string_agg(format('%I.%I', v_schema, c.relname), ', ')
                          from pg_class as c
                         where c.relnamespace = v_schema::regnamespace
                           and (c.relname = any(v_tables)
                                or c.relkind = 'v' and not exists (
                                    select 1 from pg_class as t
                                     where t.relnamespace = v_of::regnamespace
                                       and t.relname = c.relname and t.relkind = 'r'))),
                       v_role);
    end loop;
    -- On a distributed schema of Citus (docs/citus.md), or an app distributed by job_id, a
    -- view's tables are checked with its reader's rights, on the nodes that hold them: there
    -- the roles get SELECT on the columns the views read, which the views show anyway, and on
    -- no other (a task's payload or lease token). A single server needs none of it.
    -- (Two tests: the second query is planned only where Citus is installed.)
    if to_regclass('pg_catalog.pg_dist_schema') is not null then
        v_distributed := exists (select from pg_catalog.pg_dist_schema as s
                                  where s.schemaid = v_schema::regnamespace)
                         or exists (select from pg_catalog.pg_dist_partition as d
                                     where d.logicalrelid
                                           = to_regclass(format('%I.jobs', v_schema)));
    end if;
    if v_distributed then
        for v_table, v_columns in
            select t.oid::regclass::text,
                   string_agg(distinct quote_ident(a.attname), ', ')
              from pg_depend as d
              join pg_rewrite as w on w.oid = d.objid
              join pg_class as v on v.oid = w.ev_class
              join pg_class as t on t.oid = d.refobjid
              join pg_attribute as a on a.attrelid = t.oid and a.attnum = d.refobjsubid
             where d.classid = 'pg_rewrite'::regclass and d.refclassid = 'pg_class'::regclass
               and v.relnamespace = v_schema::regnamespace and v.relkind = 'v'
               and t.relkind = 'r' and not t.relname = any(v_tables)
             group by t.oid
        loop
            foreach v_role in array v_roles loop
                continue when v_role = v_reviewer;
                execute format('grant select (%s) on %s to %I', v_columns, v_table, v_role);
            end loop;
        end loop;
    end if;
    -- A login of <app>_app may read as <app>_reader (the dashboard does: sql it cannot write
    -- with). Granted once; a membership is not one of the privileges revoked above.
    if v_app = any(v_roles) and v_reader = any(v_roles)
       and not pg_has_role(v_app, v_reader, 'member') then
        begin
            execute format('grant %I to %I', v_reader, v_app);
        exception when insufficient_privilege then
            raise warning using
                message = format('%s may not grant role %s to %s: its logins cannot read as %s',
                                 current_user, v_reader, v_app, v_reader),
                hint = format('As a role with CREATEROLE: grant %I to %I;', v_reader, v_app);
        end;
    end if;
end
$grants$;
