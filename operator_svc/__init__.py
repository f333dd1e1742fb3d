"""The UID2 operator (`uid2-operator`, gRPC `uid2.operator.v1.OperatorService`)."""


def console() -> int:
    """The `uid2-operator` console script: stop signals are caught before the CLI's imports."""
    from svc_common.stop_signals import run_console

    return run_console("operator_svc.cli")
