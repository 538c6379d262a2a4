"""Many clients against one server: steps/s, step latency, server memory and CPU, stalls.

One real server process (`splitfed server`, CURVE on, loopback) and N real clients
(`splitfed.client.runtime.Client`, each with its own CURVE key pair and DEALER socket,
speaking the real protocol), run as threads in a few worker processes (at most
`--per-worker` clients each, at most `--workers` processes) so that 100 clients fit on a
small machine.  Clients and server are built before the clock starts.  The model is `tiny-llama` (random weights, no
download) cut at (1, 3); every client trains `--rounds` x `--steps` split steps of batch
`--batch-size` x <= `--max-length` tokens, then sends its update and leaves.

Reported per setting (median over `--reps` repetitions):

- steps/s: all clients' steps divided by the wall time from the first step's start to the
  last step's end; "vs base" divides by the first client count's steps/s without batching.
- p50 / p99: the wall time of one split step as the client sees it (bottom forward,
  activations up, trunk, top and loss, gradient up, gradient back, client optimizer step),
  over every step of every client.
- RSS: the server process's peak resident memory (ru_maxrss, its whole life); CPU: the server's
  user + system CPU seconds from the moment the clients start until it exits.
- stalls: clients that failed, reconnected, missed steps, or did not finish within
  `--deadline` seconds; the server's own drops (silent clients, step timeouts, bans) are
  counted as well.  Any stall makes the exit status 1.

Every client count runs without and with cross-client batching (`server.batch_clients`).
Torch runs one thread per process (`--threads`); on a 2-core machine every process shares
the same cores, so this measures the server's protocol and scheduling overhead under load,
not what a GPU gains from bigger batches.

    python benchmarks/many_clients.py --clients 10 50 100 --steps 8 --reps 3

(about 10 minutes on a 2-core machine; `--steps 4 --reps 1` takes about 3.)  The clients
heartbeat every `--heartbeat` seconds while they wait; a smaller value makes the server's
queueing more visible (it used to turn slow HELLOs into spurious reconnects).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MODEL = "tiny-llama"
CUT = [1, 3]
SERVER_DROPS = ("dropped", "step_timeout", "ban")  # server metrics events that mean a client was cut off


@dataclass
class Setting:
    """One run of N clients against one server."""

    clients: int
    batching: bool
    steps_expected: int  # per client
    steps: int = 0  # step records written by all clients
    steps_per_s: float = 0.0
    p50_s: float = math.nan
    p99_s: float = math.nan
    server_rss_mib: float = 0.0  # peak over the server's life
    server_cpu_s: float = 0.0  # from the clients' start to the server's exit
    wall_s: float = 0.0  # from the clients' start until every client was done
    setup_s: float = 0.0  # server and clients built, before the clock starts
    teardown_s: float = 0.0  # every client done until the server exited
    finished: int = 0  # clients whose run() returned
    stalls: dict[int, str] = field(default_factory=dict)  # client id -> why
    server_events: dict[str, int] = field(default_factory=dict)  # SERVER_DROPS -> count
    server_exit: int | None = None
    root: str = ""

    @property
    def stall_count(self) -> int:
        return len(self.stalls) + sum(self.server_events.values()) + (self.server_exit != 0)


# ---------------------------------------------------------------------- worker process
def _worker(cfg, ids: list[int], go, results, deadline_s: float, threads: int) -> None:
    """Build clients `ids`, report ready, wait for `go`, run each in a thread, report outcomes."""
    import torch

    torch.set_num_threads(threads)
    from splitfed.client.runtime import Client

    try:
        clients = {k: Client(cfg, k) for k in ids}
    except BaseException as exc:  # noqa: BLE001 (reported to the parent)
        results.put(("failed", ids, f"{type(exc).__name__}: {exc}"))
        return
    results.put(("ready", ids, None))
    go.wait()
    t0 = time.monotonic()
    outcome: dict[int, dict] = {}

    def run(k: int) -> None:
        try:
            clients[k].run()
            outcome[k] = {"ok": True, "error": None, "elapsed_s": time.monotonic() - t0}
        except BaseException as exc:  # noqa: BLE001 (a failed client is a result)
            outcome[k] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "elapsed_s": time.monotonic() - t0}

    workers = [threading.Thread(target=run, args=(k,), daemon=True, name=f"client-{k}") for k in ids]
    for w in workers:
        w.start()
    for w in workers:
        w.join(max(0.0, deadline_s - (time.monotonic() - t0)))
    for k in ids:
        outcome.setdefault(k, {"ok": False, "error": f"not finished after {deadline_s:g} s", "elapsed_s": None})
    results.put(("done", ids, dict(outcome)))
    results.close()
    results.join_thread()
    os._exit(0)  # clients still running past the deadline are abandoned with the process


def _messages(results, procs, n: int, until: float):
    """Up to `n` worker messages, until the deadline or until no worker is left to send one."""
    import queue

    got = 0
    while got < n and time.monotonic() < until:
        try:
            msg = results.get(timeout=1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                try:  # a last message may still be in the pipe
                    msg = results.get(timeout=1.0)
                except queue.Empty:
                    return
            else:
                continue
        got += 1
        yield msg


# ---------------------------------------------------------------------- server process
def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _wait4(proc, timeout: float):
    """Reap the server and return its rusage (peak RSS, CPU); None if it is still running."""
    end = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage
        if time.monotonic() > end:
            return None
        time.sleep(0.05)


# ---------------------------------------------------------------------- one setting
def run_setting(
    n_clients: int,
    *,
    steps: int = 4,
    rounds: int = 1,
    batching: bool = False,
    workers: int = 4,
    per_worker: int = 25,
    max_length: int = 32,
    batch_size: int = 2,
    heartbeat_s: float = 1.0,
    timeout_s: float = 30.0,
    deadline_s: float = 300.0,
    threads: int = 1,
    root: Path | None = None,
) -> Setting:
    """Run `n_clients` clients against one server process.

    The clients are threads in ceil(n_clients / `per_worker`) worker processes, at most `workers`.
    """
    from _netrun import make_config, scratch, start_server

    from splitfed.metrics import read_metrics
    from splitfed.models import prepare

    prepare(MODEL)  # built here once, not raced for by the server and the workers
    t_setup = time.monotonic()
    root = Path(root) if root is not None else scratch()
    cfg = make_config(
        root,
        model={"name": MODEL, "cut": CUT},
        data={
            "clients": n_clients,
            "partition": "iid",
            "max_length": max_length,
            "batch_size": batch_size,
            "eval_examples": 0,
        },
        training={"rounds": rounds, "local_steps": steps, "lr": 1e-3},
        server={"batch_clients": batching, "round_deadline_s": deadline_s},
        transport={"heartbeat_s": heartbeat_s, "timeout_s": timeout_s},
    )
    res = Setting(n_clients, batching, rounds * steps, root=str(root))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    ctx = mp.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    n_procs = max(1, min(workers, math.ceil(n_clients / per_worker)))
    groups = [list(range(n_clients))[i::n_procs] for i in range(n_procs)]
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: str(threads) for k in saved})  # spawned workers read it at start
    try:
        procs = [
            ctx.Process(target=_worker, args=(cfg, ids, go, results, deadline_s, threads), daemon=True)
            for ids in groups
        ]
        for p in procs:
            p.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    server = None
    try:
        server = start_server(cfg, root, env=env)
        ready = list(_messages(results, procs, len(groups), time.monotonic() + 300))  # clients built first
        for kind, ids, detail in ready:
            if kind != "ready":
                raise RuntimeError(f"worker for clients {ids} failed to build them: {detail}")
        if len(ready) != len(groups):
            raise RuntimeError(f"{len(groups) - len(ready)} worker process(es) died or hung while building clients")
        cpu0 = _proc_cpu_s(server.pid)
        t0 = time.monotonic()
        res.setup_s = t0 - t_setup
        go.set()
        outcome: dict[int, dict] = {}  # a worker that died reports nothing: its clients count as stalled
        for _, _, detail in _messages(results, procs, len(groups), time.monotonic() + deadline_s + 120):
            outcome.update(detail)
        res.wall_s = time.monotonic() - t0
        for p in procs:
            p.join(timeout=30)
        usage = _wait4(server, timeout=60 if all(o["ok"] for o in outcome.values()) else 5)
        if usage is None:
            server.kill()
            usage = _wait4(server, timeout=30)
        res.teardown_s = time.monotonic() - t0 - res.wall_s
        res.server_exit = server.returncode
        res.server_cpu_s = usage.ru_utime + usage.ru_stime - cpu0
        res.server_rss_mib = usage.ru_maxrss / 1024  # KiB on Linux
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        if server is not None and server.returncode is None:
            server.kill()
            _wait4(server, timeout=30)

    metrics = Path(cfg.run.dir) / "metrics"
    latencies, first, last = [], math.inf, -math.inf
    for k in range(n_clients):
        path = metrics / f"client-{k}.jsonl"
        records = read_metrics(path) if path.exists() else []
        mine = [m for m in records if m["event"] == "step"]
        reconnects = sum(m["event"] == "reconnect" for m in records)
        for m in mine:
            latencies.append(m["wall_s"])
            first, last = min(first, m["time"] - m["wall_s"]), max(last, m["time"])
        res.steps += len(mine)
        o = outcome.get(k, {"ok": False, "error": "no report from its worker"})
        res.finished += o["ok"]
        why = [o["error"]] if not o["ok"] else []
        if reconnects:
            why.append(f"{reconnects} reconnect(s)")
        if len(mine) != res.steps_expected:
            why.append(f"{len(mine)} of {res.steps_expected} steps")
        if why:
            res.stalls[k] = "; ".join(why)
    server_path = metrics / "server.jsonl"
    for m in read_metrics(server_path) if server_path.exists() else []:
        if m["event"] in SERVER_DROPS:
            res.server_events[m["event"]] = res.server_events.get(m["event"], 0) + 1
    if latencies:
        res.steps_per_s = len(latencies) / max(last - first, 1e-9)
        res.p50_s = _quantile(latencies, 0.50)
        res.p99_s = _quantile(latencies, 0.99)
    return res


def _quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), without numpy."""
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def describe(r: Setting) -> str:
    stalls = f"stalls {r.stall_count}"
    if r.stall_count:
        shown = "; ".join(f"client-{k}: {why}" for k, why in sorted(r.stalls.items())[:3])
        extra = f", server {r.server_events}" if r.server_events else ""
        extra += f", server exit {r.server_exit}" if r.server_exit != 0 else ""
        stalls += f" ({shown}{extra}; see {r.root})"
    return (
        f"{r.clients} clients, batching {'on' if r.batching else 'off'}: {r.steps_per_s:.1f} steps/s, "
        f"p50 {r.p50_s * 1000:.0f} ms, p99 {r.p99_s * 1000:.0f} ms, server RSS {r.server_rss_mib:.0f} MiB, "
        f"CPU {r.server_cpu_s:.1f} s, {r.steps}/{r.clients * r.steps_expected} steps in {r.wall_s:.1f} s "
        f"(setup {r.setup_s:.0f} s, teardown {r.teardown_s:.0f} s), {stalls}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100], help="client counts (first = base)")
    p.add_argument("--steps", type=int, default=4, help="local steps per client per round")
    p.add_argument("--rounds", type=int, default=1, help="federated rounds")
    p.add_argument("--reps", type=int, default=1, help="repetitions per setting (medians are reported)")
    p.add_argument("--batching", choices=["off", "on", "both"], default="both", help="server.batch_clients")
    p.add_argument("--workers", type=int, default=4, help="most client processes (clients are threads in them)")
    p.add_argument("--per-worker", type=int, default=25, help="clients per client process, until --workers are used")
    p.add_argument("--max-length", type=int, default=32, help="tokens per example")
    p.add_argument("--batch-size", type=int, default=2, help="examples per client step")
    p.add_argument("--heartbeat", type=float, default=1.0, help="transport.heartbeat_s")
    p.add_argument("--timeout", type=float, default=30.0, help="transport.timeout_s: silence that counts as lost")
    p.add_argument("--deadline", type=float, default=300.0, help="seconds a setting's clients have to finish")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = p.parse_args(argv)
    if min(args.steps, args.rounds, args.reps, args.workers, args.per_worker, *args.clients) < 1:
        p.error("--clients, --steps, --rounds, --reps, --workers and --per-worker must be >= 1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.batching]
    results: dict[tuple[int, bool], list[Setting]] = {}
    for n in args.clients:
        for batching in modes:
            for rep in range(args.reps):
                r = run_setting(
                    n,
                    steps=args.steps,
                    rounds=args.rounds,
                    batching=batching,
                    workers=args.workers,
                    per_worker=args.per_worker,
                    max_length=args.max_length,
                    batch_size=args.batch_size,
                    heartbeat_s=args.heartbeat,
                    timeout_s=args.timeout,
                    deadline_s=args.deadline,
                    threads=args.threads,
                )
                results.setdefault((n, batching), []).append(r)
                print(f"[rep {rep + 1}/{args.reps}] {describe(r)}", flush=True)

    def med(rs: list[Setting], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in rs)

    base_key = (args.clients[0], modes[0])
    base = med(results[base_key], "steps_per_s")
    print(
        f"\n{MODEL}, cut {tuple(CUT)}, batch {args.batch_size} x <={args.max_length} tokens, "
        f"{args.rounds} round(s) x {args.steps} steps per client, {args.reps} rep(s), "
        f"<= {args.per_worker} clients per process (<= {args.workers} processes), "
        f"heartbeat {args.heartbeat:g} s, CURVE on, torch threads {args.threads}, {os.cpu_count()} CPUs; "
        "medians over reps"
    )
    print(
        f"{'clients':>8}{'batching':>10}{'steps/s':>10}{'vs base':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'RSS MiB':>9}{'CPU s':>8}{'stalls':>8}"
    )
    stalled = 0
    for (n, batching), rs in results.items():
        sps = med(rs, "steps_per_s")
        stalls = sum(r.stall_count for r in rs)
        stalled += stalls
        print(
            f"{n:>8}{'on' if batching else 'off':>10}{sps:>10.1f}{sps / base:>9.2f}{med(rs, 'p50_s') * 1000:>9.0f}"
            f"{med(rs, 'p99_s') * 1000:>9.0f}{med(rs, 'server_rss_mib'):>9.0f}{med(rs, 'server_cpu_s'):>8.1f}"
            f"{stalls:>8}"
        )
    print(f"base: {base_key[0]} clients, batching {'on' if base_key[1] else 'off'}")
    return 1 if stalled else 0


if __name__ == "__main__":
    sys.exit(main())
