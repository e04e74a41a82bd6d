-- A visit's settlement the old system made under the emergency plan's route_legacy (its answer
-- relayed and kept against the msgid): the lines it settled (a charge batch, or the whole stay)
-- are not settled here too until the old system's settlement is cancelled through the gateway
-- (found from outside: once the rule was cleared, the same batch sent under a new msgid was
-- settled here again, the fund paying it twice, once in each system).
CREATE TABLE legacy_settlements (
    fixmedins_code text NOT NULL,
    setl_id        text NOT NULL,  -- the old system's
    mdtrt_id       text NOT NULL,  -- the visit as this gateway numbers it
    lines          text NOT NULL,  -- the charge batch, or '0000' (all of the visit's lines)
    infno          text NOT NULL,
    msgid          text NOT NULL,
    settled_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at   timestamptz,
    PRIMARY KEY (fixmedins_code, setl_id)
);
CREATE INDEX legacy_settlements_in_force ON legacy_settlements (mdtrt_id)
    WHERE cancelled_at IS NULL;
