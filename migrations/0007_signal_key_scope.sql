-- A signal's idempotency key is scoped to the signal it was sent with: its signal id and its
-- target workflow (none: untargeted). The same key on another signal or for another workflow
-- is another send, not a duplicate. The payload's digest is kept so that a repeat of the key
-- with another payload is refused instead of silently dropped (sql/45_signals.sql: signal).
-- Keys recorded before this migration have no scope (signal_id null) and still stop any send
-- with the same key until prune forgets them.
alter table signal_keys drop constraint signal_keys_pkey;
alter table signal_keys add column signal_id text;
alter table signal_keys add column job_id text;
alter table signal_keys add column payload_md5 text;
alter table signal_keys add constraint signal_keys_scope
unique nulls not distinct (idempotency_key, signal_id, job_id);

-- Signal and wait coordination no longer takes one lock per signal id (sql/45_signals.sql).
drop function if exists _lock_signal(text);
