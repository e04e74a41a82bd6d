-- The log-in throttle no longer locks a name for everyone. Failures are counted per name and
-- client address too ('pair', key "<name>@<address>"): the lock lands on the addresses that
-- guessed. A name guessed at from many addresses is only slowed down for the others (one attempt
-- per interval), and not at all from the desks it has logged in from before.
ALTER TABLE console_login_failures DROP CONSTRAINT console_login_failures_kind_check;
ALTER TABLE console_login_failures ADD CONSTRAINT console_login_failures_kind_check
    CHECK (kind IN ('operator', 'address', 'pair'));

CREATE TABLE console_login_desks (
    login      text NOT NULL,
    address    text NOT NULL,
    last_login timestamptz NOT NULL,
    PRIMARY KEY (login, address)
);
