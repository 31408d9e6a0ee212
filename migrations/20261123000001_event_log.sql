-- The event log: the source of truth. One row per (source, webhook-id), the body
-- kept byte for byte as received. Append-only: rows are never updated.
create table event_log (
    seq           bigint generated always as identity primary key,
    source        text        not null,
    webhook_id    text        not null,
    event_type    text        not null,
    -- Kafka message key, computed once at ingest (DESIGN.md "Kafka message").
    partition_key text        not null,
    -- The envelope's `timestamp`: when the billing provider created the event.
    occurred_at   timestamptz not null,
    received_at   timestamptz not null default now(),
    body          bytea       not null,
    constraint event_log_source_webhook_id_key unique (source, webhook_id)
);

-- Bodies (3 KB on average for Polar) are compressed inline; lz4 costs a
-- fraction of the default pglz. Servers built without lz4 keep pglz.
do $$
begin
    alter table event_log alter column body set compression lz4;
exception when feature_not_supported or invalid_parameter_value then
    raise notice 'lz4 not available; event bodies use the default compression';
end
$$;

-- The relay's work queue: the seqs not yet acknowledged by Kafka. Filled by
-- the same statement that appends, emptied by the relay. Keeping it apart
-- leaves event_log append-only: marking a log row published would rewrite
-- the whole row (body included) and every index entry.
create table event_log_outbox (
    seq bigint primary key
);
