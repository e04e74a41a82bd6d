-- A replayed deferred claim's reimbursement whose settlement was cancelled while it was merely
-- owed is withdrawn, not deleted: a batch rejected before export still names the line in its
-- released items (a delete broke that reference), and the row is the one a later gather puts
-- back to owed should the cancellation be reversed (gateway.ledger.payouts).
ALTER TABLE owed_lines DROP CONSTRAINT owed_lines_status_check;
ALTER TABLE owed_lines ADD CONSTRAINT owed_lines_status_check
    CHECK (status IN ('owed', 'batched', 'paid', 'withdrawn'));
