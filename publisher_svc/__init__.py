"""publisher_svc."""
