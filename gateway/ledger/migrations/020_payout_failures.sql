-- The payees whose account the bank refused (gateway.ledger.payouts, _REFUSED_BEFORE): looked up
-- for every line a batch takes, so indexed.
CREATE INDEX payout_items_failed ON payout_items (psn_no, bank_code, account_no)
    WHERE status = 'failed';
