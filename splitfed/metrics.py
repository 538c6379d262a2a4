"""JSON-lines metrics: one object per line, flushed as written; optionally mirrored to TensorBoard."""

from __future__ import annotations

import collections
import json
import math
import os
import time
from pathlib import Path

from splitfed.checks import is_number
from splitfed.errors import MissingPackageError

TENSORBOARD_HINT = "run.tensorboard = true needs TensorBoard: pip install 'splitfed[tracking]' (or tensorboard)"


class MetricsWriter:
    """Appends one JSON object per event to `path`.

    With `tensorboard` (a directory) every numeric field of an event is also logged as the
    scalar ``<event>/<field>`` (one level of nested numbers as ``<event>/<field>/<key>``),
    against the event's ``round`` where it has one, else a per-event counter.
    """

    def __init__(self, path: str | os.PathLike, *, tensorboard: str | os.PathLike | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = _summary_writer(Path(tensorboard)) if tensorboard is not None else None
        self._counts: collections.Counter[str] = collections.Counter()
        self._f = open(self.path, "a", buffering=1)  # noqa: SIM115 (kept open for the run)

    def write(self, event: str, **fields) -> dict:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        self._f.write(json.dumps(record, default=float) + "\n")
        if self._tb is not None:
            self._scalars(event, fields)
        return record

    def _scalars(self, event: str, fields: dict) -> None:
        step = fields.get("round")
        if not is_number(step) or event == "step":
            step = self._counts[event]
        self._counts[event] += 1
        for key, value in fields.items():
            items = value.items() if isinstance(value, dict) else [("", value)]
            for sub, v in items:
                if is_number(v) and math.isfinite(v):
                    self._tb.add_scalar(f"{event}/{key}/{sub}" if sub else f"{event}/{key}", v, int(step))
        self._tb.flush()

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise MissingPackageError(TENSORBOARD_HINT) from exc
    return SummaryWriter(log_dir=str(log_dir))


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The complete records of a metrics file; a last line without its newline (being written,
    or torn by a crash) is not a record yet."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip() and line.endswith("\n")]
