-- prune also forgets idempotency keys and untargeted kept signals older than the app's
-- default retention (sql/71_retention.sql: prune_signals): these find them oldest first.
create index signal_keys_used_at on signal_keys (used_at);
create index signals_untargeted on signals (created_at) where job_id is null;
