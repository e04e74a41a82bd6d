-- Visit mirroring in a parallel run (docs/emergency.md "Parallel run", "Visits"): the encounter
-- calls of a visit answered by one system are replayed to the other, so that the other can
-- price the visit's settlement. One outbox of the calls to replay, and the map of the two
-- systems' visit numbers.

-- One row per visit opened (or first named) during the run: the id the counter got, and the
-- id the shadow gave the same visit once its 2201/2401 was mirrored. `not_mirrored`: a call
-- of the visit was dropped, refused by the shadow or failed there, so the shadow's copy of the
-- visit is not the counter's: its pricing is a shadow failure, not a difference.
CREATE TABLE shadow_mirror_visits (
    fixmedins_code   text NOT NULL,
    mdtrt_id         text NOT NULL,      -- as the counter's system answered it
    shadow_mdtrt_id  text,               -- as the shadow answered the mirrored 2201/2401
    state            text NOT NULL DEFAULT 'open'
                     CHECK (state IN ('open', 'mapped', 'not_mirrored')),
    reason           text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fixmedins_code, mdtrt_id)
);

-- The outbox: one row per encounter call to replay, written after the counter's answer (off
-- the request path) by whichever process answered it, delivered by any process, one at a
-- time per visit in the order the counter sent them (received_at, then id).
CREATE TABLE shadow_mirror_calls (
    call_id         bigserial PRIMARY KEY,
    fixmedins_code  text NOT NULL,
    mdtrt_id        text NOT NULL,        -- the visit, as the counter's system numbers it
    target          text NOT NULL CHECK (target IN ('gateway', 'legacy')),  -- the shadow
    infno           text NOT NULL,
    msgid           text NOT NULL,
    opens_visit     boolean NOT NULL,
    body            bytea NOT NULL,       -- the counter's envelope, as received
    answer          bytea NOT NULL,       -- the counter's answer (2204/2301: its lines)
    shadow_answer   bytea,                -- the shadow's answer to the mirrored call
    received_at     timestamptz NOT NULL, -- when the counter's call was received
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'ok', 'refused', 'failed', 'skipped')),
    attempts        integer NOT NULL DEFAULT 0,
    not_before      timestamptz NOT NULL DEFAULT now(),
    detail          text,
    done_at         timestamptz
);
CREATE INDEX shadow_mirror_calls_pending
    ON shadow_mirror_calls (received_at, call_id) WHERE state = 'pending';
-- One row per counter's call: a till's retry of the same msgid, answered again by the system
-- that answered it first (the old system's own journal, under route_legacy_shadow), is not
-- replayed at the shadow a second time.
CREATE UNIQUE INDEX shadow_mirror_calls_msgid
    ON shadow_mirror_calls (fixmedins_code, msgid, target);
CREATE INDEX shadow_mirror_calls_visit
    ON shadow_mirror_calls (fixmedins_code, mdtrt_id, received_at, call_id);
