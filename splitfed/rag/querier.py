"""The querier: encrypts the query embedding, asks every party concurrently, takes the global top-k.

The CKKS secret key never leaves this process.  Parties get the public context once per
session, score the encrypted query against their own stores, and return encrypted scores;
the querier decrypts, merges, and fetches the texts of exactly the k winning documents.
A party that noises its scores announces its public score grid with its context reply; the
querier sends it the query quantised on that grid and rounds its scores to the integers the
noise was added to (`crypto.he.grid`).
A party that times out or answers garbage is left out with a warning, and the result says
which parties contributed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from splitfed.errors import UsageError
from splitfed.rag.config import PartyAddress, QuerierConfig
from splitfed.transport import ClientSocket, NotSent
from splitfed.wire import Header, Message, MsgType, WireError, bytes_tensor, decode, encode, frames_nbytes
from splitfed.wire.meta import RagContext, RagDoc, RagFetch, RagScore

log = logging.getLogger("splitfed.rag.querier")


@dataclass(frozen=True)
class Hit:
    party: str
    row: int
    score: float
    doc_id: str = ""
    title: str = ""
    text: str = ""


@dataclass
class SearchResult:
    hits: list[Hit]
    contributed: list[str]
    failed: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    bytes_out: int = 0
    bytes_in: int = 0


def party_keys(parties: list[PartyAddress], keys_dir, name: str) -> dict[str, tuple[str, str]]:
    """party name -> (z85 CURVE key, fingerprint), read from each party's public key file; checks
    that the querier's own pair is there.  Errors name the party and the file."""
    from splitfed.transport.keys import KeyFileError, read_public_key_file

    if not keys_dir:
        raise KeyFileError("the querier has no keys_dir: CURVE needs its own key pair (or --insecure)")
    secret = Path(keys_dir) / f"{name}.key_secret"
    if not secret.is_file():
        raise KeyFileError(f"no querier key pair at {secret}; `splitfed rag add-party` creates it")
    out = {}
    for p in parties:
        if not p.public_key:
            raise KeyFileError(f"party {p.name}: no public_key file; CURVE needs the party's NAME.key (or --insecure)")
        try:
            key = read_public_key_file(p.public_key)
        except KeyFileError as exc:
            raise KeyFileError(f"party {p.name}: {exc}") from None
        out[p.name] = (key.curve, key.fingerprint)
    return out


