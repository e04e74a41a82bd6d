"""HIS adapter: the national interface's transactions as hospital systems send them."""
