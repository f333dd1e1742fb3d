"""The SSP (`uid2-ssp`, gRPC `uid2.ssp.v1.SspService`)."""


def console() -> int:
    """The `uid2-ssp` console script: stop signals are caught before the CLI's imports."""
    from svc_common.stop_signals import run_console

    return run_console("ssp_svc.cli")
