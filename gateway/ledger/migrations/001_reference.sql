-- Reference data the catalog snapshot is built from, and the insured persons.
-- Money is integer fen, ratios basis points, prices micro-yuan (see gateway/money.py).

CREATE TABLE institutions (
    fixmedins_code  text PRIMARY KEY,
    fixmedins_name  text NOT NULL,
    fixmedins_type  text NOT NULL,
    hosp_lv         integer NOT NULL CHECK (hosp_lv BETWEEN 1 AND 3),
    admdvs          text NOT NULL
);

CREATE TABLE catalog_entries (
    med_list_codg    text NOT NULL,
    med_list_name    text NOT NULL,
    list_type        text NOT NULL,
    med_chrgitm_type text NOT NULL,
    chrgitm_lv       text NOT NULL,
    lmt_used_flag    text NOT NULL,
    begndate         date NOT NULL,
    enddate          date NOT NULL,
    PRIMARY KEY (med_list_codg, begndate)
);

-- Mappings are versioned by date and never updated in place: an upload adds a row, a revoke
-- stamps revoked_at, so every settlement's mapping can be found again (catalog corrections).
CREATE TABLE catalog_mappings (
    mapping_id            bigserial PRIMARY KEY,
    fixmedins_code        text NOT NULL,
    medins_list_codg      text NOT NULL,
    fixmedins_hilist_name text NOT NULL,
    list_type             text NOT NULL,
    med_list_codg         text NOT NULL,
    begndate              date NOT NULL,
    enddate               date NOT NULL,
    uploaded_at           timestamptz NOT NULL DEFAULT now(),
    revoked_at            timestamptz
);
CREATE INDEX catalog_mappings_item ON catalog_mappings (fixmedins_code, medins_list_codg);

CREATE TABLE selfpay_ratios (
    med_list_codg text NOT NULL,
    insu_admdvs   text NOT NULL,
    selfpay_bp    integer NOT NULL CHECK (selfpay_bp BETWEEN 0 AND 10000),
    begndate      date NOT NULL,
    enddate       date NOT NULL,
    PRIMARY KEY (med_list_codg, insu_admdvs, begndate)
);

CREATE TABLE price_caps (
    med_list_codg text NOT NULL,
    insu_admdvs   text NOT NULL,
    cap_micro     bigint NOT NULL CHECK (cap_micro >= 0),
    begndate      date NOT NULL,
    enddate       date NOT NULL,
    PRIMARY KEY (med_list_codg, insu_admdvs, begndate)
);

-- One row: bumped by every reference change so each process rebuilds its snapshot.
CREATE TABLE catalog_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version   bigint NOT NULL
);
INSERT INTO catalog_version VALUES (true, 1);

CREATE TABLE persons (
    psn_no             text PRIMARY KEY,
    psn_name           text NOT NULL,
    psn_cert_type      text NOT NULL,
    certno             text NOT NULL,
    gend               text NOT NULL,
    brdy               date NOT NULL,
    insuplc_admdvs     text NOT NULL,
    insutype           text NOT NULL,
    psn_type           text NOT NULL,
    psn_insu_stas      text NOT NULL,
    cvlserv_flag       text NOT NULL,
    maf_class          text NOT NULL DEFAULT '',
    chronic_dise_codg  text[] NOT NULL DEFAULT '{}',
    mdtrt_cert_no_card text NOT NULL DEFAULT ''
);
CREATE INDEX persons_certno ON persons (certno);
CREATE INDEX persons_card ON persons (mdtrt_cert_no_card);

-- The row locked FOR UPDATE by every settlement of the person: it serializes them.
CREATE TABLE accounts (
    psn_no      text PRIMARY KEY REFERENCES persons,
    balance_fen bigint NOT NULL CHECK (balance_fen >= 0)
);
