-- What an institution owes back, kept until it is recovered (found from outside: a month whose
-- take-backs outweighed its settlements said what the institution owed back and recorded
-- nothing, and the next month's clearing was paid in full: unless someone recovered it by
-- hand, the fund paid the refunded bills for good).
--
-- A month's negative clearing total is a recovery; a later month's positive total is paid net
-- of the recoveries outstanding, oldest first. `clearing_gathered` records each institution's
-- month once, whatever it came to (negative, nothing, netted whole), so that running the
-- gathering again records nothing twice.
CREATE TABLE clearing_recoveries (
    fixmedins_code text NOT NULL,
    month          text NOT NULL,               -- the month whose clearing came out negative
    amount_fen     bigint NOT NULL CHECK (amount_fen > 0),
    recovered_fen  bigint NOT NULL DEFAULT 0 CHECK (recovered_fen BETWEEN 0 AND amount_fen),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fixmedins_code, month)
);

CREATE TABLE clearing_gathered (
    fixmedins_code text NOT NULL,
    month          text NOT NULL,
    declared_fen   bigint NOT NULL,             -- the month's clearing total (negative: owed back)
    netted_fen     bigint NOT NULL DEFAULT 0,   -- kept back against earlier months' recoveries
    owed_fen       bigint NOT NULL DEFAULT 0,   -- recorded as owed (an owed line)
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fixmedins_code, month)
);

-- Months gathered before: each recorded one is an owed line of its own.
INSERT INTO clearing_gathered (fixmedins_code, month, declared_fen, owed_fen)
    SELECT psn_no, split_part(source_ref, ':', 2), amount_fen, amount_fen
    FROM owed_lines WHERE source = 'clearing'
    ON CONFLICT DO NOTHING;
