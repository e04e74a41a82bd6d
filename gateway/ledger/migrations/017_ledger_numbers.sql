-- The number of each ledger cluster (gateway.ledger.partitions), kept in the main database: a
-- cluster's 就诊ID, 结算ID and sign-in serials are drawn from its own range (number × 10^10 on),
-- so that ids drawn by different databases never collide. The main database is number 0.
CREATE TABLE ledger_numbers (
    name   text PRIMARY KEY,
    number int GENERATED ALWAYS AS IDENTITY (MINVALUE 1 MAXVALUE 99)
);
