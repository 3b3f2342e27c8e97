-- The W3C trace context (traceparent) of the step that started a hook (docs/tracing.md): the
-- hook thread's activations continue the trace inside that step's span, as a child's do
-- through jobs.traceparent. Null: the workflow's (jobs.traceparent).
alter table threads add column traceparent text;
