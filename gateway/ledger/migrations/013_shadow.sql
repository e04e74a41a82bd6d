-- A parallel run (docs/emergency.md "Parallel run"): the plan's shadow actions, and every
-- settlement priced by both systems, compared.

-- The two actions of a parallel run: `shadow` (this gateway answers, the old system prices in
-- its shadow) and `route_legacy_shadow` (the old system answers, this gateway prices in its
-- shadow, writing nothing in its ledger).
ALTER TABLE plan_rules DROP CONSTRAINT plan_rules_action_check;
ALTER TABLE plan_rules ADD CONSTRAINT plan_rules_action_check CHECK (
    action IN ('reject', 'defer', 'selfpay', 'route_legacy', 'shadow', 'route_legacy_shadow')
);
ALTER TABLE plan_windows DROP CONSTRAINT plan_windows_action_check;
ALTER TABLE plan_windows ADD CONSTRAINT plan_windows_action_check CHECK (
    action IN ('reject', 'defer', 'selfpay', 'route_legacy', 'shadow', 'route_legacy_shadow')
);

-- One row per settlement compared. The request and both answers are kept, byte for byte as
-- text, only when they differ: the agreeing rows are there for the rates (the cut-over report).
CREATE TABLE shadow_comparisons (
    comparison_id  bigserial PRIMARY KEY,
    compared_at    timestamptz NOT NULL DEFAULT now(),
    answered_by    text NOT NULL CHECK (answered_by IN ('gateway', 'legacy')),
    fixmedins_code text NOT NULL,
    admdvs         text NOT NULL,       -- the institution's region
    infno          text NOT NULL,       -- the counter's transaction
    shadow_infno   text NOT NULL,       -- the pre-settlement the shadow was asked
    msgid          text NOT NULL,
    med_type       text NOT NULL,
    category       text NOT NULL,       -- outpatient | chronic | inpatient | pharmacy | ''
    differs        boolean NOT NULL,
    cause          text,                -- the first cause (shadow_diff.Cause order); NULL: equal
    item           text,                -- the first differing line's medins_list_codg
    request        text,
    answer         text,                -- what the counter got
    shadow_answer  text,                -- what the shadow priced
    diagnosis      jsonb
);
CREATE INDEX shadow_comparisons_time ON shadow_comparisons (compared_at);
CREATE INDEX shadow_comparisons_differing
    ON shadow_comparisons (fixmedins_code, compared_at) WHERE differs;

-- One row per difference found, attributed: "目录匹配错误 at institution X, item Y: class A
-- here, B there" is `WHERE cause = 'catalog_class' AND fixmedins_code = X`.
CREATE TABLE shadow_differences (
    comparison_id  bigint NOT NULL REFERENCES shadow_comparisons ON DELETE CASCADE,
    fixmedins_code text NOT NULL,
    cause          text NOT NULL,
    place          text NOT NULL,       -- setlinfo | setldetail:<fund_pay_type> | line:<feedetl_sn>
    item           text NOT NULL DEFAULT '',
    field          text NOT NULL,
    answered       text,
    shadowed       text
);
CREATE INDEX shadow_differences_by ON shadow_differences (fixmedins_code, cause, item);
