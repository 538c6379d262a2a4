"""Runs every command of docs/three-hospitals.md, each machine in its own directory on loopback.

Each fenced ``bash`` block starts with ``# MACHINE``.  Blocks run in order in ``<tmp>/MACHINE``
with ``$EXCHANGE`` (a folder only public files pass through), ``$SERVER_HOST`` and
``$HOSPITAL_K_HOST`` (loopback) set, after the ``# every machine`` block.  A block marked
``(runs until training ends)`` starts in the background and is waited for before the next
foreground block; ``(runs until stopped)`` runs in the background until the end.  The only
change to the page's text is the port numbers (free ones instead of 5555/6000/6001).  The
``# install`` block is what `.ci/run` runs (`make venv`) before this test.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "three-hospitals.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
HEADER = re.compile(r"# ([a-z0-9 -]+?)(?: \(runs (until training ends|until stopped)\))?")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def blocks() -> list[tuple[str, str, str]]:
    """(machine, mode, script) of every bash block; mode is '', 'until training ends' or 'until stopped'."""
    out = []
    for body in BLOCK.findall(GUIDE.read_text()):
        first, _, rest = body.partition("\n")
        m = HEADER.fullmatch(first.strip())
        assert m, f"a block of {GUIDE.name} must start with '# MACHINE', got {first!r}"
        out.append((m.group(1), m.group(2) or "", rest))
    return out


def test_the_guide_names_a_machine_for_every_block():
    machines = {m for m, _, _ in blocks()}
    assert machines == {"install", "every machine", "server", "hospital-0", "hospital-1", "researcher"}
    install = [s for m, _, s in blocks() if m == "install"]
    assert len(install) == 1 and "make venv" in install[0]


def _exported(script: str, env: dict[str, str]) -> dict[str, str]:
    """The environment after running `script` (its exports)."""
    out = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{script}\nenv -0"], env=env, capture_output=True, timeout=600
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    pairs = (item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if env.get(k) != v}


class _Machines:
    """The guide's machines as directories, its background commands as processes."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root, self.env = root, env
        self.logs = root / "logs"
        self.logs.mkdir()
        self.training: list[tuple[str, subprocess.Popen, Path]] = []
        self.serving: list[tuple[str, subprocess.Popen, Path]] = []

    def run(self, i: int, machine: str, mode: str, script: str) -> None:
        cwd = self.root / machine
        cwd.mkdir(exist_ok=True)
        log = self.logs / f"{i:02d}-{machine}.log"
        argv = ["bash", "-c", f"set -euo pipefail\n{script}"]
        if mode:
            with open(log, "wb") as f:
                p = subprocess.Popen(argv, cwd=cwd, env=self.env, stdout=f, stderr=subprocess.STDOUT)
            (self.training if mode == "until training ends" else self.serving).append((machine, p, log))
            return
        self.wait_training()
        t0 = time.monotonic()
        out = subprocess.run(argv, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=600)
        log.write_text(out.stdout + out.stderr)
        print(f"block {i} on {machine}: {time.monotonic() - t0:.1f} s")
        assert out.returncode == 0, f"block {i} on {machine} failed:\n{script}\n---\n{out.stdout}\n{out.stderr}"

    def wait_training(self) -> None:
        for name, p, log in self.training:
            try:
                rc = p.wait(timeout=600)
            except subprocess.TimeoutExpired:
                p.kill()
                raise AssertionError(f"{name} did not finish:\n{log.read_text()}") from None
            print(f"{name} finished training")
            assert rc == 0, f"{name} exited {rc}:\n{log.read_text()}\n" + self.text("*-server.log")
        self.training.clear()

    def stop(self) -> None:
        for _, p, _ in self.training + self.serving:
            if p.poll() is None:
                p.kill()
                p.wait()

    def text(self, pattern: str) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.logs.glob(pattern)))


@pytest.mark.slow
def test_every_command_of_the_guide_runs(tmp_path):
    ports = {p: str(_free_port()) for p in ("5555", "6000", "6001")}
    exchange = tmp_path / "exchange"
    exchange.mkdir()
    env = {
        **os.environ,
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
        "EXCHANGE": str(exchange),
        "SERVER_HOST": "127.0.0.1",
        "HOSPITAL_0_HOST": "127.0.0.1",
        "HOSPITAL_1_HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }
    machines = _Machines(tmp_path, env)
    try:
        for i, (machine, mode, script) in enumerate(blocks()):
            for old, new in ports.items():
                script = script.replace(f":{old}", f":{new}")
            if machine == "install":
                continue
            if machine == "every machine":  # run once: the machines share this box's model cache
                env.update(_exported(script, env))
                continue
            machines.run(i, machine, mode, script)
        machines.wait_training()
    finally:
        machines.stop()

    # only public files ever passed through the exchange
    assert sorted(p.name for p in exchange.iterdir()) == sorted(
        ["server.key", "client-0.key", "client-1.key", "roster.toml", "run.toml"]
        + ["hospital-0.key", "hospital-1.key", "researcher.key"]
    )
    assert not any("secret-key" in p.read_text() for p in exchange.iterdir())
    # both hospitals trained and left with a PEFT adapter of the whole model
    for k in range(2):
        log = machines.text(f"*-hospital-{k}.log")
        assert "held-out perplexity" in log and "fine-tuned PEFT adapter (whole model)" in log, log
    # the merged model generated, and the split (served by the server) gave the same answer
    logs = {p.name: p.read_text(errors="replace") for p in machines.logs.glob("*-hospital-0.log")}
    merged = [t for t in logs.values() if t.startswith("Metformin for type 2 diabetes. Review:")]
    split = [t for t in logs.values() if "trunk on the server" in t]
    assert len(merged) == 1 and len(split) == 1, logs
    answer = split[0][: split[0].index("client-0: ")].removesuffix("\n")  # the log is stdout, then stderr
    assert answer.strip() and merged[0].startswith("Metformin for type 2 diabetes. Review:" + answer), (merged, split)
    # the query found the right hospital's leaflet
    answer = machines.text("*-researcher.log")
    assert "[hospital-0]" in answer and "Metformin" in answer, answer
