import pytest

from bidstream.eids import uid2_token
from ssp_svc.bid_request import (
    Disposition,
    Impression,
    build_bid_request,
)
from uid2.ssp.v1 import openrtb_pb2

TOKEN = "A4AAAAs-case_Sensitive+token/with=chars"


def imp(**kw: object) -> Impression:
    base = dict(
        publisher_id="p1",
        publisher_name="Pub",
        page_domain="news.example.com",
        app_bundle="",
        placement_id="top",
        floor_price=1.25,
        token=TOKEN,
    )
    base.update(kw)
    return Impression(**base)  # type: ignore[arg-type]  # deliberately wrong or loosely typed fields


@pytest.mark.parametrize("disposition", [Disposition.VALID, Disposition.PASSED_THROUGH])
def test_token_goes_into_eids_unchanged(disposition: Disposition) -> None:
    br = build_bid_request("auc1", imp(), disposition, 150)
    assert br.id == "auc1"
    assert br.tmax == 150 and br.at == 1 and list(br.cur) == ["USD"]
    assert len(br.imp) == 1
    assert br.imp[0].tagid == "top" and br.imp[0].bidfloor == 1.25
    assert br.imp[0].bidfloorcur == "USD"
    assert br.site.domain == "news.example.com"
    assert br.site.publisher.id == "p1"
    assert len(br.user.eids) == 1
    eid = br.user.eids[0]
    assert eid.source == "uidapi.com"
    assert [(u.id, u.atype) for u in eid.uids] == [(TOKEN, 3)]
    assert uid2_token(br) == TOKEN


@pytest.mark.parametrize(
    "disposition",
    [
        Disposition.ABSENT,
        Disposition.DROPPED_EXPIRED,
        Disposition.DROPPED_INVALID,
        Disposition.DROPPED_OPTOUT,
    ],
)
def test_dropped_tokens_are_left_out(disposition: Disposition) -> None:
    br = build_bid_request("auc1", imp(), disposition, 150)
    assert not br.HasField("user") or not br.user.eids
    assert TOKEN not in br.SerializeToString().decode("latin-1")
    assert uid2_token(br) is None


def test_app_inventory() -> None:
    br = build_bid_request("a", imp(page_domain="", app_bundle="com.x"), Disposition.VALID, 100)
    assert br.WhichOneof("distribution_channel") == "app"
    assert br.app.bundle == "com.x"


def test_a_bidder_finds_the_uid2_token_among_other_ids() -> None:
    # Other exchanges' requests carry several eids (ID5, LiveRamp, ...), in any order, and an
    # eid may list an empty uid first: the bidder reads the first non-empty uidapi.com id.
    br = openrtb_pb2.BidRequest(id="a")
    assert uid2_token(br) is None
    br.user.eids.add(source="id5-sync.com").uids.add(id="ID5-xyz", atype=1)
    assert uid2_token(br) is None
    empty = br.user.eids.add(source="uidapi.com")
    empty.uids.add(id="", atype=3)
    assert uid2_token(br) is None
    uid2 = br.user.eids.add(source="uidapi.com")
    uid2.uids.add(id="", atype=3)
    uid2.uids.add(id=TOKEN, atype=3)
    br.user.eids.add(source="liveramp.com").uids.add(id="LR-1", atype=3)
    assert uid2_token(br) == TOKEN


def test_an_euid_token_goes_under_euids_source_and_bidders_find_it() -> None:
    """EUID review: EUID tokens went out under UID2's source, where a bidder that knows EUID
    does not look, and the sample DSP read only UID2's."""
    euid = "E4AAAAs-an_euid+token"  # prefix byte 0x13: EUID, email, then version 128
    br = build_bid_request("auc1", imp(token=euid), Disposition.VALID, 150)
    assert [(e.source, [u.id for u in e.uids]) for e in br.user.eids] == [("euid.eu", [euid])]
    assert uid2_token(br) == euid
