"""Every Redis key prefix and TTL in one place, with the reason for each TTL.

Redis holds only what may be lost: losing any of these keys degrades fairness or fan-out
speed for a moment, never money.
"""

PREFIX = "sgw:"

# Token buckets. A bucket refills completely within seconds, so an idle bucket is worthless after
# a few minutes; the TTL bounds memory under many terminals.
RATE_TERMINAL = PREFIX + "rl:t:"
RATE_INSTITUTION = PREFIX + "rl:i:"
RATE_TTL_SECONDS = 300

# Catalog change fan-out channel (pub/sub: nothing stored).
CATALOG_CHANNEL = PREFIX + "catalog"

# Signed-request nonces are accepted once within the ±300 s window; keep them a little longer
# than the window so a replay at its edge is still recognised.
NONCE = PREFIX + "nonce:"
NONCE_TTL_SECONDS = 660

# Emergency-plan change fan-out (pub/sub: nothing stored); processes also poll the version.
PLAN_CHANNEL = PREFIX + "plan"
