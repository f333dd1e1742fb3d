"""dsp_svc."""
