"""Housekeeping faults: a fault that persists is told once (traceback and one metrics event), then
counted; recovery is logged with the count; a second, different fault is told once too."""

import logging

import pytest

from splitfed.server.housekeeping import Housekeeping


class Metrics:
    def __init__(self):
        self.events = []

    def write(self, event, **fields):
        self.events.append({"event": event, **fields})
        return self.events[-1]


class Flaky:
    """A housekeeping step that fails while `broken` is set."""

    def __init__(self):
        self.broken = False
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.broken:
            raise KeyError("session 7")


def _records(caplog, level):
    return [r for r in caplog.records if r.name == "splitfed.server" and r.levelno == level]


def test_a_persistent_fault_is_logged_once_then_counted_and_its_recovery_told(caplog):
    metrics, flaky, after = Metrics(), Flaky(), Flaky()
    house = Housekeeping([flaky, after], metrics=metrics, remind_every=10)
    caplog.set_level(logging.DEBUG, logger="splitfed.server")
    assert house.tick() and metrics.events == [] and not caplog.records
    flaky.broken = True
    assert [house.tick() for _ in range(25)] == [False] * 25
    assert after.calls == 1  # a raising step ends that tick's housekeeping
    errors = _records(caplog, logging.ERROR)
    assert len(errors) == 1 and errors[0].exc_info[0] is KeyError  # the traceback, once
    assert [m["event"] for m in metrics.events] == ["error"]
    assert metrics.events[0]["code"] == "server" and "KeyError: 'session 7'" in metrics.events[0]["detail"]
    reminders = [r.getMessage() for r in _records(caplog, logging.WARNING)]
    assert reminders == [
        "housekeeping still failing: 10 failures in a row (last: KeyError: 'session 7')",
        "housekeeping still failing: 20 failures in a row (last: KeyError: 'session 7')",
    ]
    flaky.broken = False
    assert house.tick() and after.calls == 2
    assert _records(caplog, logging.WARNING)[-1].getMessage() == "housekeeping recovered after 25 failure(s)"
    assert metrics.events[-1] == {"event": "recovered", "code": "server", "failures": 25}
    # a clean tick after recovery says nothing; the next fault is a new episode, told again
    caplog.clear()
    assert house.tick() and not caplog.records
    flaky.broken = True
    assert not house.tick()
    assert len(_records(caplog, logging.ERROR)) == 1 and [m["event"] for m in metrics.events][-1] == "error"


def test_a_different_fault_in_the_same_episode_gets_its_own_traceback(caplog):
    metrics = Metrics()
    faults = iter([KeyError("a"), KeyError("a"), TypeError("b"), TypeError("b"), KeyError("a")])

    def step():
        raise next(faults)

    house = Housekeeping([step], metrics=metrics)
    caplog.set_level(logging.DEBUG, logger="splitfed.server")
    for _ in range(5):
        assert not house.tick()
    assert [r.exc_info[0] for r in _records(caplog, logging.ERROR)] == [KeyError, TypeError]
    assert [m["event"] for m in metrics.events] == ["error", "error"] and house.failures == 5


def test_remind_every_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="remind_every"):
        Housekeeping([], metrics=Metrics(), remind_every=0)
