-- The W3C trace context (traceparent) of the request that started a workflow
-- (docs/tracing.md): every task of the workflow, its children and hooks continue that trace,
-- days later included. Tasks read it from their job in the claim (which reads the job row
-- anyway), so it is stored once per workflow, not copied into every task.
alter table jobs add column traceparent text;
