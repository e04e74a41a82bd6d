-- Which manual claim holds each invoice of an institution, across the ledger databases
-- (gateway.services.agency_ledgers): kept in the main database when the ledger is split by
-- region, so that one invoice is claimed once whoever's region claims it. The claim's own
-- database stays the truth (manual_claim_invoices); a row here naming a claim that no longer
-- holds the invoice there is taken over by the next claim.
CREATE TABLE invoice_registry (
    fixmedins_code text NOT NULL,
    invono         text NOT NULL,
    claim_no       text NOT NULL,
    PRIMARY KEY (fixmedins_code, invono)
);
