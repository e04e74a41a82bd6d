-- An answer kept against a msgid that another system gave (the old system's, relayed under the
-- emergency plan's route_legacy): a retry gets it byte for byte whatever the plan says by then,
-- and is never settled here too (found from outside: it was, once the plan changed). Such a
-- msgid has no settlement in this ledger by design; the checker and the 2601 know it by this.
-- A constant default: no table rewrite.
ALTER TABLE idempotency ADD COLUMN answered_elsewhere boolean NOT NULL DEFAULT false;
