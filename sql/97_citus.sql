-- Citus (docs/citus.md). Nothing here runs unless the app's tables are distributed: a
-- distributed schema of Citus's schema-based sharding (its tables live together on one node
-- of the cluster), or tables distributed by job_id (docs/citus-row-distribution.md; migrate
-- again after distributing them).
--
-- The worker's hot functions run with `plan_cache_mode = force_generic_plan` (30_tasks.sql
-- says why). Citus cannot build a distributed plan for a generic plan whose parameters reach a
-- distributed table ("could not create distributed plan"), so on a distributed schema they
-- get the default plan cache mode: custom plans, which Citus routes to the node that holds
-- the schema (or the job's shard). A single-node install keeps the generic plans.
do $citus$
declare
    v_function regprocedure;
begin
    if to_regclass('pg_catalog.pg_dist_schema') is null then
        return;
    end if;
    if not exists (
        select 1 from pg_catalog.pg_dist_schema
         where schemaid = current_schema()::regnamespace
    ) and not exists (
        select 1 from pg_catalog.pg_dist_partition
         where logicalrelid = to_regclass(format('%I.jobs', current_schema()))
    ) then
        return;
    end if;
    for v_function in
        select p.oid::regprocedure
          from pg_proc as p
         where p.pronamespace = current_schema()::regnamespace
           and 'plan_cache_mode=force_generic_plan' = any(p.proconfig)
    loop
        execute format('alter function %s reset plan_cache_mode', v_function);
    end loop;
end
$citus$;
