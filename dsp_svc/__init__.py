"""A sample DSP bidder (`uid2-dsp`, gRPC `uid2.ssp.v1.BidderService`)."""


def console() -> int:
    """The `uid2-dsp` console script: stop signals are caught before the CLI's imports."""
    from svc_common.stop_signals import run_console

    return run_console("dsp_svc.cli")
