"""A request's way through: dispatch, msgid journal, group commit, admission (overload, rate limits, signatures, the HTTP edge)."""
