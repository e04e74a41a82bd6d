-- A visit settled at the counter is refused where the agency already reimbursed the same bill
-- as a manual claim (gateway.ledger.manual_claims.reimbursed_on, read with every batch of visit
-- settlements): the settled claims are looked up by person.
CREATE INDEX manual_claims_settled_by_person ON manual_claims (psn_no) WHERE setl_id IS NOT NULL;
