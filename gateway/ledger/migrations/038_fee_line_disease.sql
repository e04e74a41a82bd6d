-- An outpatient fee line's 病种编码 (2204 dise_codg), kept: one charge batch holds one disease
-- (protocol §2.3, "同一收费批次号病种编号必须一致"), checked against the lines already in the
-- batch and, at settlement, against the visit's (found from outside: a 门慢 batch mixing another
-- disease's lines was settled whole at the chronic ratio). NULL where none was sent.
ALTER TABLE fee_lines ADD COLUMN dise_codg text;
