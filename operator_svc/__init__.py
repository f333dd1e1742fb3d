"""operator_svc."""
