-- The 就诊凭证类型 a settlement was made with (01 电子凭证, 02 身份证, 03 社保卡), so that a
-- 5203 and a cancellation answer it as the settlement did (found from outside: they answered "",
-- a field protocol.md §3.1 lists in setlinfo). Settlements made before this migration keep "".
ALTER TABLE settlements ADD COLUMN mdtrt_cert_type text NOT NULL DEFAULT '';
