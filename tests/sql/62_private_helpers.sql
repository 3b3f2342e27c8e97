-- Least privilege (issue 13, M3): no private helper (`_name`) of the app is executable by
-- <app>_app or <app>_worker, not even the ones the views use (those have public names now:
-- engine_clock, workflow_waits, waits_text); the views and the public functions still work
-- as both roles, and calling a helper directly is refused (42501).
begin;
\ir _preamble.psql

select plan(7);

select is(
    (
        select array_agg(p.oid::regprocedure::text order by p.proname)
        from pg_proc as p
        where
            p.pronamespace = :'app'::regnamespace and p.proname ~ '^_'
            and (
                has_function_privilege(:'app' || '_app', p.oid, 'execute')
                or has_function_privilege(:'app' || '_worker', p.oid, 'execute')
            )
    ),
    null,
    'no private helper is executable by ' || :'app' || '_app or ' || :'app' || '_worker'
);
select cmp_ok(
    (
        select count(*)::integer from pg_proc as p
        where p.pronamespace = :'app'::regnamespace and p.proname ~ '^_'
    ), '>=', 40,
    '... of the helpers there are (_now, _wake, _deliver, _entity_apply, ...)'
);
select ok(
    has_function_privilege(:'app' || '_app', 'workflow_waits(text)', 'execute')
    and has_function_privilege(:'app' || '_app', 'waits_text(jsonb)', 'execute')
    and has_function_privilege(:'app' || '_app', 'engine_clock()', 'execute'),
    'the functions the views call are public'
);

-- What each role gets back from the public API (written to a temp table both may fill).
create temp table as_role (who text, what text, value text) on commit drop;
select format('grant insert on as_role to %I, %I', :'app' || '_app', :'app' || '_worker') \gexec

do $$
begin
    execute format('set local role %I', current_schema() || '_app');
    insert into as_role select 'app', 'start', start_workflow('w', '[]', 'q62p', 'p1');
    insert into as_role select 'app', 'signal', signal('s62', '1', 'p1') ->> 'status';
    insert into as_role select 'app', 'entity', entity_set('p1', '{"a": 1}')::text;
    insert into as_role
    select 'app', 'workflows', status || ', ' || coalesce(waiting_on, '-')
      from workflows where id = 'p1';
    insert into as_role
    select 'app', 'backlog', ready::text from queue_backlog where task_queue = 'q62p';
    insert into as_role select 'app', 'failed', count(*)::text from failed_workflows;
    begin
        perform _now();
        insert into as_role values ('app', '_now', 'executed');
    exception when insufficient_privilege then
        insert into as_role values ('app', '_now', sqlstate);
    end;
    reset role;
    execute format('set local role %I', current_schema() || '_worker');
    insert into as_role
    select 'worker', 'claim', workflow_name from claim_tasks(array['q62p'], 'w1', 1);
    insert into as_role
    select 'worker', 'workflows', status from workflows where id = 'p1';
    begin
        perform _wake('p1', 'main');
        insert into as_role values ('worker', '_wake', 'executed');
    exception when insufficient_privilege then
        insert into as_role values ('worker', '_wake', sqlstate);
    end;
    reset role;
end
$$;

select results_eq(
    $$select what, value from as_role where who = 'app' and what not like '\_%' order by what$$,
    $$values ('backlog', '1'), ('entity', '{"a": 1}'), ('failed', '0'),
             ('signal', 'kept'), ('start', 'p1'), ('workflows', 'pending, -')$$,
    'as ' || :'app' || '_app: start, signal, entity and every view work'
);
select results_eq(
    $$select what, value from as_role where who = 'worker' and what not like '\_%' order by what$$,
    $$values ('claim', 'w'), ('workflows', 'running')$$,
    'as ' || :'app' || '_worker: claim and the views work'
);
select is(
    (select value from as_role where who = 'app' and what = '_now'), '42501',
    'as ' || :'app' || '_app, _now() is refused (42501)'
);
select is(
    (select value from as_role where who = 'worker' and what = '_wake'), '42501',
    'as ' || :'app' || '_worker, _wake() is refused (42501)'
);

select * from finish();
rollback;
