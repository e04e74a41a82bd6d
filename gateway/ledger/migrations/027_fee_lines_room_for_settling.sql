-- An outpatient line is written by its upload (2204) and written again by its settlement
-- (2207: its setl_id), minutes apart. On pages packed full of uploads the settled version
-- found no room beside the upload, so every such update left its page: a new entry in both of
-- the table's indexes for each line, and dead entries for vacuum (none of 360 lines settled
-- stayed on its page, tests/integration/test_rows_stay_on_their_pages.py); marking a visit's
-- lines settled was the visit chain's costliest statement in PostgreSQL. No index reads
-- setl_id, so an update that stays on its page touches no index. A visit's row is updated the
-- same way by its diagnosis (2203). Pages filled to two fifths leave room for every row's
-- second version and its line pointer (at half, 330 of the 360 stayed); the statement fell
-- from 140-171 to 45-80 µs a call (benchmarks/RESULTS.md). A pharmacy's lines and visits,
-- written once, take more pages: 2-3% more of PostgreSQL's time on a sale's write. Pages
-- written before this keep their layout.
ALTER TABLE fee_lines SET (fillfactor = 40);
ALTER TABLE encounters SET (fillfactor = 40);
