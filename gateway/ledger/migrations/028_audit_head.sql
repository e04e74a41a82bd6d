-- The audit chain's head, kept apart from its rows and written with each of them: the last
-- row's id and hash. Without it the chain's end was wherever its rows ended, so deleting the
-- newest row (the last change made) left a shorter chain that verified intact, and the next
-- change took the deleted row's id (found from outside). With it, `audit verify` names the
-- missing rows at the end, and the next change is chained to the head, not to what is left.
CREATE TABLE audit_head (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    audit_id  bigint NOT NULL,
    hash      text NOT NULL
);
INSERT INTO audit_head (audit_id, hash)
    SELECT audit_id, hash FROM audit_log ORDER BY audit_id DESC LIMIT 1;
