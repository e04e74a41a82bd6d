-- The emergency plan: rules set by people (or by a trigger), scheduled windows, deferred claims,
-- operators' sessions and the hash-chained audit log.

-- One rule per (scope, class): setting it again replaces it, clearing it deletes it. The audit
-- log keeps the history.
CREATE TABLE plan_rules (
    scope      text NOT NULL,       -- global | region:<admdvs> | institution:<fixmedins_code>
    class      text NOT NULL CHECK (class IN ('settlement', 'encounter', 'catalog', 'reconcile')),
    action     text NOT NULL CHECK (action IN ('reject', 'defer', 'selfpay', 'route_legacy')),
    reason     text NOT NULL,
    operator   text NOT NULL,
    set_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, class)
);

-- Cut-over windows: [begins, ends) in local time, as the notices announce them.
CREATE TABLE plan_windows (
    window_id  bigserial PRIMARY KEY,
    name       text NOT NULL,
    scope      text NOT NULL,
    classes    text[] NOT NULL,
    action     text NOT NULL CHECK (action IN ('reject', 'defer', 'selfpay', 'route_legacy')),
    begins     timestamp NOT NULL,
    ends       timestamp NOT NULL,
    operator   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (ends > begins),
    UNIQUE (name, scope)
);

-- Every process compares this number to decide whether to reload the plan (poll), besides the
-- Redis announcement.
CREATE TABLE plan_version (
    one     boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint NOT NULL
);
INSERT INTO plan_version VALUES (true, 1);

-- Store and forward ("主动报"): settlement claims answered all-cash, and the encounter calls of
-- the same visits journaled while the ledger was down. `seq` is the order they were received in.
CREATE TABLE deferred (
    seq               bigserial PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('claim', 'call')),
    claim_id          text UNIQUE,              -- the setl_id the counter was given (claims)
    provisional_id    text,                     -- mdtrt_id handed out for a journaled 2201/2401
    fixmedins_code    text NOT NULL,
    msgid             text NOT NULL,
    infno             text NOT NULL,
    psn_no            text NOT NULL DEFAULT '',
    mdtrt_id          text NOT NULL DEFAULT '',
    service_date      date NOT NULL,
    medfee_sumamt     bigint NOT NULL DEFAULT 0,
    body              bytea NOT NULL,           -- the envelope exactly as received
    received_at       timestamp NOT NULL,
    source            text NOT NULL CHECK (source IN ('ledger', 'journal')),
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'settled', 'applied', 'failed', 'withdrawn')),
    setl_id           text,                     -- the settlement replay made
    setlinfo          jsonb,
    reimbursement_fen bigint,                   -- the fund's share, payable to the patient
    fail_reason       text,
    replayed_at       timestamptz,
    withdrawn_msgid   text,
    UNIQUE (fixmedins_code, msgid)
);
CREATE INDEX deferred_pending ON deferred (status, service_date, seq);
CREATE UNIQUE INDEX deferred_provisional ON deferred (provisional_id) WHERE provisional_id IS NOT NULL;

-- Provisional ids mapped to the real ones once the journaled calls are applied.
CREATE TABLE deferred_ids (
    provisional_id text PRIMARY KEY,
    mdtrt_id       text NOT NULL
);

-- A self-pay admission (emergency `selfpay`): insured again after 自费转医保.
ALTER TABLE encounters ADD COLUMN selfpay boolean NOT NULL DEFAULT false;

-- Every change an operator (or a trigger) makes; each row's hash covers the previous row's hash,
-- so a row edited or removed afterwards breaks the chain (`python -m gateway audit verify`).
CREATE TABLE audit_log (
    audit_id  bigint PRIMARY KEY,
    at        timestamptz NOT NULL,
    operator  text NOT NULL,
    action    text NOT NULL,
    target    text NOT NULL,
    reason    text NOT NULL,
    before    jsonb,
    after     jsonb,
    prev_hash text NOT NULL,
    hash      text NOT NULL
);

CREATE TABLE operator_sessions (
    token_sha256 bytea PRIMARY KEY,
    operator     text NOT NULL,
    role         text NOT NULL,
    expires_at   timestamptz NOT NULL
);

-- The last pre-settlement of each visit: before a cut-over window, the in-flight report lists
-- visits pre-settled and not settled since (a pre-settlement changes no money).
CREATE TABLE presettlements (
    mdtrt_id       text PRIMARY KEY,
    fixmedins_code text NOT NULL,
    infno          text NOT NULL,
    at             timestamp NOT NULL
);
