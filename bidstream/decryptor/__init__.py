"""The decryptor side of UID2, shared by the SSP and the sample DSP (`dsp_svc` imports it):
bid-stream keys kept fresh from the operator, opt-outs followed live, and one `TokenChecker`
that turns a token into a verdict without ever letting the raw UID2 out."""
