-- Every change of a settlement's standing, numbered by settlement_event_seq (008).
-- The settlements row keeps only the last coming into force and the last cancellation; a 2601
-- of a cancellation overwrites both. The ledger checker replays the rules over a person's whole
-- history (gateway/ledger/checker.py), and a settlement computed while another was cancelled,
-- then reinstated, can only be judged against that gap. A trigger records it, so that every
-- path that settles, cancels or reinstates (single, group commit, pharmacy, corrections,
-- deferred replay) is covered without each one having to remember.
CREATE TABLE settlement_events (
    seq     bigint PRIMARY KEY,
    setl_id text NOT NULL REFERENCES settlements,
    kind    text NOT NULL CHECK (kind IN ('in_force', 'cancelled'))
);
CREATE INDEX settlement_events_setl ON settlement_events (setl_id);

CREATE FUNCTION record_settlement_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status = 'settled' THEN
            INSERT INTO settlement_events VALUES (NEW.in_force_seq, NEW.setl_id, 'in_force');
        END IF;
        RETURN NULL;
    END IF;
    IF NEW.cancel_seq IS NOT NULL AND NEW.cancel_seq IS DISTINCT FROM OLD.cancel_seq THEN
        INSERT INTO settlement_events VALUES (NEW.cancel_seq, NEW.setl_id, 'cancelled');
    END IF;
    IF NEW.status = 'settled' AND NEW.in_force_seq IS DISTINCT FROM OLD.in_force_seq THEN
        INSERT INTO settlement_events VALUES (NEW.in_force_seq, NEW.setl_id, 'in_force');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER settlement_events AFTER INSERT OR UPDATE OF status, in_force_seq, cancel_seq
    ON settlements FOR EACH ROW EXECUTE FUNCTION record_settlement_event();

-- Settlements from before this migration: what their row still tells.
INSERT INTO settlement_events SELECT in_force_seq, setl_id, 'in_force' FROM settlements;
INSERT INTO settlement_events SELECT cancel_seq, setl_id, 'cancelled' FROM settlements
    WHERE cancel_seq IS NOT NULL;
