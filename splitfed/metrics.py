"""JSON-lines metrics: one object per line, flushed as written."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class MetricsWriter:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", buffering=1)  # noqa: SIM115 (kept open for the run)

    def write(self, event: str, **fields) -> dict:
        record = {"time": round(time.time(), 3), "event": event, **fields}
        self._f.write(json.dumps(record, default=float) + "\n")
        return record

    def close(self) -> None:
        self._f.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
