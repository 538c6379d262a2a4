"""Shared helpers for the networked benchmarks: start a server process, run a client here."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from splitfed.config import RunConfig, dump_toml, parse_config
from splitfed.metrics import read_metrics
from splitfed.transport import generate_keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(root: Path, **tables) -> RunConfig:
    keys = root / "keys"
    clients = tables.get("data", {}).get("clients", 1)
    generate_keys(keys, clients, overwrite=True)
    base = {
        "run": {"dir": str(root / "run")},
        "transport": {"endpoint": f"tcp://127.0.0.1:{free_port()}", "keys_dir": str(keys), "timeout_s": 120.0},
    }
    for table, values in tables.items():
        base.setdefault(table, {}).update(values)
    return parse_config(base)


def start_server(cfg: RunConfig, root: Path, *, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`splitfed server` as a process (environment `env`, default ours); returns once it serves."""
    path = root / "run.toml"
    path.write_text(dump_toml(cfg))
    log = open(root / "server.log", "wb")  # noqa: SIM115 (owned by the process)
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitfed.cli.main", "server", "--no-progress", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    metrics = Path(cfg.run.dir) / "metrics" / "server.jsonl"
    t0 = time.monotonic()
    while not (metrics.exists() and any(m["event"] == "start" for m in read_metrics(metrics))):
        if proc.poll() is not None or time.monotonic() - t0 > 300:
            raise RuntimeError(f"server did not start; see {root / 'server.log'}")
        time.sleep(0.2)
    return proc


def client_step_metrics(cfg: RunConfig, client_id: int = 0) -> list[dict]:
    return [
        m for m in read_metrics(Path(cfg.run.dir) / "metrics" / f"client-{client_id}.jsonl") if m["event"] == "step"
    ]


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="splitfed-bench-"))
