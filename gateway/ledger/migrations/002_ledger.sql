-- The durable ledger: visits, fee lines, settlements, accumulators, idempotency.

CREATE SEQUENCE mdtrt_seq;
CREATE SEQUENCE setl_seq;
CREATE SEQUENCE sign_seq;

CREATE TABLE sign_ins (
    sign_no        text PRIMARY KEY,
    fixmedins_code text NOT NULL,
    opter_no       text NOT NULL,
    mac            text NOT NULL DEFAULT '',
    ip             text NOT NULL DEFAULT '',
    sign_time      timestamp NOT NULL,
    sign_out_time  timestamp
);

CREATE TABLE encounters (
    mdtrt_id          text PRIMARY KEY,
    fixmedins_code    text NOT NULL,
    psn_no            text NOT NULL REFERENCES persons,
    insutype          text NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('outpatient', 'inpatient', 'pharmacy')),
    med_type          text NOT NULL,
    begntime          timestamp NOT NULL,
    endtime           timestamp,
    ipt_otp_no        text NOT NULL,
    dise_codg         text NOT NULL DEFAULT '',
    dise_name         text NOT NULL DEFAULT '',
    status            text NOT NULL CHECK (status IN ('open', 'discharged', 'cancelled')),
    insuplc_admdvs    text NOT NULL,
    -- inpatient: the admission's deductible, fixed at its first settlement (settlement-rules §4)
    adm_dedc_fen      bigint,
    adm_dedc_used_fen bigint NOT NULL DEFAULT 0,
    detail            jsonb NOT NULL DEFAULT '{}',
    created_msgid     text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX encounters_psn ON encounters (psn_no);
CREATE UNIQUE INDEX encounters_ipt_otp_no ON encounters (fixmedins_code, kind, ipt_otp_no)
    WHERE status <> 'cancelled';

-- Only fee lines in force are kept: 2205/2302 delete unsettled lines (they may be uploaded again
-- under the same feedetl_sn); settled lines carry their setl_id until the settlement is cancelled.
CREATE TABLE fee_lines (
    mdtrt_id         text NOT NULL REFERENCES encounters,
    feedetl_sn       text NOT NULL,
    chrg_bchno       text NOT NULL DEFAULT '',
    init_feedetl_sn  text NOT NULL DEFAULT '',
    psn_no           text NOT NULL,
    medins_list_codg text NOT NULL,
    med_list_codg    text,
    pric_micro       bigint NOT NULL,
    cnt              bigint NOT NULL,
    amount_fen       bigint NOT NULL,
    fee_ocur_time    timestamp NOT NULL,
    hosp_appr_flag   text,
    setl_id          text,
    uploaded_msgid   text NOT NULL,
    PRIMARY KEY (mdtrt_id, feedetl_sn)
);
CREATE INDEX fee_lines_batch ON fee_lines (mdtrt_id, chrg_bchno);

CREATE TABLE accumulators (
    psn_no          text NOT NULL REFERENCES persons,
    year            integer NOT NULL,
    dedc_outpatient bigint NOT NULL DEFAULT 0,
    dedc_chronic    bigint NOT NULL DEFAULT 0,
    pool_outpatient bigint NOT NULL DEFAULT 0,
    pool_inpatient  bigint NOT NULL DEFAULT 0,
    pool_pharmacy   bigint NOT NULL DEFAULT 0,
    hifob           bigint NOT NULL DEFAULT 0,
    hifmi           bigint NOT NULL DEFAULT 0,
    mi_qualified    bigint NOT NULL DEFAULT 0,
    maf             bigint NOT NULL DEFAULT 0,
    cvlserv         bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (psn_no, year)
);

CREATE TABLE settlements (
    setl_id           text PRIMARY KEY,
    fixmedins_code    text NOT NULL,
    mdtrt_id          text NOT NULL REFERENCES encounters,
    psn_no            text NOT NULL REFERENCES persons,
    infno             text NOT NULL,
    medins_setl_id    text NOT NULL,            -- the request's msgid
    chrg_bchno        text NOT NULL DEFAULT '',
    mid_setl_flag     text NOT NULL DEFAULT '0',
    med_type          text NOT NULL,
    insutype          text NOT NULL,
    category          text NOT NULL,
    clr_type          text NOT NULL,
    clr_optins        text NOT NULL,            -- the insured region: 3201's setl_optins
    mdtrtarea_admvs   text NOT NULL,
    service_date      date NOT NULL,
    year              integer NOT NULL,
    setl_time         timestamp NOT NULL,
    status            text NOT NULL CHECK (status IN ('settled', 'cancelled')),
    cancel_setl_time  timestamp,
    cancel_msgid      text,
    snapshot_version  bigint NOT NULL,
    medfee_sumamt     bigint NOT NULL,
    fulamt_ownpay_amt bigint NOT NULL,
    overlmt_selfpay   bigint NOT NULL,
    preselfpay_amt    bigint NOT NULL,
    inscp_scp_amt     bigint NOT NULL,
    act_pay_dedc      bigint NOT NULL,
    hifp_pay          bigint NOT NULL,
    cvlserv_pay       bigint NOT NULL,
    hifes_pay         bigint NOT NULL,
    hifmi_pay         bigint NOT NULL,
    hifob_pay         bigint NOT NULL,
    maf_pay           bigint NOT NULL,
    oth_pay           bigint NOT NULL,
    fund_pay_sumamt   bigint NOT NULL,
    psn_part_amt      bigint NOT NULL,
    acct_pay          bigint NOT NULL,
    psn_cash_pay      bigint NOT NULL,
    hosp_part_amt     bigint NOT NULL,
    balc              bigint NOT NULL,
    pool_prop_bp      integer NOT NULL,
    -- exactly what the settlement added to the year's accumulators; a cancellation subtracts it
    delta             jsonb NOT NULL,
    lines             jsonb NOT NULL,           -- per-line split incl. the mapping each line used
    dev_no            text NOT NULL DEFAULT '',
    opter             text NOT NULL DEFAULT '',
    CHECK (medfee_sumamt = fulamt_ownpay_amt + overlmt_selfpay + preselfpay_amt + inscp_scp_amt),
    CHECK (medfee_sumamt = fund_pay_sumamt + psn_part_amt + hosp_part_amt),
    CHECK (psn_part_amt = acct_pay + psn_cash_pay),
    CHECK (fund_pay_sumamt = hifp_pay + cvlserv_pay + hifes_pay + hifmi_pay + hifob_pay + maf_pay + oth_pay)
);
CREATE INDEX settlements_psn ON settlements (psn_no, year);
CREATE INDEX settlements_mdtrt ON settlements (mdtrt_id);
CREATE INDEX settlements_inst_time ON settlements (fixmedins_code, setl_time);

CREATE TABLE settlement_funds (
    setl_id            text NOT NULL REFERENCES settlements,
    fund_pay_type      text NOT NULL,
    fund_pay_type_name text NOT NULL,
    fund_payamt        bigint NOT NULL,
    inscp_scp_amt      bigint NOT NULL,
    crt_payb_lmt_amt   bigint NOT NULL,
    PRIMARY KEY (setl_id, fund_pay_type)
);

-- Idempotency by (institution, msgid): the request's hash and the exact answer bytes.
-- A row with a NULL answer is a request in flight (its transaction holds the key).
CREATE TABLE idempotency (
    fixmedins_code text NOT NULL,
    msgid          text NOT NULL,
    infno          text NOT NULL,
    body_sha256    bytea NOT NULL,
    answer         bytea,
    infcode        integer,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (fixmedins_code, msgid)
);
CREATE INDEX idempotency_created ON idempotency (created_at);
