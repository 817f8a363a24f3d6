"""kopf's peering rule, as the gate applies it to the operator's own work queues."""

from __future__ import annotations

import datetime

import pytest

from modelloop.machinery.peering import peering_paused

NOW = datetime.datetime(2026, 11, 27, 10, 0, 0, tzinfo=datetime.UTC)


def peer(priority: int, seconds_ago: int = 5, lifetime: int = 60) -> dict[str, object]:
    seen = NOW - datetime.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


@pytest.mark.parametrize(
    ("others", "paused"),
    [
        ({}, False),
        ({"b": peer(100)}, False),  # a lower priority stands by, not us
        ({"b": peer(300)}, True),  # a higher one is active
        ({"b": peer(200)}, True),  # the same: kopf pauses both rather than let two act
        ({"b": peer(300, seconds_ago=61)}, False),  # a dead peer does not count
        ({"b": peer(100), "c": peer(300)}, True),
    ],
)
def test_a_replica_stands_by_while_a_live_peer_of_higher_or_equal_priority_exists(
    others: dict[str, dict[str, object]], paused: bool
) -> None:
    peers = {"me": peer(200), **others}
    assert peering_paused(peers, "me", 200, NOW) is paused


def test_its_own_entry_never_pauses_a_replica() -> None:
    assert not peering_paused({"me": peer(200)}, "me", 200, NOW)


def test_kopfs_timestamps_without_a_zone_are_utc() -> None:
    peers = {"b": {"priority": 300, "lifetime": 60, "lastseen": "2026-11-27T09:59:30.123456"}}
    assert peering_paused(peers, "me", 200, NOW)
