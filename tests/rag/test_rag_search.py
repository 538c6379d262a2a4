"""Encrypted federated search with real party processes on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from splitfed_testing import DIM, free_port, random_store

from splitfed.rag.corpus import load_news, split_round_robin
from splitfed.rag.querier import PartyAddress, Querier
from splitfed.rag.store import StoreError, VectorStore
from splitfed.transport import ClientSocket, ServerSocket
from splitfed.transport.keys import create_party_keys, install_public_keys, read_public_key_file
from splitfed.wire import Header, MsgType, decode, encode


def party_keys(keys_dir, name, querier_keys):
    """`name`'s own pair in `keys_dir`, allowing the querier's public key; returns its public file."""
    public = create_party_keys(keys_dir, name, sign=False)
    install_public_keys(keys_dir / "allowed", [querier_keys / "querier.key"])
    return public.path


def querier(addrs, tmp_path, **kwargs):
    return Querier(addrs, keys_dir=tmp_path / "querier", name="querier", **kwargs)


@pytest.fixture
def parties(tmp_path):
    rng = np.random.default_rng(0)
    procs, addrs, stores = [], [], []
    create_party_keys(tmp_path / "querier", "querier", sign=False)
    for k, n in enumerate((150, 240, 90)):  # not multiples of any block size
        store = random_store(n, rng)
        store.save(tmp_path / f"p{k}")
        keys = tmp_path / "keys" / f"p{k}"
        public = party_keys(keys, f"p{k}", tmp_path / "querier")
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        cfg = tmp_path / f"p{k}.toml"
        cfg.write_text(
            f'name = "p{k}"\nindex = "{tmp_path / f"p{k}"}"\nendpoint = "{endpoint}"\nkeys_dir = "{keys}"\nk_max = 10\n'
        )
        log = open(tmp_path / f"p{k}.log", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "splitfed.cli.main", "rag", "party", "--config", str(cfg)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        addrs.append(PartyAddress(f"p{k}", endpoint, public))
        stores.append(store)
    yield addrs, stores, rng, tmp_path
    for p in procs:
        p.kill()
        p.wait()


@pytest.mark.process
def test_encrypted_global_top_k_equals_plaintext(parties):
    addrs, stores, rng, tmp_path = parties
    q = querier(addrs, tmp_path, timeout_s=120.0)
    try:
        for _ in range(3):
            v = rng.standard_normal(DIM)
            v /= np.linalg.norm(v)
            res = q.search_vector(v, k=10)
            allv = [(float(s.embeddings[i] @ v), f"p{k}", i) for k, s in enumerate(stores) for i in range(len(s.docs))]
            want = sorted(allv, key=lambda t: -t[0])[:10]
            assert [(h.party, h.row) for h in res.hits] == [(p, i) for _, p, i in want]
            for h, (s, _, _) in zip(res.hits, want, strict=True):
                assert abs(h.score - s) < 1e-3
            assert sorted(res.contributed) == ["p0", "p1", "p2"] and not res.failed
            assert all(h.title == f"title {h.row}" for h in res.hits)
    finally:
        q.close()


@pytest.mark.process
def test_a_silent_party_does_not_block_the_answer(parties, tmp_path):
    addrs, stores, rng, _ = parties
    keys = tmp_path / "keys" / "silent"
    public = party_keys(keys, "silent", tmp_path / "querier")
    silent = ServerSocket(f"tcp://127.0.0.1:{free_port()}", keys_dir=keys, name="silent")  # never answers
    q = querier([*addrs, PartyAddress("silent", silent.endpoint, public)], tmp_path, timeout_s=20.0)
    try:
        t = time.monotonic()
        res = q.search_vector(stores[0].embeddings[3].astype(np.float64), k=3)
        assert time.monotonic() - t < 60
        assert "silent" in res.failed and "no reply" in res.failed["silent"]
        assert sorted(res.contributed) == ["p0", "p1", "p2"]
        assert (res.hits[0].party, res.hits[0].row) == ("p0", 3)
    finally:
        q.close()
        silent.close()


@pytest.mark.process
def test_bad_requests_get_errors_and_the_party_keeps_serving(parties):
    addrs, stores, rng, tmp_path = parties
    a = addrs[0]
    server_key = read_public_key_file(a.public_key).curve.encode()
    sock = ClientSocket(a.endpoint, keys_dir=tmp_path / "querier", name="querier", server_key=server_key)

    def ask(frames):
        sock.send(frames)
        reply = sock.recv(60000)
        assert reply is not None
        return decode(reply, max_bytes=1 << 28)

    def u8(b):
        return torch.frombuffer(bytearray(b), dtype=torch.uint8)

    r = ask(encode(Header(MsgType.RAG_SCORE, meta={"key_id": "nope"}), {"query": u8(b"x" * 10)}))
    assert r.type == MsgType.ERROR and "unknown key id" in r.header.meta["detail"]
    r = ask(encode(Header(MsgType.RAG_CONTEXT), {"context": u8(b"definitely not a context")}))
    assert r.type == MsgType.ERROR and r.header.meta["code"] == "bad_tensor"
    r = ask(encode(Header(MsgType.RAG_FETCH, meta={"rows": list(range(11))})))
    assert r.type == MsgType.ERROR and "1..10 distinct integers" in r.header.meta["detail"]
    r = ask(encode(Header(MsgType.FORWARD)))
    assert r.type == MsgType.ERROR and r.header.meta["code"] == "unknown_type"
    # a garbage ciphertext under a valid context
    q = querier([a], tmp_path, timeout_s=120.0)
    try:
        q.search_vector(stores[0].embeddings[0].astype(np.float64), k=1)  # sends the context
        r = ask(encode(Header(MsgType.RAG_SCORE, meta={"key_id": q.secret.key_id}), {"query": u8(b"\x00" * 1000)}))
        assert r.type == MsgType.ERROR and r.header.meta["code"] == "bad_tensor"
        res = q.search_vector(stores[0].embeddings[7].astype(np.float64), k=1)  # still serving
        assert (res.hits[0].party, res.hits[0].row) == ("p0", 7)
    finally:
        q.close()
        sock.close()


def test_news_corpus_and_store_round_trip(tmp_path):
    docs = load_news()
    assert len(docs) > 3500 and all(d.text and d.title for d in docs[:100])
    parts = split_round_robin(docs[:10], 3)
    assert [len(p) for p in parts] == [4, 3, 3] and sum(parts, []) != docs[:10]
    store = random_store(5, np.random.default_rng(1))
    store.save(tmp_path / "s")
    back = VectorStore.load(tmp_path / "s")
    assert np.array_equal(back.embeddings, store.embeddings) and back.docs == store.docs
    with pytest.raises(StoreError, match="no index here"):
        VectorStore.load(tmp_path / "missing")


@pytest.mark.process
def test_cli_query_lists_contributing_parties(parties, capsys):
    from splitfed.cli.main import main

    addrs, _, _, tmp_path = parties
    cfg = tmp_path / "parties.toml"
    cfg.write_text(
        f'keys_dir = "{tmp_path / "querier"}"\nname = "querier"\ntimeout_s = 120.0\n'
        + "".join(
            f'[[party]]\nname = "{a.name}"\nendpoint = "{a.endpoint}"\npublic_key = "{a.public_key}"\n' for a in addrs
        )
    )
    assert main(["rag", "query", "Who won the election?", "--parties", str(cfg), "-k", "3", "--no-generate"]) == 0
    out = capsys.readouterr().out
    assert "parties that contributed:" in out and all(a.name in out for a in addrs)
    for a in addrs:  # each party's key fingerprint is shown before asking it
        assert f"asking {a.name} at {a.endpoint} (key {read_public_key_file(a.public_key).fingerprint})" in out
    assert out.count("title ") == 3
    bad = tmp_path / "bad.toml"
    bad.write_text("[[party]]\nname = 'x'\n")
    assert main(["rag", "query", "q", "--parties", str(bad)]) == 2
    assert "party[0].endpoint: required key missing" in capsys.readouterr().err


@pytest.mark.process
def test_a_party_answering_garbage_is_left_out(parties, tmp_path):
    import threading

    addrs, stores, _, _ = parties
    keys = tmp_path / "keys" / "liar"
    public = party_keys(keys, "liar", tmp_path / "querier")
    liar = ServerSocket(f"tcp://127.0.0.1:{free_port()}", keys_dir=keys, name="liar")
    stop = threading.Event()

    def serve():  # acknowledges the context, then answers every query with junk "scores"
        while not stop.is_set():
            inc = liar.recv(200)
            if inc is None:
                continue
            msg = decode(inc.frames, max_bytes=1 << 28)
            junk = {"scores.0": torch.frombuffer(bytearray(b"HES\x01" + b"\x07" * 500), dtype=torch.uint8)}
            if msg.type == MsgType.RAG_CONTEXT:
                liar.send(
                    inc.identity,
                    encode(Header(MsgType.RAG_CONTEXT, step=msg.header.step, meta={"key_id": "x", "rows": 5})),
                )
            else:
                liar.send(inc.identity, encode(Header(MsgType.RAG_SCORE, step=msg.header.step, meta={"rows": 5}), junk))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    q = querier([*addrs, PartyAddress("liar", liar.endpoint, public)], tmp_path, timeout_s=60.0)
    try:
        res = q.search_vector(stores[1].embeddings[4].astype(np.float64), k=2)
        assert "liar" in res.failed and "undecryptable" in res.failed["liar"]
        assert "liar" not in res.contributed and (res.hits[0].party, res.hits[0].row) == ("p1", 4)
    finally:
        q.close()
        stop.set()
        t.join()
        liar.close()
