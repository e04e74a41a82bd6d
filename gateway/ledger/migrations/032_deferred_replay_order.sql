-- Replay takes the next pending claim in service-date order and the next pending call in the
-- order received. The index on (status, service_date, seq) gave the first of a day's claims,
-- not the first by received_at, so each take sorted every pending claim of that day: a long
-- outage's backlog (tens of thousands of claims, most of one day) was replayed at a cost per
-- claim that grew with the backlog (4 ms a take at 1,000 claims). These walk the order itself.
CREATE INDEX deferred_pending_claims ON deferred (kind, service_date, received_at, seq)
    WHERE status = 'pending';
CREATE INDEX deferred_pending_calls ON deferred (kind, received_at, seq)
    WHERE status = 'pending';
