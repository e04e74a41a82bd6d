-- A replayed deferred claim's reimbursement (主动报) whose settlement the counter cancelled
-- before it was paid: void, never gathered again or batched. Once batched or paid, the
-- cancellation is refused instead.
ALTER TABLE owed_lines DROP CONSTRAINT owed_lines_status_check;
ALTER TABLE owed_lines ADD CONSTRAINT owed_lines_status_check
    CHECK (status IN ('owed', 'batched', 'paid', 'void'));
