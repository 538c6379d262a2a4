"""Real server and client processes on 127.0.0.1 with tiny models."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from splitfed.config import dump_toml, parse_config
from splitfed.metrics import read_metrics
from splitfed.transport import generate_keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """A run directory with keys and a config; starts `splitfed server/client` processes."""

    def __init__(self, root: Path, *, clients: int, **overrides):
        self.root = root
        keys = root / "keys"
        generate_keys(keys, clients)
        base = {
            "run": {"dir": str(root / "run"), "seed": 0},
            "model": {"name": "tiny-llama", "cut": [1, 3]},
            "data": {"clients": clients, "partition": "iid", "max_length": 48, "batch_size": 2, "eval_examples": 4},
            "training": {"rounds": 2, "local_steps": 3, "lr": 5e-3},
            "server": {"round_deadline_s": 60.0},
            "transport": {
                "endpoint": f"tcp://127.0.0.1:{free_port()}",
                "keys_dir": str(keys),
                "heartbeat_s": 0.5,
                "timeout_s": 5.0,
            },
        }
        for dotted, value in overrides.items():
            table, key = dotted.split("__")
            base.setdefault(table, {})[key] = value
        self.cfg = parse_config(base)
        self.config_path = root / "run.toml"
        self.config_path.write_text(dump_toml(self.cfg))
        self.procs: list[subprocess.Popen] = []

    def hello_meta(self, client_id: int, n_samples: int) -> dict:
        """What an honest client's HELLO says (config hash, base-model and roster fingerprints)."""
        from splitfed.models.source import resolve_base_model

        if not hasattr(self, "_fingerprint"):
            self._fingerprint = resolve_base_model(self.cfg.model, need_tokenizer=False).fingerprint
        meta = {
            "client_id": client_id,
            "config_hash": self.cfg.hash(),
            "model": self._fingerprint,
            "n_samples": n_samples,
        }
        if self.cfg.aggregation.secure:
            from splitfed.aggregation import run_roster

            meta["roster"] = run_roster(self.cfg).digest
        return meta

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.dir)

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        return self.spawn([sys.executable, "-m", "splitfed.cli.main", *args], log_name)

    def spawn(self, argv: list[str], log_name: str) -> subprocess.Popen:
        """Any command as a process of this run, its output in ``<root>/<log_name>``."""
        log = open(self.root / log_name, "ab")  # noqa: SIM115 (owned by the process)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(p)
        return p

    def server(self, *extra: str) -> subprocess.Popen:
        return self._spawn(["server", "--no-progress", "--config", str(self.config_path), *extra], "server.log")

    def client(self, k: int, *extra: str) -> subprocess.Popen:
        return self._spawn(
            ["client", "--config", str(self.config_path), "--client-id", str(k), "--no-progress", *extra],
            f"client-{k}.log",
        )

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def metrics(self, name: str) -> list[dict]:
        path = self.run_dir / "metrics" / f"{name}.jsonl"
        return read_metrics(path) if path.exists() else []

    def wait(self, p: subprocess.Popen, timeout: float = 120) -> int:
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            raise AssertionError(f"process {p.args} did not finish in {timeout} s") from None

    def wait_for(self, predicate, timeout: float = 60, what: str = "condition") -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def make_run(tmp_path):
    runs = []

    def make(**kwargs) -> Run:
        run = Run(tmp_path / f"r{len(runs)}", clients=kwargs.pop("clients", 1), **kwargs)
        runs.append(run)
        return run

    yield make
    for r in runs:
        r.close()
