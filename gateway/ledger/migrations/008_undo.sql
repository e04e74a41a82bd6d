-- Undoing a cancellation (2601 of a 2103/2208/2305) is sound only while nothing it depends on
-- changed since the cancellation (docs/reliability.md, "Undo and dates").

-- One sequence orders every change of a settlement's standing. Values are drawn inside the
-- transaction that holds the person's lock, so for one person they follow commit order (a
-- request's receive time does not: a settlement received first may commit last).
CREATE SEQUENCE settlement_event_seq;
-- When the settlement last came into force: its settlement, or the 2601 that reinstated it.
ALTER TABLE settlements ADD COLUMN in_force_seq bigint NOT NULL DEFAULT nextval('settlement_event_seq');
-- When it was cancelled (NULL while in force).
ALTER TABLE settlements ADD COLUMN cancel_seq bigint;

-- The settlement a line was last released from by a cancellation: the very row, not a re-upload
-- under the same feedetl_sn, is what a reinstated settlement may carry again.
ALTER TABLE fee_lines ADD COLUMN released_from text;
