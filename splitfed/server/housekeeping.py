"""The server's housekeeping steps, run after every message or poll timeout, and how their faults are told.

A step that raises must not take the server down (it serves everyone else), nor flood its log:
the server ticks several times a second, and a fault that persists would otherwise write a
traceback and a metrics ``error`` event on every tick.  So a fault *episode* (failing ticks in
a row) is reported once: its first failure with the traceback and one ``error`` event; later
failures are counted, with a warning every `remind_every` of them; the first clean tick logs
"housekeeping recovered after N failures" and writes a ``recovered`` event.  A different
fault in the same episode (another exception type or place) gets its traceback once too.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from typing import Protocol

from splitfed.checks import is_int

log = logging.getLogger("splitfed.server")

REMIND_EVERY = 1000  # failing ticks between two "still failing" warnings (about minutes at heartbeat rate)


class MetricsSink(Protocol):
    def write(self, event: str, **fields) -> dict: ...


def fault_signature(exc: BaseException) -> tuple[str, str, int]:
    """What makes two failures the same fault: the exception type and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__, "?", 0
    return type(exc).__name__, frames[-1].filename, frames[-1].lineno or 0


class Housekeeping:
    """Runs `steps` in order each tick; a raising step ends that tick's housekeeping, reported as above."""

    def __init__(
        self,
        steps: Sequence[Callable[[], object]],
        *,
        metrics: MetricsSink,
        logger: logging.Logger = log,
        remind_every: int = REMIND_EVERY,
    ):
        if not is_int(remind_every) or remind_every < 1:
            raise ValueError(f"remind_every: expected an integer >= 1, got {remind_every!r}")
        self.steps = tuple(steps)
        self.metrics, self.log, self.remind_every = metrics, logger, remind_every
        self.failures = 0  # failing ticks in a row: the current episode's length
        self._seen: set[tuple[str, str, int]] = set()  # the faults already told in this episode

    def tick(self) -> bool:
        """Run every step; True when all ran, False when one raised (the server goes on either way)."""
        try:
            for step in self.steps:
                step()
        except Exception as exc:  # a bug or a bad peer's data must not take the server down
            self._failed(exc)
            return False
        if self.failures:
            self.log.warning("housekeeping recovered after %d failure(s)", self.failures)
            self.metrics.write("recovered", code="server", failures=self.failures)
            self.failures = 0
            self._seen.clear()
        return True

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        signature = fault_signature(exc)
        if signature not in self._seen:
            self._seen.add(signature)
            self.log.error("housekeeping failed; the server goes on", exc_info=exc)
            detail = f"housekeeping failed: {type(exc).__name__}: {exc}"[:300]
            self.metrics.write("error", code="server", detail=f"{detail} (see the server log)")
        elif self.failures % self.remind_every == 0:
            self.log.warning(
                "housekeeping still failing: %d failures in a row (last: %s: %s)",
                self.failures,
                type(exc).__name__,
                exc,
            )
