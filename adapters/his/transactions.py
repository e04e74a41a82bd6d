"""Importing this module registers every HIS transaction in the dispatch table."""

from adapters.his import inpatient, outpatient, person, query, reconciliation, signin

__all__ = ["inpatient", "outpatient", "person", "query", "reconciliation", "signin"]
