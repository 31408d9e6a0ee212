-- What the operator console (projector `/console/`) reads that nothing
-- recorded before: a customer's events in the log, duplicate deliveries,
-- where each event went in Kafka, and what the projector ignored.

-- A customer's timeline: the log rows keyed by the customer (the Kafka key
-- is the customer id for every event about a customer).
create index event_log_partition_key on event_log (partition_key);

-- Webhooks received per minute and hour. `received_at` rises with `seq`, so
-- a BRIN index finds a time range for almost nothing on insert.
create index event_log_received_at on event_log using brin (received_at);

-- Deliveries of an already logged webhook-id that ingest answered as
-- duplicates. Kept beside the log so the log stays append-only; written only
-- on the duplicate path.
create table event_log_duplicates (
    seq              bigint      primary key,
    copies           bigint      not null,
    last_received_at timestamptz not null
);

-- Where the live consumer found each event in Kafka: one row per partition
-- per applied batch, offsets and seqs in offset order. `seqs` finds an
-- event's row through `seq_span`; the row's count and time give events
-- applied per minute.
create table projector_applied_messages (
    id          bigint generated always as identity primary key,
    topic       text        not null,
    partition   integer     not null,
    offsets     bigint[]    not null,
    seqs        bigint[]    not null,
    seq_span    int8range   not null,
    applied_at  timestamptz not null default clock_timestamp()
);
create index projector_applied_messages_seq_span on projector_applied_messages using gist (seq_span);
create index projector_applied_messages_applied_at on projector_applied_messages using brin (applied_at);

-- Event types the live consumer saw that hookstream does not know (a newer
-- Polar API, a misconfigured endpoint), with how often and when.
create table projector_unknown_event_types (
    event_type   text        primary key,
    events       bigint      not null,
    first_seq    bigint      not null,
    last_seq     bigint      not null,
    last_seen_at timestamptz not null default now()
);

-- The Polar webhook endpoint's state as periodic reconcile last read it
-- (INGEST_POLAR_ENDPOINT_ID): while Polar keeps it disabled, no events come.
create table polar_endpoint_state (
    endpoint_id text        primary key,
    enabled     boolean     not null,
    checked_at  timestamptz not null default now()
);
