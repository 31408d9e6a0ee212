-- An audit of exactly-once application, kept beside each position and written
-- in the same transaction: the first offset this consumer group applied in
-- the partition, and how many messages it has applied since. Offsets on
-- hookstream's topic are dense, so `next_offset - first_offset -
-- messages_applied` is the number of messages passed over without being
-- applied; it must be 0 except where Kafka lost messages before they were
-- applied (recovered from the event log; see `offset_gaps_total`). Rows from
-- before this migration have no first offset: their audit starts unknown.
alter table projector_offsets
    add column first_offset     bigint,
    add column messages_applied bigint not null default 0;
