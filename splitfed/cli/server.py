"""`splitfed server`: the trunk over ZeroMQ, in one process or sharded over torchrun ranks."""

from __future__ import annotations

import os
import sys


def _torchrun_server(args) -> int:
    """`splitfed server --nproc N`: the same command under torchrun, N ranks on this host."""
    import subprocess

    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    argv += ["-m", "splitfed.cli.main", "server"]
    if args.config is not None:
        argv += ["--config", str(args.config)]
    for item in args.set or []:
        argv += ["--set", item]
    argv += [flag for flag, on in (("--resume", args.resume), ("--insecure", args.insecure),
                                   ("--no-progress", args.no_progress)) if on]  # fmt: skip
    return subprocess.call(argv)


def run_server(args, load_config, setup_logging) -> int:
    """`splitfed server`: one process, or N torchrun ranks with the trunk sharded (rank 0 serves)."""
    from splitfed.errors import UsageError
    from splitfed.server.distributed import launched

    if args.nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and not launched():
        return _torchrun_server(args)
    cfg = load_config(args)
    if not launched():
        setup_logging(True)
        return _serve(cfg, args, None)

    import torch.distributed as dist

    from splitfed.models.source import resolve_base_model
    from splitfed.server.distributed import run_ranks
    from splitfed.server.engine import load_engine
    from splitfed.transport import client_name

    rank = int(os.environ.get("RANK", "0"))
    setup_logging(rank == 0)

    def make(group):
        if group.rank != 0:
            dist.barrier()  # rank 0 writes the model cache first
        model_dir = resolve_base_model(cfg.model, need_tokenizer=False).path
        if group.rank == 0:
            dist.barrier()
        clients = [client_name(k) for k in range(cfg.data.clients)]
        return load_engine(cfg, model_dir, clients=clients, group=group)

    return run_ranks(make, lambda engine: _serve(cfg, args, engine), cfg.server.device)


def _serve(cfg, args, engine) -> int:
    from splitfed.cli.progress import progress_bar
    from splitfed.server.runtime import Server

    total = cfg.training.rounds * cfg.training.local_steps * cfg.data.clients
    bar = progress_bar(total=total, desc="trunk steps", unit="step", disable=args.no_progress)

    def on_step(rnd: int, n: int) -> None:
        bar.update(n)
        bar.set_postfix(round=rnd)

    server = Server(cfg, resume=args.resume, insecure=args.insecure, on_step=on_step, engine=engine)
    ranks = f", {os.environ['WORLD_SIZE']} ranks (FSDP2)" if engine is not None else ""
    bar.write(
        f"server listening on {server.endpoint} ({'INSECURE plaintext' if args.insecure else 'CURVE'}), "
        f"mode {cfg.server.mode}, rounds {server.round}..{cfg.training.rounds - 1}, "
        f"trunk on {server.engine.device} in {cfg.server.dtype}{ranks}; base model {server.base_model}",
        file=sys.stdout,
    )
    try:
        rc = server.serve()
    finally:
        bar.close()
    if server.adapter_path.is_file():
        print(f"server done; merged adapter: {server.adapter_path.parent}", flush=True)
    else:
        print("server stopped before the last round; no adapter exported (resume with --resume)", flush=True)
    return rc
