-- Institutions' monthly clearing amounts (月结算拨付) as owed lines of their own kind, paid in
-- batches of their own to the institutions' accounts.
--
-- source 'clearing': source_ref is '<fixmedins_code>:<yyyy-MM>', and the payee column psn_no
-- holds the institution's code (the bank file's payee field), paid to institution_accounts.
ALTER TABLE owed_lines DROP CONSTRAINT owed_lines_source_check;
ALTER TABLE owed_lines ADD CONSTRAINT owed_lines_source_check
    CHECK (source IN ('manual', 'deferred', 'clearing'));

-- Where an institution's clearing amounts are paid. Every change is an audit row (masked).
CREATE TABLE institution_accounts (
    fixmedins_code text PRIMARY KEY,
    bank_code      text NOT NULL,
    bank_name      text NOT NULL,
    account_no     text NOT NULL,
    holder         text NOT NULL,
    updated_by     text NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Every settlement cancellation asks whether it is a replayed deferred claim's whose
-- reimbursement is owed (gateway.ledger.payouts.hold_for_cancel): by setl_id, indexed.
CREATE INDEX deferred_setl_id ON deferred (setl_id) WHERE setl_id IS NOT NULL;
