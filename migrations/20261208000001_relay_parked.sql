-- Events the relay can never publish as they are (Kafka refuses the message
-- itself: too large for the topic, a record the broker rejects). Moved here
-- out of the outbox, so the relay stops retrying them and its backlog
-- drains; the operator console lists them; the projector applies each one
-- from the log instead (the log, not Kafka, is the source of truth) and
-- says when.
create table event_log_parked (
    seq        bigint      primary key references event_log (seq),
    reason     text        not null,
    parked_at  timestamptz not null default now(),
    -- When a projector applied it from the log; null until then.
    applied_at timestamptz
);
create index event_log_parked_unapplied on event_log_parked (seq) where applied_at is null;
