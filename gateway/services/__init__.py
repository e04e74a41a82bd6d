"""Settlement services over the ledger: the settlement state, reversal, conversion."""
