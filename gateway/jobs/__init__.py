"""Batch work: monthly clearing, reconciliation files, bulk catalog corrections."""
