"""Progress for the commands: tqdm's bar on a terminal, a plain line now and then in a log.

A bar redraws itself with ``\\r`` every second, which a log file (or a pipe) keeps as one
endless line; when the output is not a terminal, `LineProgress` prints ``desc: n/total unit
(key=value, ...)`` at most every `interval_s` seconds and once more at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

LOG_INTERVAL_S = 20.0


class LineProgress:
    """The part of tqdm's interface the commands use (`update`, `set_postfix`, `write`, `close`)."""

    def __init__(
        self,
        *,
        total: int,
        desc: str,
        unit: str,
        file: TextIO,
        interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.interval_s, self.clock = interval_s, clock
        self.n = self.printed = 0
        self.postfix: dict = {}
        self.last = clock()
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last >= self.interval_s:
            self._print()

    def set_postfix(self, **kwargs) -> None:
        self.postfix = kwargs

    def write(self, text: str, file: TextIO | None = None) -> None:
        print(text, file=file or self.file, flush=True)

    def close(self) -> None:
        if not self.closed and self.n != self.printed:
            self._print()
        self.closed = True

    def _print(self) -> None:
        extra = ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        line = f"{self.desc}: {self.n}/{self.total} {self.unit}" + (f" ({extra})" if extra else "")
        print(line, file=self.file, flush=True)
        self.last, self.printed = self.clock(), self.n

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(*, total: int, desc: str, unit: str, disable: bool = False, file: TextIO | None = None):
    """tqdm on a terminal; `LineProgress` otherwise; a silent tqdm when `disable`."""
    from tqdm import tqdm

    file = file or sys.stdout
    if disable or _isatty(file):
        return tqdm(total=total, desc=desc, unit=unit, file=file, mininterval=1.0, disable=disable)
    return LineProgress(total=total, desc=desc, unit=unit, file=file)


def _isatty(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False
