-- A 就诊ID and a 结算ID are never the same text (found from outside: a stay's mdtrt_id was also
-- the setl_id of an unrelated settlement, the two drawn from sequences of their own and written
-- the same way, region + date + serial). From here on visits take the odd serials and
-- settlements the even ones, each past every serial either has given, so no id given from now
-- on equals one given before either.
DO $$
DECLARE
    next_free bigint;
BEGIN
    SELECT greatest(
        (SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM mdtrt_seq),
        (SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM setl_seq)
    ) INTO next_free;
    ALTER SEQUENCE mdtrt_seq INCREMENT BY 2;
    ALTER SEQUENCE setl_seq INCREMENT BY 2;
    PERFORM setval('mdtrt_seq', next_free + (1 - next_free % 2), false);  -- the first odd
    PERFORM setval('setl_seq', next_free + next_free % 2, false);  -- the first even
END
$$;
