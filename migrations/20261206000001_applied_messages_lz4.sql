-- Each consumer batch records, per partition, the offsets and seqs it
-- applied: in a backlog that is hundreds of each, two arrays of a few KB
-- that Postgres compresses on insert. With the default pglz that was 4% of
-- Postgres's CPU in a drain's profile (BENCHMARKS.md, "The million-event
-- drain"); lz4 costs a fraction of it. Servers built without lz4 keep pglz.
do $$
begin
    alter table projector_applied_messages
        alter column offsets set compression lz4,
        alter column seqs set compression lz4;
exception when feature_not_supported or invalid_parameter_value then
    raise notice 'lz4 not available; applied offsets use the default compression';
end
$$;
