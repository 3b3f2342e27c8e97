-- Patch markers (workflow.patched / deprecate_patch) are steps of kind 'patch' named by their
-- patch id: the `workflow_patches` view (sql/65_versions.sql) finds every run that recorded
-- one through this index instead of reading every step.
create index steps_patches on steps (name, job_id) where kind = 'patch';

-- The code version (build id) of a workflow's last activation: the claim that starts a main
-- thread's activation records the claiming worker's (sql/30_tasks.sql: claim_tasks), and hands
-- the worker the one it replaces, so a non-determinism failure names both builds.
alter table jobs add column build_id text;
