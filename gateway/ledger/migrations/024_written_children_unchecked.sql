-- Three foreign keys whose parent the one staging code (gateway/ledger/writes.py,
-- settlements.stage) has in hand when it writes the child, and which is never deleted: a
-- visit's fee lines (a pharmacy sale's visit is written in the same statement; a hospital's
-- upload goes to a visit it has just read and locked), a settlement's fund rows (same
-- statement) and its standing's events (written by the settlements trigger from the rows it was
-- given, 021). PostgreSQL checked each child row against its parent at
-- the end of the statement, a query and a row lock per row: on a five-line pharmacy sale seven
-- or eight checks, about a tenth of PostgreSQL's time on the group commit's write (a replay of
-- 300 recorded batches, alternating with and without, benchmarks/RESULTS.md). The ledger
-- checker finds a child without its parent instead (gateway/ledger/checker.py, `_orphans`).
-- The persons' keys stay: moving persons between ledger clusters deletes persons, and the key
-- is what stops one with a ledger history from going (gateway/ledger/partitions.py).
ALTER TABLE fee_lines DROP CONSTRAINT fee_lines_mdtrt_id_fkey;
ALTER TABLE settlement_funds DROP CONSTRAINT settlement_funds_setl_id_fkey;
ALTER TABLE settlement_events DROP CONSTRAINT settlement_events_setl_id_fkey;
