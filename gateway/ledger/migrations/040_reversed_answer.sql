-- The answer an original message was given before a 2601 reversed it. Its key then answers
-- retries with the reversal's refusal (`answer`, `tombstone`), as a late original is answered:
-- found from outside (four testers), a till's retry of a sale, refund or settlement after its
-- own 2601 was told 成功 with the old amounts, where the ledger held the opposite. NULL: the
-- key was never reversed, or was reversed before this column (it answers as it did).
ALTER TABLE idempotency ADD COLUMN reversed_answer bytea;
