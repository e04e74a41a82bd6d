"""The national interface as the gateway speaks it: the transaction table, errors."""
