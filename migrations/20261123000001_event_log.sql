-- The event log: the source of truth. One row per (source, webhook-id), the body
-- kept byte for byte as received. Append-only apart from `published_at`.
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
    -- Null until Kafka has acknowledged the message.
    published_at  timestamptz,
    constraint event_log_source_webhook_id_key unique (source, webhook_id)
);

-- The relay's work queue: only unpublished rows, in seq order. Stays small in
-- steady state, so scanning it is cheap however long the log grows.
create index event_log_unpublished_idx on event_log (seq) where published_at is null;

-- Wake the relay (in whichever replica leads) once per appending statement, so
-- publishing does not wait for a poll interval.
create function event_log_notify_appended() returns trigger
language plpgsql as $$
begin
    perform pg_notify('event_log_appended', '');
    return null;
end
$$;

create trigger event_log_appended
    after insert on event_log
    for each statement execute function event_log_notify_appended();
