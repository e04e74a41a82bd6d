-- The fee lines (feedetl_sn) a deferred claim of a whole visit covers (a 2304, or a 2207 of
-- chrg_bchno 0000): replay settles exactly these, not whatever is unsettled by then (a mid-way
-- 2304 would otherwise take the lines uploaded after it). Fixed when the claim is taken in the
-- ledger; for a claim from the local journal, when the journaled calls before it are applied.
-- NULL: a claim of one charge batch or a pharmacy purchase, or one not yet fixed.
ALTER TABLE deferred ADD COLUMN lines text[];
