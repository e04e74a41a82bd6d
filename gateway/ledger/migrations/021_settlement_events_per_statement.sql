-- The events of 009, recorded once per statement instead of once per row.
--
-- The row trigger ran a PL/pgSQL call and a one-row INSERT for every settlement: under a group
-- commit's twelve-row INSERT that was a third to a half of the statement's time in PostgreSQL
-- (EXPLAIN ANALYZE: 0.7-2.1 ms of 2.2-4.5 ms; the rows themselves, their five indexes and their
-- foreign keys the rest). The same events now come from the statement's transition tables in
-- one INSERT ... SELECT. PostgreSQL allows transition tables only on a trigger of one event and
-- without a column list, hence two triggers, and the UPDATE one fires for every UPDATE of
-- settlements (a cancellation or a reinstatement: rare) and joins old and new rows by setl_id,
-- which no statement changes.
DROP TRIGGER settlement_events ON settlements;
DROP FUNCTION record_settlement_event();

CREATE FUNCTION record_settlements_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO settlement_events
        SELECT n.in_force_seq, n.setl_id, 'in_force' FROM inserted n WHERE n.status = 'settled';
    RETURN NULL;
END
$$;

CREATE FUNCTION record_settlements_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO settlement_events
        SELECT n.cancel_seq, n.setl_id, 'cancelled'
            FROM after_rows n JOIN before_rows o USING (setl_id)
            WHERE n.cancel_seq IS NOT NULL AND n.cancel_seq IS DISTINCT FROM o.cancel_seq
        UNION ALL
        SELECT n.in_force_seq, n.setl_id, 'in_force'
            FROM after_rows n JOIN before_rows o USING (setl_id)
            WHERE n.status = 'settled' AND n.in_force_seq IS DISTINCT FROM o.in_force_seq;
    RETURN NULL;
END
$$;

CREATE TRIGGER settlement_events_inserted AFTER INSERT ON settlements
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION record_settlements_inserted();

CREATE TRIGGER settlement_events_updated AFTER UPDATE ON settlements
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION record_settlements_updated();
