"""When a round closes (RoundPolicy), with an injected clock."""

from splitfed.aggregation import ClientUpdate
from splitfed.server.rounds import RoundPolicy


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_round_waits_for_live_and_unjoined_clients_until_the_deadline():
    clock = Clock()
    rounds = RoundPolicy(["client-0", "client-1"], rounds=2, deadline_s=10, clock=clock)
    assert rounds.due({"client-0"}) is None  # no update yet
    rounds.add("client-0", ClientUpdate(0, 5), 1.0)
    assert rounds.due({"client-0"}) is None  # client-1 never joined and has not left
    rounds.left("client-1")
    assert rounds.due({"client-0"}) == ["client-1"]
    rounds.joined("client-1")
    assert rounds.due({"client-0", "client-1"}) is None
    clock.t = 11
    assert rounds.due({"client-0", "client-1"}) == ["client-1"]  # the deadline closes it without them
    rounds.advance()
    assert rounds.round == 1 and not rounds.done and rounds.updates == {}
    rounds.add("client-0", ClientUpdate(0, 5), None)
    rounds.add("client-1", ClientUpdate(1, 5), None)
    assert rounds.due({"client-0", "client-1"}) == []
    rounds.advance()
    assert rounds.done


def test_deadline_without_any_update_is_renewed():
    clock = Clock()
    rounds = RoundPolicy(["client-0"], rounds=1, deadline_s=10, clock=clock)
    clock.t = 11
    assert rounds.due({"client-0"}) is None and rounds.started == 11
    rounds.add("client-0", ClientUpdate(0, 1), None)
    assert rounds.due(set()) == []
