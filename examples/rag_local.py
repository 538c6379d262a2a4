"""Encrypted federated retrieval on loopback: 3 parties hold the bundled news articles, a querier
asks a few questions, and SmolLM2 answers one of them from the retrieved articles.

Each party is its own process (``splitfed rag party``) with its own CURVE key pair,
reachable only over ZeroMQ with CURVE by a querier whose public key is in its allow-list;
only public key files are exchanged.  The querier encrypts every question under CKKS.  The script also measures
recall@10 of the encrypted search against plaintext search over the same stores, and
the cost of the score-noise mitigation.

    python examples/rag_local.py --docs 900 --queries 20
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/rag"), help="working directory")
    p.add_argument("--parties", type=int, default=3)
    p.add_argument("--docs", type=int, default=900, help="articles in all (default 900)")
    p.add_argument("--queries", type=int, default=20, help="title queries for recall@10 (default 20)")
    p.add_argument("--noise-std", type=float, default=0.02, help="score noise for the mitigation run")
    p.add_argument("--no-generate", action="store_true", help="skip the SmolLM2 answer")
    args = p.parse_args(argv)

    import numpy as np
    from tqdm import tqdm

    from splitfed.rag.corpus import load_news, split_round_robin
    from splitfed.rag.embedder import Embedder
    from splitfed.rag.parties import own_keys
    from splitfed.rag.querier import PartyAddress, Querier
    from splitfed.rag.store import VectorStore, build_store
    from splitfed.transport.keys import install_public_keys

    out = args.out
    docs = load_news(limit=args.docs)
    embedder = Embedder()
    stores = []
    with tqdm(total=len(docs), desc="embedding articles", unit="doc", file=sys.stdout, mininterval=1.0) as bar:
        for k, part in enumerate(split_round_robin(docs, args.parties)):
            path = out / f"party-{k}"
            try:
                store = VectorStore.load(path)
                assert len(store.docs) == len(part)
                bar.update(len(part))
            except Exception:
                store = build_store(part, embedder, progress=bar.update)
                store.save(path)
            stores.append(store)

    querier_keys = out / "keys" / "querier"
    querier_key, _ = own_keys(querier_keys, "querier")  # on the querier's machine

    def start_parties(noise: float):
        procs, addrs = [], []
        for k in range(args.parties):
            keys = out / "keys" / f"party-{k}"  # on party k's machine
            party_key, _ = own_keys(keys, f"party-{k}")
            install_public_keys(keys / "allowed", [querier_key.path], overwrite=True)  # the querier's public file
            endpoint = f"tcp://127.0.0.1:{free_port()}"
            cfg = out / f"party-{k}.toml"
            cfg.write_text(
                f'name = "party-{k}"\nindex = "{out / f"party-{k}"}"\nendpoint = "{endpoint}"\n'
                f'keys_dir = "{keys}"\nnoise_std = {noise}\nk_max = 10\n'
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "splitfed.cli.main", "rag", "party", "--config", str(cfg)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                )
            )
            addrs.append(PartyAddress(f"party-{k}", endpoint, party_key.path))  # the party's public file
        return procs, addrs

    # plaintext reference over the same stores
    matrix = np.concatenate([s.embeddings for s in stores])
    owner = [(f"party-{k}", i) for k, s in enumerate(stores) for i in range(len(s.docs))]
    rng = np.random.default_rng(0)
    picks = rng.choice(len(docs), size=min(args.queries, len(docs)), replace=False)
    questions = [docs[int(i)].title for i in picks]
    qvecs = embedder.embed(questions)

    results = {}
    for label, noise in (("no noise", 0.0), (f"noise {args.noise_std}", args.noise_std)):
        procs, addrs = start_parties(noise)
        querier = Querier(addrs, keys_dir=querier_keys, name="querier", embedder=embedder, timeout_s=120.0)
        try:
            recall, lat, first = [], [], None
            for v in qvecs:
                t = time.perf_counter()
                res = querier.search_vector(v, k=10)
                lat.append(time.perf_counter() - t)
                plain = {owner[i] for i in np.argsort(-(matrix @ v))[:10]}
                got = {(h.party, h.row) for h in res.hits}
                recall.append(len(plain & got) / 10)
                first = first or res
            results[label] = (float(np.mean(recall)), float(np.median(lat)), first)
        finally:
            querier.close()
            for pr in procs:
                pr.terminate()
                pr.wait()
        print(
            f"{label}: recall@10 vs plaintext search {results[label][0]:.3f}, "
            f"median query latency {results[label][1]:.2f} s over {len(questions)} queries "
            f"({args.parties} parties, {len(docs)} articles)",
            flush=True,
        )

    res = results["no noise"][2]
    print(f"\nquestion: {questions[0]}\nparties that contributed: {', '.join(res.contributed)}")
    for i, h in enumerate(res.hits[:3], 1):
        print(f"  {i}. [{h.party}] {h.score:.3f}  {h.title}")
    if not args.no_generate:
        from splitfed.rag.generate import Generator, build_prompt

        question = "What happened? Summarise in one sentence."
        answer = Generator().generate(build_prompt(question, res.hits[:2]))
        print(f"\nSmolLM2, grounded in the top 2 articles: {answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
