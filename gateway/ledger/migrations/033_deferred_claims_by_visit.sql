-- The claims holding a visit's lines are looked up by the visit on every settlement of a visit
-- while any claim holds lines (gateway.ledger.deferred.pending_on_visits), directly or through
-- the provisional id the claim was filed under.
CREATE INDEX deferred_claims_by_visit ON deferred (mdtrt_id)
    WHERE kind = 'claim' AND status IN ('pending', 'failed');
CREATE INDEX deferred_ids_by_visit ON deferred_ids (mdtrt_id);
