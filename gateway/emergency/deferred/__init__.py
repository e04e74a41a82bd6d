"""Store and forward ("主动报"): deferred claims, the local journal, and their replay."""

CLAIM_PREFIX = "DF"  # setl_id of a deferred claim; real settlement ids never start with it
PROVISIONAL_PREFIX = "PV"  # mdtrt_id handed out while the ledger was down
PROVISIONAL_ID_LENGTH = 30  # the prefix, the region, the day and 14 hex digits of the message
