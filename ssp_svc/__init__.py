"""ssp_svc."""
