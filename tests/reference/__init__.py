"""An independent reference model of the settlement rules and its checks against the gateway."""
