-- Catalog corrections: re-settlements linked to what they replace, and the money each one moves.

-- A settlement made again (at the counter after a refund, or by a bulk correction) names the
-- refunded settlement it replaces.
ALTER TABLE settlements ADD COLUMN replaces_setl_id text REFERENCES settlements (setl_id);
CREATE UNIQUE INDEX settlements_replaces ON settlements (replaces_setl_id) WHERE replaces_setl_id IS NOT NULL;
-- What the re-settlement must repeat from the original request.
ALTER TABLE settlements ADD COLUMN acct_used_flag boolean NOT NULL DEFAULT true;

-- Refund and recovery records of bulk corrections: one per corrected settlement. The primary key
-- is what makes `corrections apply` idempotent: a settlement is corrected once.
CREATE TABLE correction_items (
    old_setl_id       text PRIMARY KEY REFERENCES settlements (setl_id),
    new_setl_id       text NOT NULL UNIQUE REFERENCES settlements (setl_id),
    run_id            text NOT NULL,
    fixmedins_code    text NOT NULL,
    medins_list_codg  text NOT NULL,
    psn_no            text NOT NULL,
    mdtrt_id          text NOT NULL,
    applied_at        timestamp NOT NULL,
    -- positive: the patient owes this much more cash; negative: money back to the patient
    patient_cash_delta bigint NOT NULL,
    acct_delta         bigint NOT NULL,  -- new minus old personal-account payment
    fund_delta         bigint NOT NULL,  -- new minus old fund_pay_sumamt
    fund_deltas        jsonb NOT NULL,   -- per fund_pay_type, new minus old
    old_setlinfo       jsonb NOT NULL,
    new_setlinfo       jsonb NOT NULL
);
CREATE INDEX correction_items_run ON correction_items (run_id);
CREATE INDEX correction_items_month ON correction_items (fixmedins_code, applied_at);
