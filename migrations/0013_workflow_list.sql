-- The dashboard's workflow list (`hotmesh ui`, docs/ui.md) pages newest first with a keyset
-- cursor (created_at, id): this index serves every page, however many workflows there are.
-- created_at never changes, so updates of a job stay as cheap as before.
create index jobs_created on jobs (created_at, id);