class Querier:
    def __init__(
        self,
        parties: list[PartyAddress],
        *,
        embedder=None,
        keys_dir=None,
        name: str = "querier",
        timeout_s: float = 30.0,
        insecure: bool = False,
        secret=None,
        max_message_mb: float = 256.0,
    ):
        """`keys_dir` / `name`: the querier's own CURVE pair (``NAME.key_secret``); each party is
        authenticated by its `PartyAddress.public_key` file (see `fingerprints`)."""
        from crypto.he import SecretContext

        if not parties:
            raise UsageError("need at least one party")
        keys = {} if insecure else party_keys(parties, keys_dir, name)
        self.fingerprints = {n: fp for n, (_, fp) in keys.items()}  # shown to the user, compared by phone
        self.embedder = embedder
        self.timeout_s = timeout_s
        self.max_bytes = int(max_message_mb * 1024 * 1024)
        self.secret = secret or SecretContext.create()
        self.public = self.secret.public_bytes
        self.socks = {
            p.name: ClientSocket(
                p.endpoint,
                keys_dir=keys_dir,
                name=name,
                insecure=insecure,
                server_key=keys[p.name][0].encode() if keys else None,
            )
            for p in parties
        }
        self.key_ok: dict[str, int] = {}  # party -> rows, once it has our public context
        self.grids: dict[str, object] = {}  # party -> its ScoreGrid (None: float scores, no noise)
        self._req = 0

    @classmethod
    def from_config(cls, cfg: QuerierConfig, *, insecure: bool = False, **kwargs) -> Querier:
        """The querier its parties file describes (its own pair, the parties and their keys)."""
        return cls(
            list(cfg.parties),
            keys_dir=cfg.keys_dir or None,
            name=cfg.name,
            timeout_s=cfg.timeout_s,
            insecure=insecure,
            **kwargs,
        )

    def close(self) -> None:
        for s in self.socks.values():
            s.close()

    def _request_id(self) -> int:
        self._req += 1
        return self._req

    def _ask(self, req: int, requests: dict[str, list], expect: MsgType, stats: SearchResult) -> dict[str, Message]:
        """Send one request per party, gather replies until the timeout; failures go to stats.failed."""
        poller = zmq.Poller()
        owner = {}
        for name, frames in requests.items():
            stats.bytes_out += frames_nbytes(frames)
            try:
                self.socks[name].send(frames, timeout_ms=int(self.timeout_s * 1000))
            except NotSent as exc:  # no connection takes it (the party refused our key, or is gone)
                stats.failed[name] = str(exc)
                self.socks[name].reconnect()
                self.key_ok.pop(name, None)
                continue
            poller.register(self.socks[name].sock, zmq.POLLIN)
            owner[self.socks[name].sock] = name
        replies: dict[str, Message] = {}
        deadline = time.monotonic() + self.timeout_s
        pending = set(owner.values())
        while pending and time.monotonic() < deadline:
            for sock, _ in poller.poll(int(max(1, (deadline - time.monotonic()) * 1000))):
                name = owner[sock]
                frames = sock.recv_multipart(copy=False)
                stats.bytes_in += frames_nbytes(frames)
                try:
                    msg = decode(frames, max_bytes=self.max_bytes)
                except WireError as err:
                    stats.failed[name] = f"garbage reply ({err})"
                    pending.discard(name)
                    continue
                if msg.header.step != req:
                    continue  # a late answer to an earlier request
                pending.discard(name)
                if msg.type == MsgType.ERROR:
                    stats.failed[name] = f"{msg.meta.code}: {msg.meta.detail}"
                elif msg.type != expect:
                    stats.failed[name] = f"expected {expect.value}, got {msg.type.value}"
                else:
                    replies[name] = msg
        for name in pending:
            stats.failed[name] = f"no reply within {self.timeout_s:.0f} s"
            self.socks[name].reconnect()  # drop whatever it may still send
            self.key_ok.pop(name, None)
        for name, why in stats.failed.items():
            log.warning("party %s left out: %s", name, why)
        return replies

    def _grid(self, meta: RagContext):
        """The party's announced score grid (None for float scores); ValueError if malformed."""
        from crypto.he import ScoreGrid

        return None if meta.grid is None else ScoreGrid.from_meta(meta.grid, self.secret.params.dim)

    def search_vector(self, vector: np.ndarray, *, k: int = 5) -> SearchResult:
        from crypto.he import HEError, decrypt_scores, encrypt_query

        if k < 1:
            raise UsageError(f"k must be >= 1, got {k}")
        stats = SearchResult(hits=[], contributed=[])
        t = time.perf_counter()
        new = [n for n in self.socks if n not in self.key_ok]
        if new:
            req = self._request_id()
            ctx = {
                n: encode(Header(MsgType.RAG_CONTEXT, step=req), {"context": bytes_tensor(self.public)}) for n in new
            }
            for name, msg in self._ask(req, ctx, MsgType.RAG_CONTEXT, stats).items():
                try:
                    self.grids[name] = self._grid(msg.meta)
                except ValueError as exc:
                    stats.failed[name] = f"bad score grid ({exc})"
                    log.warning("party %s left out: %s", name, stats.failed[name])
                    continue
                self.key_ok[name] = msg.meta.rows or 0
        stats.seconds["context"] = time.perf_counter() - t
        live = [n for n in self.socks if n in self.key_ok and n not in stats.failed]
        t = time.perf_counter()
        vector = np.asarray(vector, dtype=np.float64)
        queries = {g: encrypt_query(self.secret, vector, grid=g) for g in {self.grids[n] for n in live}}
        stats.seconds["encrypt"] = time.perf_counter() - t
        t = time.perf_counter()
        key_id = self.secret.key_id
        req = self._request_id()
        reqs = {
            n: encode(
                Header(MsgType.RAG_SCORE, step=req, meta=RagScore(key_id=key_id)),
                {"query": bytes_tensor(queries[self.grids[n]])},
            )
            for n in live
        }
        replies = self._ask(req, reqs, MsgType.RAG_SCORE, stats)
        stats.seconds["score"] = time.perf_counter() - t
        t = time.perf_counter()
        candidates: list[tuple[float, str, int]] = []
        for name, msg in replies.items():
            rows = msg.meta.rows
            cts = [
                msg.tensors[f"scores.{i}"].numpy().tobytes()
                for i in range(len(msg.tensors))
                if f"scores.{i}" in msg.tensors
            ]
            try:
                scores = decrypt_scores(self.secret, cts, rows, grid=self.grids[name])
            except (HEError, ValueError, TypeError) as exc:
                stats.failed[name] = f"undecryptable scores ({exc})"
                log.warning("party %s left out: %s", name, stats.failed[name])
                continue
            stats.contributed.append(name)
            top = np.argsort(-scores)[:k]
            candidates += [(float(scores[i]), name, int(i)) for i in top]
        stats.seconds["decrypt"] = time.perf_counter() - t
        candidates.sort(key=lambda c: -c[0])
        winners = candidates[:k]
        t = time.perf_counter()
        by_party: dict[str, list[int]] = {}
        for _, name, row in winners:
            by_party.setdefault(name, []).append(row)
        req = self._request_id()
        reqs = {
            n: encode(Header(MsgType.RAG_FETCH, step=req, meta=RagFetch(rows=rows))) for n, rows in by_party.items()
        }
        docs: dict[tuple[str, int], RagDoc] = {}
        for name, msg in self._ask(req, reqs, MsgType.RAG_FETCH, stats).items():
            for d in msg.meta.docs or []:
                docs[(name, d.row)] = d
        stats.seconds["fetch"] = time.perf_counter() - t
        for score, name, row in winners:
            d = docs.get((name, row), RagDoc(row, "", "", ""))
            stats.hits.append(Hit(name, row, score, d.doc_id, d.title, d.text))
        return stats

    def search(self, text: str, *, k: int = 5) -> SearchResult:
        if self.embedder is None:
            from splitfed.rag.embedder import Embedder

            self.embedder = Embedder()
        return self.search_vector(self.embedder.embed([text])[0], k=k)
