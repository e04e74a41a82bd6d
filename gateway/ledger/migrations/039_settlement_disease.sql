-- The 病种编码 a settlement was made under (its visit's at the time: 2203's dise_codg, a stay's
-- admission's): a visit's information may change after a settlement is cancelled, and what the
-- settlement was judged by must not change with it (found from outside: the ledger checker
-- judged a cancelled chronic settlement by its visit's later ordinary diagnosis, and a 2601 put
-- a chronic settlement back in force on a visit since corrected to ordinary). NULL: made before
-- this column (the checker then reads the visit's), or none.
ALTER TABLE settlements ADD COLUMN dise_codg text;
