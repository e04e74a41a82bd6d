-- A settlement's visit and person, as 024 did for its lines, fund rows and events: the staging
-- code writes a settlement only for a visit it wrote in the same statement (a pharmacy sale) or
-- holds locked (every other settlement), and for that visit's person, read under the same lock;
-- neither visits nor persons with a visit are ever deleted. PostgreSQL checked both keys on every
-- settlement row, a query and a row lock each (the person's row locked again, in key-share mode,
-- by every settlement): about a twentieth of PostgreSQL's time on the group commit's write (a
-- replay of recorded 2102 batches, alternating, benchmarks/RESULTS.md). The ledger checker finds
-- a settlement without its visit or person instead (gateway/ledger/checker.py, `_orphans`).
-- What stops a person with a ledger history from being moved between clusters is unchanged:
-- the visits', accumulators' and account's keys on persons stay, and every settlement has its
-- visit.
ALTER TABLE settlements DROP CONSTRAINT settlements_mdtrt_id_fkey;
ALTER TABLE settlements DROP CONSTRAINT settlements_psn_no_fkey;
