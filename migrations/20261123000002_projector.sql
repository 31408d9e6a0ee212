-- The projector's bookkeeping. The projection tables themselves live in
-- generation schemas (hookstream_gen_<n>) that the projector creates, so a
-- replay can build a new generation beside the live one and switch to it.

-- Every generation ever built, and what became of it.
create table projection_generations (
    name          text primary key,
    -- Version of the projection DDL the generation was built with; a binary
    -- with a newer DDL needs a replay before it can serve.
    ddl_version   integer     not null,
    status        text        not null check (status in ('building', 'live', 'retired')),
    -- How it was filled: 'consumer' (the first one, fed live), 'log', 'kafka'.
    built_from    text        not null,
    created_at    timestamptz not null default now(),
    activated_at  timestamptz,
    retired_at    timestamptz
);

-- The one live generation. A single row, so a batch that reads it FOR SHARE
-- and a replay that switches it FOR UPDATE serialise on the same row lock.
create table projection_live (
    singleton  boolean primary key default true check (singleton),
    generation text not null references projection_generations (name)
);

-- The consumer's position: the next offset to apply per partition, written in
-- the same transaction as the projection changes it produced. Kafka's own
-- committed offsets are only a hint for monitoring.
create table projector_offsets (
    consumer_group text        not null,
    topic          text        not null,
    partition      integer     not null,
    next_offset    bigint      not null,
    updated_at     timestamptz not null default now(),
    primary key (consumer_group, topic, partition)
);

-- Readers query views in this schema; a generation switch re-points them in
-- one transaction.
create schema projection;
