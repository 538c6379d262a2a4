"""Progress in a log: plain lines now and then, never tqdm's carriage returns."""

from __future__ import annotations

import io

from splitfed.cli.progress import LineProgress, progress_bar


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lines_at_most_every_interval_and_at_the_end():
    out, clock = io.StringIO(), Clock()
    bar = LineProgress(total=10, desc="client-0", unit="step", file=out, interval_s=20, clock=clock)
    for i in range(10):
        clock.t = 7.0 * i
        bar.set_postfix(round=0, loss=f"{1.0 / (i + 1):.3f}")
        bar.update(1)
    clock.t = 64.0
    bar.close()
    bar.close()
    assert out.getvalue().splitlines() == [
        "client-0: 4/10 step (round=0, loss=0.250)",  # t = 21
        "client-0: 7/10 step (round=0, loss=0.143)",  # t = 42
        "client-0: 10/10 step (round=0, loss=0.100)",  # t = 63; close has nothing new to say
    ]


def test_close_says_where_it_stopped():
    out = io.StringIO()
    bar = LineProgress(total=10, desc="client-0", unit="step", file=out, interval_s=20, clock=Clock())
    bar.update(2)
    bar.close()
    assert out.getvalue() == "client-0: 2/10 step\n"


def test_not_a_terminal_gets_line_progress_and_write_passes_through():
    out = io.StringIO()
    bar = progress_bar(total=3, desc="trunk steps", unit="step", file=out)
    assert isinstance(bar, LineProgress)
    bar.write("server listening")
    bar.update(3)
    bar.close()
    assert out.getvalue() == "server listening\ntrunk steps: 3/3 step\n"
