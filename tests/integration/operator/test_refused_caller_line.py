"""A call refused because its client is disabled names the caller's site on its log line, for
the gRPC API and the HTTP API alike; a key that matches no client names none."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

from operator_svc import admin
from operator_svc.config import OperatorConfig
from operator_svc.server import create_server
from operator_svc.store import OperatorStore
from svc_common.logging import configure_logging
from tests.integration.operator.conftest import OK_PRIVACY, add_client, init_dir, md
from uid2.operator.v1 import operator_pb2 as pb
from uid2.operator.v1 import operator_pb2_grpc as pbg


def _call_lines(err: str, field: str, value_end: str) -> list[dict[str, object]]:
    lines = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    return [x for x in lines if str(x.get(field, "")).endswith(value_end)]


def test_a_disabled_clients_refused_call_names_its_site(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On-call review: `client disable` left a reader reconnecting twice a second, each line
    UNAUTHENTICATED CLIENT_DISABLED with no site: whose key it was could not be told."""
    init_dir(tmp_path)
    gone = add_client(tmp_path, 321, "gone", ["GENERATOR"])
    store = OperatorStore.open(tmp_path)
    try:
        assert admin.set_client_disabled(store, name="gone", key_id=None, disabled=True)
    finally:
        store.close()
    configure_logging(service="operator")
    served, port = create_server(
        OperatorConfig(data_dir=tmp_path, listen="127.0.0.1:0", http_listen="127.0.0.1:0")
    )
    capsys.readouterr()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pbg.OperatorServiceStub(channel)
            request = pb.GenerateTokenRequest(
                dii=pb.Dii(email="user@example.com"), privacy_settings=OK_PRIVACY
            )
            for key in (md(gone), (("authorization", "Bearer UID2-C-nosuchkey-x"),)):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.GenerateToken(request, metadata=key, timeout=10)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        http = urllib.request.Request(
            f"http://127.0.0.1:{served.http_port}/v2/token/generate",
            data=b"x",
            headers={"Authorization": f"Bearer {gone.api_key}"},
        )
        with pytest.raises(urllib.error.HTTPError) as unauthorised:
            urllib.request.urlopen(http, timeout=10)  # noqa: S310  # a test's own 127.0.0.1 URL
        assert unauthorised.value.code == 401
    finally:
        served.stop(1.0)
    err = capsys.readouterr().err
    assert [
        (x["reason"], x.get("site_id")) for x in _call_lines(err, "method", "GenerateToken")
    ] == [
        ("CLIENT_DISABLED", 321),
        ("INVALID_API_KEY", None),
    ]
    assert [x.get("site_id") for x in _call_lines(err, "path", "/v2/token/generate")] == [321]
