-- The agency's side: manual claims (零星报销), payout accounts, what is owed to whom, payout
-- batches with their four approvals, the bank payment file (报盘) and the return file (回盘).
--
-- No foreign key reaches the reference or ledger tables (persons, encounters, settlements):
-- `demo load` truncates those alone, as it leaves the deferred claims.

-- 零星报销: 登记 (registered) → 明细录入 (lines_entered) → 明细审核 (reviewed) → 结算 (settled)
-- → 结算审核 (batch_reviewed); or refused / withdrawn before it is settled.
CREATE SEQUENCE manual_claim_seq;
CREATE TABLE manual_claims (
    claim_no          text PRIMARY KEY,          -- 受理号
    psn_no            text NOT NULL,
    fixmedins_code    text NOT NULL,             -- where the patient was treated
    kind              text NOT NULL CHECK (kind IN ('outpatient', 'inpatient')),
    med_type          text NOT NULL,
    begntime          timestamp NOT NULL,
    endtime           timestamp,
    dise_codg         text NOT NULL DEFAULT '',
    acct_used         boolean NOT NULL DEFAULT false,
    invoice_nos       text[] NOT NULL,
    status            text NOT NULL CHECK (status IN ('registered', 'lines_entered', 'reviewed',
                          'settled', 'batch_reviewed', 'refused', 'withdrawn')),
    registered_by     text NOT NULL,
    registered_at     timestamptz NOT NULL DEFAULT now(),
    entered_by        text,
    reviewed_by       text,
    settled_by        text,
    batch_reviewed_by text,
    closed_reason     text,                      -- why refused or withdrawn
    mdtrt_id          text,                      -- the visit its settlement was built on
    setl_id           text,
    medfee_sumamt     bigint,
    reimbursement_fen bigint CHECK (reimbursement_fen >= 0),
    CHECK ((status IN ('settled', 'batch_reviewed')) = (setl_id IS NOT NULL)),
    CHECK (kind = 'outpatient' OR endtime IS NOT NULL)
);
CREATE INDEX manual_claims_status ON manual_claims (status);
-- Clearing and reconciliation leave a manual claim's settlement out (the institution's own
-- settlements only): looked up by setl_id.
CREATE UNIQUE INDEX manual_claims_setl_id ON manual_claims (setl_id) WHERE setl_id IS NOT NULL;

-- An invoice is claimed once: held while its claim is alive, released when it is refused or
-- withdrawn (the rows are deleted), so a second claim of the same bill is refused.
CREATE TABLE manual_claim_invoices (
    fixmedins_code text NOT NULL,
    invono         text NOT NULL,
    claim_no       text NOT NULL REFERENCES manual_claims,
    PRIMARY KEY (fixmedins_code, invono)
);

CREATE TABLE manual_claim_lines (
    claim_no         text NOT NULL REFERENCES manual_claims,
    feedetl_sn       text NOT NULL,
    medins_list_codg text NOT NULL,
    med_list_codg    text,
    pric_micro       bigint NOT NULL,
    cnt              bigint NOT NULL CHECK (cnt > 0),
    amount_fen       bigint NOT NULL CHECK (amount_fen >= 0),
    fee_ocur_time    timestamp NOT NULL,
    hosp_appr_flag   text,
    PRIMARY KEY (claim_no, feedetl_sn)
);

-- Where a person's reimbursements are paid. Every change is an audit row (masked numbers).
CREATE TABLE payout_accounts (
    psn_no     text PRIMARY KEY,
    bank_code  text NOT NULL,
    bank_name  text NOT NULL,
    account_no text NOT NULL,
    holder     text NOT NULL,
    updated_by text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- What is owed to whom, once per source: a manual claim after its 结算审核, a replayed
-- deferred claim (主动报) whose reimbursement replay recorded. owed → batched → paid; a
-- rejected batch or a failed payment puts it back to owed.
CREATE TABLE owed_lines (
    owed_id    bigserial PRIMARY KEY,
    source     text NOT NULL CHECK (source IN ('manual', 'deferred')),
    source_ref text NOT NULL,                    -- claim_no / deferred claim_id
    psn_no     text NOT NULL,
    amount_fen bigint NOT NULL CHECK (amount_fen > 0),
    status     text NOT NULL DEFAULT 'owed' CHECK (status IN ('owed', 'batched', 'paid')),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, source_ref)
);
CREATE INDEX owed_lines_owed ON owed_lines (owed_id) WHERE status = 'owed';

-- A payout batch (支付批次): pending its approvals → approved → exported (报盘, locked) →
-- returned (回盘 imported); or rejected (its lines released).
CREATE SEQUENCE payout_batch_seq;
CREATE TABLE payout_batches (
    batch_no    text PRIMARY KEY,
    status      text NOT NULL CHECK (status IN ('pending', 'approved', 'exported', 'returned',
                    'rejected')),
    line_count  integer NOT NULL CHECK (line_count > 0),
    total_fen   bigint NOT NULL CHECK (total_fen > 0),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- 初审 (1), 一级复核 (2), 二级复核 (3), 三级复核 (4): one row per level, in order, each by an
-- operator who neither made the batch nor approved it at another level.
CREATE TABLE payout_approvals (
    batch_no text NOT NULL REFERENCES payout_batches,
    level    smallint NOT NULL CHECK (level BETWEEN 1 AND 4),
    operator text NOT NULL,
    decision text NOT NULL CHECK (decision IN ('approved', 'rejected')),
    reason   text NOT NULL DEFAULT '',
    at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_no, level),
    UNIQUE (batch_no, operator)
);

-- A batch's lines, with the account as it stood when the batch was made.
CREATE TABLE payout_items (
    batch_no    text NOT NULL REFERENCES payout_batches,
    seq         integer NOT NULL,
    owed_id     bigint NOT NULL REFERENCES owed_lines,
    psn_no      text NOT NULL,
    amount_fen  bigint NOT NULL CHECK (amount_fen > 0),
    bank_code   text NOT NULL,
    account_no  text NOT NULL,
    holder      text NOT NULL,
    status      text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'paid', 'failed', 'released')),
    bank_reason text NOT NULL DEFAULT '',
    PRIMARY KEY (batch_no, seq)
);
-- Never paid twice: an owed line is in at most one batch still open or paid, so it cannot join
-- a second open batch, nor any batch once paid. Failed and released items leave it free.
CREATE UNIQUE INDEX payout_items_once ON payout_items (owed_id)
    WHERE status IN ('pending', 'paid');

-- The bank payment file (报盘) as exported, byte for byte; exported once per batch.
CREATE TABLE payout_files (
    batch_no    text PRIMARY KEY REFERENCES payout_batches,
    file_name   text NOT NULL,
    body        bytea NOT NULL,
    sha256      text NOT NULL,
    exported_by text NOT NULL,
    exported_at timestamptz NOT NULL DEFAULT now()
);

-- The bank's return file (回盘) accepted for a batch: one per batch; the same file again is
-- recognised by its digest and changes nothing.
CREATE TABLE payout_returns (
    batch_no    text PRIMARY KEY REFERENCES payout_batches,
    sha256      text NOT NULL,
    paid_count  integer NOT NULL,
    paid_fen    bigint NOT NULL,
    failed_count integer NOT NULL,
    failed_fen  bigint NOT NULL,
    imported_by text NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now()
);
