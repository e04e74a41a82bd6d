-- When each change of a settlement's standing happened, by the gateway's clock, so that a
-- month's clearing can tell what was in force at any moment, whatever happened after.
--
-- The settlements row keeps only the last cancellation, and a 2601 of a cancellation erases it
-- (found from outside: a September cancellation of an August settlement, reversed in
-- November, made September's ended report show the settlement again and lose its take-back,
-- and November never paid it back: the hospital was short the fund's share for good). The
-- events record every change; a cancellation now carries its cancel_setl_time and a
-- reinstatement (2601 of a cancellation) its reinstated_at, both written by the gateway. A
-- settlement's first coming into force keeps `at` null: it is its setl_time (read so), and
-- the hot path's statement trigger stays as it was.
ALTER TABLE settlements ADD COLUMN reinstated_at timestamp;
ALTER TABLE settlement_events ADD COLUMN at timestamp;

-- Events from before this migration: what the rows still tell. A cancellation a reinstatement
-- erased kept no time, and an earlier reinstatement none either: both stay null, dated with
-- their settlement (in force throughout, as the reports read it until now).
UPDATE settlement_events e SET at = s.cancel_setl_time
    FROM settlements s
    WHERE s.setl_id = e.setl_id AND e.kind = 'cancelled' AND e.seq = s.cancel_seq;

CREATE OR REPLACE FUNCTION record_settlements_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO settlement_events (seq, setl_id, kind, at)
        SELECT n.cancel_seq, n.setl_id, 'cancelled', n.cancel_setl_time
            FROM after_rows n JOIN before_rows o USING (setl_id)
            WHERE n.cancel_seq IS NOT NULL AND n.cancel_seq IS DISTINCT FROM o.cancel_seq
        UNION ALL
        SELECT n.in_force_seq, n.setl_id, 'in_force', n.reinstated_at
            FROM after_rows n JOIN before_rows o USING (setl_id)
            WHERE n.status = 'settled' AND n.in_force_seq IS DISTINCT FROM o.in_force_seq;
    RETURN NULL;
END
$$;
