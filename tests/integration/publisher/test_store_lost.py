"""A publisher whose store's WAL file is removed while it serves: what the removed file held
(a login's identity, a logout) is saved into the store file before a crash can lose it, the
publisher says so once, and it reports NOT_SERVING."""

from __future__ import annotations

from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from publisher_svc.store.sqlite import SqliteStore
from svc_common.logging import configure_logging
from tests.integration.publisher.conftest import World, wait_for
from tests.support.bad_stores import column_read_by_another_process
from uid2.operator.v1 import operator_pb2
from uid2.publisher.v1 import publisher_pb2 as pb

OK = operator_pb2.PrivacySettings(transparency_notice_accepted=True)


def _users_seen_by_another_process(store_file: Path) -> list[str]:
    query = "SELECT user_id FROM identities ORDER BY user_id"
    return column_read_by_another_process(store_file, query)


def test_a_removed_wal_file_is_saved_from_and_the_publisher_stops_serving(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(service="test")
    config = world.config("lost")
    _, stub = world.publisher(config)
    for user in ("al", "bo"):
        stub.Login(pb.LoginRequest(user_id=user, email=f"{user}@example.com", privacy_settings=OK))
    stub.Logout(pb.LogoutRequest(user_id="bo"))
    store_file = Path(config.data_dir) / SqliteStore.FILE_NAME
    Path(f"{store_file}-wal").unlink()
    health = health_pb2_grpc.HealthStub(world.channels[-1])

    def not_serving() -> bool:
        stub.GetAdvertisingToken(pb.GetAdvertisingTokenRequest(user_id="al"))  # reads the store
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        return bool(status == health_pb2.HealthCheckResponse.NOT_SERVING)

    assert wait_for(not_serving, 10)
    # What a crash now would leave: the login kept, the logout too.
    assert _users_seen_by_another_process(store_file) == ["al"]
    assert capsys.readouterr().err.count("store_file_replaced") == 1
