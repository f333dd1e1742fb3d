"""Which auctions a bid-stream reader (StreamBidRequests) sees: a publisher's key only its own
inventory, a subscriber's every auction, either narrowed to one site domain or app bundle."""

from __future__ import annotations

from collections.abc import Callable

from ssp_svc.store.accounts import Account, AccountKind
from svc_common.errors import invalid_argument
from svc_common.names import normalise_domain
from uid2.ssp.v1 import openrtb_pb2


def stream_filter(
    account: Account, site_domain: str, app_bundle: str
) -> Callable[[openrtb_pb2.BidRequest], bool]:
    """The reader's filter; INVALID_ARGUMENT INVALID_SITE_DOMAIN for a domain that is not a
    host name."""
    domain = ""
    if site_domain.strip():
        # As SubmitImpression normalises page_domain (punycode, no trailing dot): a filter
        # compared as typed ("bücher.example", "news.example.com.") would match nothing.
        try:
            domain = normalise_domain(site_domain)
        except ValueError:
            raise invalid_argument(
                "INVALID_SITE_DOMAIN", "site_domain must be a host name like news.example.com"
            ) from None
    bundle = app_bundle.strip()
    own = account.account_id if account.kind is AccountKind.PUBLISHER else None

    def accept(br: openrtb_pb2.BidRequest) -> bool:
        channel = br.site if br.HasField("site") else br.app
        if own is not None and channel.publisher.id != own:
            return False
        if domain and br.site.domain != domain:
            return False
        return not (bundle and br.app.bundle != bundle)

    return accept
