"""Start a SplitFed server and N clients as separate processes on loopback, and watch them.

Every process talks only over ZeroMQ with CURVE (keys are generated into the run directory
if missing).  Their output is streamed with a prefix; one progress bar counts the clients'
steps.  At the end it prints per-round loss, held-out perplexity of the public base model and
of the fine-tuned one (with a warning for a client whose fine-tuned model does not beat the
base), bytes per client and where the merged adapter is.  Exits non-zero if any process fails.

    python examples/launch_local.py --config examples/run.toml
    python examples/launch_local.py --set model.name=tiny-llama --set training.rounds=2

Each client may read its own files: ``{k}`` in ``data.train``, ``data.eval`` or
``model.path`` is replaced by the client's number, and every process gets its own config
file (the server's without the clients' data keys):

    python examples/launch_local.py --set 'data.train=data/client-{k}.jsonl' --set data.eval=data/eval.jsonl
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
    from splitfed.models.pretrained import is_prepared
    from splitfed.models.source import resolve_base_model

    if not cfg.model.path and not is_prepared(cfg.model.name, cache_dir=cfg.model.cache_dir or None):
        print(f"preparing {cfg.model.name} (converted once into the cache) ...", flush=True)
    # once here, not raced for by every process
    base = resolve_base_model(per_client(cfg, 0).model, need_tokenizer=True)
    config_path = run_dir / "run.toml"
    server_cfg = per_client(cfg, 0).with_overrides(**{"data.train": "", "data.eval": "", "data.eval_fraction": 0.0})
    config_path.write_text(dump_toml(server_cfg, comments=True))
    client_configs = {}
    for k in range(cfg.data.clients):
        client_configs[k] = run_dir / f"client-{k}.toml"
        client_configs[k].write_text(dump_toml(per_client(cfg, k), comments=True))
    print(
        f"run directory {run_dir}; server on tcp://127.0.0.1:{port} with CURVE; "
        f"{cfg.data.clients} clients; base model {base} cut {list(cfg.model.cut)}",
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

    def spawn(name: str, extra: list[str], config: Path) -> None:
        procs[name] = subprocess.Popen(
            [*cli, *extra, "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=stream, args=(name, procs[name]), daemon=True).start()

    spawn("server", ["server", "--no-progress"], config_path)
    for k in range(cfg.data.clients):
        spawn(f"client-{k}", ["client", "--client-id", str(k), "--no-progress"], client_configs[k])

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


def per_client(cfg, k: int):
    """Client `k`'s config: ``{k}`` in its local paths replaced by its number."""
    keys = ("data.train", "data.eval", "model.path")
    local = {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in keys}
    return cfg.with_overrides(**{key: value.replace("{k}", str(k)) for key, value in local.items()})


def report(run_dir: Path, cfg) -> int:
    from splitfed.metrics import read_metrics

    server = read_metrics(run_dir / "metrics" / "server.jsonl")
    print("\nround  clients  mean train loss")
    for m in (m for m in server if m["event"] == "round"):
        losses = [v for v in m["losses"].values() if v is not None]
        # with privacy on the clients keep their loss (a statistic of their data) to themselves
        mean = f"{sum(losses) / len(losses):15.3f}" if losses else f"{'withheld':>15}"
        print(f"{m['round']:>5}  {len(m['participants']):>7}  {mean}")
    from splitfed.utility import utility_from_summary

    # base ppl: the public base model on the client's held-out data, evaluated the same way
    print("\nclient     base ppl  fine-tuned ppl  beats base    sent MB  received MB  adapter")
    warnings = []
    for k in range(cfg.data.clients):
        cm = read_metrics(run_dir / "metrics" / f"client-{k}.jsonl")
        done = next((m for m in cm if m["event"] == "done"), {})
        before, after = done.get("ppl_before") or float("nan"), done.get("ppl_after") or float("nan")
        utility = utility_from_summary(done)
        beats = "-" if utility is None else ("yes" if utility.beats_base else "NO")
        if utility is not None and utility.warning():
            warnings.append(f"client-{k}: {utility.warning()}")
        print(
            f"client-{k}  {before:8.2f}  {after:14.2f}  {beats:>10}  {done.get('bytes_out', 0) / 1e6:9.1f}"
            f"  {done.get('bytes_in', 0) / 1e6:11.1f}  {done.get('adapter', '-')}"
        )
    for line in warnings:
        print(line)
    print(f"\nserver's merged PEFT adapter: {run_dir / 'adapter'}")
    print("load one with PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(<its base model>), <adapter>)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
