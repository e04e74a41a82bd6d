-- Day-end reconciliation (3201/3202) and the files exchanged for it (9101/9102).

CREATE SEQUENCE file_seq;

-- Files uploaded by institutions (detail files) and produced by the centre (result files).
-- Scoped by institution: one institution can never download another's file.
CREATE TABLE exchange_files (
    file_qury_no   text PRIMARY KEY,
    fixmedins_code text NOT NULL,
    filename       text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('upload', 'result')),
    content        bytea NOT NULL,
    created_at     timestamp NOT NULL,
    dld_endtime    timestamp NOT NULL
);

-- Every reconciliation answered, with both sides' figures: what the mismatch alert counts.
CREATE TABLE reconciliations (
    stmt_id        bigserial PRIMARY KEY,
    fixmedins_code text NOT NULL,
    infno          text NOT NULL,
    setl_optins    text NOT NULL,
    insutype       text NOT NULL DEFAULT '',
    clr_type       text NOT NULL DEFAULT '',
    stmt_begndate  date NOT NULL,
    stmt_enddate   date NOT NULL,
    stmt_rslt      text NOT NULL,
    stmt_rslt_dscr text NOT NULL,
    declared       jsonb NOT NULL,
    centre         jsonb NOT NULL,
    created_at     timestamp NOT NULL DEFAULT now()
);
CREATE INDEX reconciliations_inst ON reconciliations (fixmedins_code, created_at);
