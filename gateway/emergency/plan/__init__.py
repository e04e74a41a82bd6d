"""The emergency plan: which action applies to a request, who set it, and the cut-over windows."""
