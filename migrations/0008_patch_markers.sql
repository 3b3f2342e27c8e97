-- Patch markers (workflow.patched / deprecate_patch) are steps of kind 'patch' named by their
-- patch id: the `workflow_patches` view (sql/65_versions.sql) finds every run that recorded
-- one through this index instead of reading every step.
create index steps_patches on steps (name, job_id) where kind = 'patch';
