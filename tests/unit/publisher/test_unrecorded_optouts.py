"""The publisher's in-memory set of opt-outs its store refused to record: bounded, keyed by
user, and dropping only what the store has since recorded."""

from __future__ import annotations

import pytest

from publisher_svc.unrecorded_optouts import UnrecordedOptOuts


def test_the_limit_counts_dii_hashes_and_a_full_set_holds_nothing_more() -> None:
    held = UnrecordedOptOuts(limit=2)
    assert held.add("u1", "email:a", 1) and held.add("u1", "email:b", 2)
    assert held.add("u1", "email:a", 9)  # held already: no room needed
    assert not held.add("u2", "email:c", 3)
    assert len(held) == 2 and not held.holds_user("u2") and not held.holds_dii("email:c")
    assert held.of_user("u1") == {"email:a": 1, "email:b": 2}  # the first answer's time


def test_forgetting_what_was_recorded_keeps_one_held_since() -> None:
    held = UnrecordedOptOuts()
    held.add("u1", "email:a", 1)
    recorded = held.of_user("u1")
    held.add("u1", "email:b", 2)  # while the store was writing `recorded`
    held.forget("u1", recorded)
    assert held.of_user("u1") == {"email:b": 2} and len(held) == 1
    held.forget("u1", {"email:b": 2})
    assert not held.holds_user("u1") and held.users() == [] and len(held) == 0


def test_a_client_side_refresh_holds_a_dii_but_no_user() -> None:
    held = UnrecordedOptOuts()
    held.add("", "email:a", 1)
    assert held.holds_dii("email:a") and not held.holds_user("")


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError):
        UnrecordedOptOuts(limit=-1)
