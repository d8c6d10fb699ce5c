"""remote/ahead.py: connections opened ahead, each in a thread, handed over or closed."""

from __future__ import annotations

import threading
import time

import pytest

from fpm_fleet.core.errors import ConnectError
from fpm_fleet.core.inventory import Host
from fpm_fleet.remote.ahead import Ahead


class Opened:
    """A runner as far as Ahead sees it: its host, and whether it was closed."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


def test_take_hands_over_the_connection_opened_for_that_host(build_fleet, inventory_data):
    fleet = build_fleet(inventory_data)
    ahead = Ahead(fleet.hosts, Opened, 2)
    try:
        taken = ahead.take(fleet.hosts[1])
        assert isinstance(taken, Opened) and taken.host is fleet.hosts[1]
        assert ahead.take(fleet.hosts[1]) is None, "a connection is handed over once"
    finally:
        ahead.close()
    assert not taken.closed.is_set(), "a taken connection is its taker's to close"


def test_a_host_not_opened_ahead_is_none(build_fleet, inventory_data):
    fleet = build_fleet(inventory_data)
    ahead = Ahead(fleet.hosts[:1], Opened, 1)
    try:
        assert ahead.take(fleet.hosts[1]) is None
    finally:
        ahead.close()


def test_a_failed_opening_fails_the_host_when_it_is_taken(build_fleet, inventory_data):
    fleet = build_fleet(inventory_data)

    def refused(host: Host) -> Opened:
        raise ConnectError(f"{host.name}: connection refused")

    ahead = Ahead(fleet.hosts, refused, 2)
    try:
        with pytest.raises(ConnectError, match="web1: connection refused"):
            ahead.take(fleet.hosts[0])
    finally:
        ahead.close()


def test_close_closes_what_nobody_took_even_once_its_handshake_ends(build_fleet,
                                                                   inventory_data):
    fleet = build_fleet(inventory_data)
    started, handshake = threading.Event(), threading.Event()
    opened: list[Opened] = []

    def slow(host: Host) -> Opened:
        started.set()
        handshake.wait(5)
        opened.append(Opened(host))
        return opened[-1]

    ahead = Ahead(fleet.hosts[:1], slow, 1)
    assert started.wait(5)
    ahead.close()  # while the handshake is still going on
    handshake.set()
    for _ in range(100):  # the pool's thread finishes the handshake, then closes it
        if opened and opened[0].closed.wait(0.05):
            break
        time.sleep(0.05)
    assert opened and opened[0].closed.is_set(), "the late connection was left open"
