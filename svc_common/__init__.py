"""svc_common."""
