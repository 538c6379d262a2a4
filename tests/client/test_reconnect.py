"""When a client that lost its server retries and when it gives up, on a chosen clock."""

import pytest

from splitfed.client.link import HandshakeRejected, ServerLost, ServerUnreachable
from splitfed.client.reconnect import REJECTED_GRACE_S, ReconnectPolicy


def policy() -> ReconnectPolicy:
    return ReconnectPolicy("client-0", max_reconnect_s=600.0, connect_timeout_s=30.0)


def test_a_welcomed_client_waits_the_long_budget_from_its_first_loss():
    p = policy()
    assert p.lost(ServerLost("silent"), now=1000.0, welcomed=True, started=0.0)
    assert not p.lost(ServerLost("silent"), now=1599.0, welcomed=True, started=0.0)  # same reason: no new warning
    with pytest.raises(ServerLost, match=r"client-0 gave up after 601 s: silent"):
        p.lost(ServerLost("silent"), now=1601.0, welcomed=True, started=0.0)


def test_before_the_first_welcome_the_wait_counts_from_the_start_and_is_short():
    p = policy()
    assert p.lost(ServerLost("no answer"), now=29.0, welcomed=False, started=0.0)
    with pytest.raises(ServerLost, match="gave up after 31 s"):
        p.lost(ServerLost("no answer"), now=31.0, welcomed=False, started=0.0)


def test_a_refused_handshake_is_retried_only_briefly_and_an_unreachable_endpoint_not_at_all():
    p = policy()
    p.lost(HandshakeRejected("refused"), now=0.0, welcomed=False, started=0.0)
    with pytest.raises(ServerLost, match="refused"):
        p.lost(HandshakeRejected("refused"), now=REJECTED_GRACE_S + 1, welcomed=False, started=0.0)
    with pytest.raises(ServerLost, match="gave up after 0 s: bad host"):
        policy().lost(ServerUnreachable("bad host"), now=5.0, welcomed=False, started=5.0)


def test_a_new_connection_starts_a_new_wait():
    p = policy()
    p.lost(ServerLost("silent"), now=0.0, welcomed=True, started=0.0)
    p.connected()
    assert p.lost(ServerLost("other"), now=590.0, welcomed=True, started=0.0)  # a new reason: warn again
    assert not p.lost(ServerLost("other"), now=1180.0, welcomed=True, started=0.0)  # 590 s into the new wait
