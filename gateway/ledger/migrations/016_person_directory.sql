-- Which pooling region each insured person belongs to, for every region: the main database's
-- directory when the ledger is split into clusters by region (gateway.ledger.partitions). A
-- request that names the person (psn_no or a certificate) without the insured region is routed
-- by it. Kept in every database for one schema everywhere; only the main database fills it.
CREATE TABLE person_directory (
    psn_no             text PRIMARY KEY,
    certno             text NOT NULL,
    mdtrt_cert_no_card text NOT NULL DEFAULT '',
    insuplc_admdvs     text NOT NULL
);
CREATE INDEX person_directory_certno ON person_directory (certno);
CREATE INDEX person_directory_card ON person_directory (mdtrt_cert_no_card);
