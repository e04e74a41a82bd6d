-- A settlement's lines (about 3 KB of jsonb for a five-line sale: each line's split and the
-- mapping it was priced by) are past the size at which PostgreSQL compresses a row, as the
-- stored answers were (022): compressed with lz4 instead of pglz, a group commit's write costs
-- PostgreSQL 11-15 µs less a settlement, about a twentieth (a replay of 300 recorded 2102
-- batches, alternating, benchmarks/RESULTS.md). A server built without lz4 keeps pglz; rows
-- already written are read as they were stored.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_settings
        WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)
    ) THEN
        ALTER TABLE settlements ALTER COLUMN lines SET COMPRESSION lz4;
    END IF;
END
$$;
