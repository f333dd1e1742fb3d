"""What both sides of the bid stream share, the SSP (ssp_svc) and the sample DSP (dsp_svc):
the decryptor (keys and opt-outs followed from the operator, token verdicts), the key JSON the
official SDKs read, and where a UID2 token sits in an OpenRTB bid request (`eids`)."""
