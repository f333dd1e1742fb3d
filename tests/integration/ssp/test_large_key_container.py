"""A large deployment's key container (many sites, a month of daily keys each) is past gRPC's
4 MiB default message size; the decryptor still takes it whole."""

from __future__ import annotations

import grpc

from bidstream.decryptor.operator_client import OperatorClient
from tests.integration.ssp.fake_operator import API_KEY, FakeOperator, serve_fake_operator
from tests.unit.ssp.support import KeySet, make_key
from uid2.operator.v1 import operator_pb2, operator_pb2_grpc

_GRPC_DEFAULT_MAX_BYTES = 4 * 1024 * 1024


def test_a_key_container_past_4_mib_is_fetched_whole() -> None:
    keys = KeySet()
    # 100 sites' keysets, 700 keys each: more than a month of daily rotation.
    keys.extra = [
        make_key(1000 + n, 20 + n // 700, 100 + n // 700, now=keys.now_s()) for n in range(70_000)
    ]
    fake = FakeOperator(keys)  # type: ignore[abstract]  # a partial fake: only GetBidstreamKeys
    served = serve_fake_operator(fake)
    target = f"127.0.0.1:{served.port}"
    try:
        assert keys.container_proto().ByteSize() > _GRPC_DEFAULT_MAX_BYTES
        with grpc.insecure_channel(target) as plain:  # gRPC's defaults refuse it
            stub = operator_pb2_grpc.OperatorServiceStub(plain)
            try:
                stub.GetBidstreamKeys(
                    operator_pb2.GetBidstreamKeysRequest(),
                    metadata=[("authorization", f"Bearer {API_KEY}")],
                    timeout=30,
                )
                raise AssertionError("gRPC's default size limit let the container through")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

        client = OperatorClient(target, API_KEY, timeout_s=30)
        try:
            body = client.get_bidstream_keys()
        finally:
            client.close()
        assert len(body["keys"]) == 70_002
        site_key = next(k for k in body["keys"] if k["id"] == keys.site.id)
        assert site_key["secret"] and site_key["site_id"] == keys.site.site_id
    finally:
        served.stop()
