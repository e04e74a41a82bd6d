-- 2601 reversal: what a reversal undid, and tombstones for originals never seen.

-- A reversed original keeps its answer (replays still get it) and names the 2601 that undid it.
ALTER TABLE idempotency ADD COLUMN reversed_by text;
-- A tombstone is a msgid reversed before its original arrived: the original is then refused.
ALTER TABLE idempotency ADD COLUMN tombstone boolean NOT NULL DEFAULT false;

-- The admission deductible a settlement was computed with: reinstating a cancelled inpatient
-- settlement (2601 of a 2305) restores it exactly.
ALTER TABLE settlements ADD COLUMN adm_dedc_fen bigint;
