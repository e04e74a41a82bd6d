"""Importing this module registers every HIS transaction in the dispatch table."""

from adapters.his import (
    catalog,
    dictionary,
    inpatient,
    outpatient,
    person,
    query,
    reconciliation,
    reversal,
    signin,
)

__all__ = [
    "catalog",
    "dictionary",
    "inpatient",
    "outpatient",
    "person",
    "query",
    "reconciliation",
    "reversal",
    "signin",
]
