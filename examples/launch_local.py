"""Start a SplitFed server and N clients as separate processes on loopback, and watch them.

Every process talks only over ZeroMQ with CURVE (keys are generated into the run directory
if missing).  Their output is streamed with a prefix; one progress bar counts the clients'
steps.  At the end it prints per-round loss, held-out perplexity before/after, bytes per
client and where the merged adapter is.  Exits non-zero if any process fails.

    python examples/launch_local.py --config examples/run.toml
    python examples/launch_local.py --set model.name=tiny-llama --set training.rounds=2
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path(__file__).with_name("run.toml"), help="run configuration")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--port", type=int, default=0, help="server port on 127.0.0.1 (default: a free one)")
    p.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds (default 1800)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    from splitfed.config import dump_toml, load_config, parse_overrides
    from splitfed.metrics import read_metrics
    from splitfed.transport import generate_keys

    cfg = load_config(args.config)
    if args.set:
        cfg = cfg.with_overrides(**parse_overrides(args.set))
    run_dir = Path(cfg.run.dir)
    keys = run_dir / "keys"
    port = args.port or free_port()
    cfg = cfg.with_overrides(**{"transport.keys_dir": str(keys), "transport.endpoint": f"tcp://127.0.0.1:{port}"})
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (keys / "server.key_secret").exists() or len(list((keys / "allowed").glob("*.key"))) != cfg.data.clients:
        generate_keys(keys, cfg.data.clients, overwrite=True)
    for old in (run_dir / "metrics").glob("*.jsonl"):
        old.unlink()
    from splitfed.models import prepare

    print(f"preparing {cfg.model.name} (converted once into the cache) ...", flush=True)
    prepare(cfg.model.name, cache_dir=cfg.model.cache_dir or None)  # once, not in every process
    config_path = run_dir / "run.toml"
    config_path.write_text(dump_toml(cfg, comments=True))
    print(
        f"run directory {run_dir}; server on tcp://127.0.0.1:{port} with CURVE; "
        f"{cfg.data.clients} clients; model {cfg.model.name} cut {list(cfg.model.cut)}",
        flush=True,
    )

    total = cfg.data.clients * cfg.training.rounds * cfg.training.local_steps
    bar = tqdm(total=total, desc="client steps", unit="step", file=sys.stdout, mininterval=1.0)
    lock = threading.Lock()

    def stream(name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with lock:
                tqdm.write(f"[{name}] {line.rstrip()}", file=sys.stdout)

    cli = [sys.executable, "-m", "splitfed.cli.main"]
    procs: dict[str, subprocess.Popen] = {}

    def spawn(name: str, extra: list[str]) -> None:
        procs[name] = subprocess.Popen(
            [*cli, *extra, "--config", str(config_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=stream, args=(name, procs[name]), daemon=True).start()

    spawn("server", ["server", "--no-progress"])
    for k in range(cfg.data.clients):
        spawn(f"client-{k}", ["client", "--client-id", str(k), "--no-progress"])

    t0, failed = time.monotonic(), []
    try:
        while any(p.poll() is None for p in procs.values()):
            steps = sum(
                sum(1 for m in read_metrics(f) if m["event"] == "step")
                for f in (run_dir / "metrics").glob("client-*.jsonl")
            )
            with lock:
                bar.update(max(0, min(steps, total) - bar.n))
            failed = [n for n, p in procs.items() if p.poll() not in (None, 0)]
            if failed or time.monotonic() - t0 > args.timeout:
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        failed = ["interrupted"]
    finally:
        for p in procs.values():
            if p.poll() is None and (failed or time.monotonic() - t0 > args.timeout):
                p.terminate()
        for p in procs.values():
            p.wait()
        bar.close()
    failed = failed or [n for n, p in procs.items() if p.returncode != 0]
    if failed:
        print(f"FAILED: {', '.join(failed)} (logs above; metrics in {run_dir / 'metrics'})", file=sys.stderr)
        return 1
    return report(run_dir, cfg)


def report(run_dir: Path, cfg) -> int:
    from splitfed.metrics import read_metrics

    server = read_metrics(run_dir / "metrics" / "server.jsonl")
    print("\nround  clients  mean train loss")
    for m in (m for m in server if m["event"] == "round"):
        losses = [v for v in m["losses"].values() if v is not None]
        print(f"{m['round']:>5}  {len(m['participants']):>7}  {sum(losses) / len(losses):15.3f}")
    print("\nclient     ppl before  ppl after    sent MB  received MB")
    for k in range(cfg.data.clients):
        cm = read_metrics(run_dir / "metrics" / f"client-{k}.jsonl")
        done = next((m for m in cm if m["event"] == "done"), {})
        before, after = done.get("ppl_before", float("nan")), done.get("ppl_after", float("nan"))
        print(
            f"client-{k}  {before:10.2f}  {after:9.2f}  {done.get('bytes_out', 0) / 1e6:9.1f}"
            f"  {done.get('bytes_in', 0) / 1e6:11.1f}"
        )
    print(f"\nmerged PEFT adapter: {run_dir / 'adapter'}  (PeftModel.from_pretrained(base_model, that_dir))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
