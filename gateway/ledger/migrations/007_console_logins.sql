-- The console's log-in throttle: failed attempts per operator name and per client address in
-- the current window; a key past its limit is refused until locked_until, or until the duty team
-- clears it (audited). Kept in the ledger so every worker process counts the same attempts.
CREATE TABLE console_login_failures (
    kind         text NOT NULL CHECK (kind IN ('operator', 'address')),
    key          text NOT NULL,
    failures     integer NOT NULL CHECK (failures >= 0),
    first_at     timestamptz NOT NULL,      -- start of the current window
    last_at      timestamptz NOT NULL,
    locked_until timestamptz,
    PRIMARY KEY (kind, key)
);
