"""POS adapter: pharmacy counters' 2101/2102/2103."""
