"""The UID2 publisher (`uid2-publisher serve`, gRPC `uid2.publisher.v1.PublisherService`).

Logs users in (normalising and hashing their DII locally, so only the hash reaches the
operator), keeps their identities fresh (on demand and with a background refresher), stores them
server side in SQLite or hands them back as the `__uid_2` cookie, and sends the advertising token
exactly as received to the SSP at each impression.

Modules: `publisher` (domain rules), `refresh_policy` (the pure refresh decision), `cookie`,
`store/` (SQLite), `operator_client` / `ssp_client` (peers), `refresher`, `servicer`, `server`,
`config`, `cli`."""


def console() -> int:
    """The `uid2-publisher` console script: stop signals are caught before the CLI's imports."""
    from svc_common.stop_signals import run_console

    return run_console("publisher_svc.cli")
