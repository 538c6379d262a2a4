"""A data party: answers encrypted scoring requests over its private vector store.

Protocol (ZeroMQ ROUTER, CURVE; JSON header + raw frames from `splitfed.wire`):

- ``rag_context``: the querier's CKKS *public* context (no secret key; refused otherwise),
  cached by key id so it travels once per session; the reply names the party's row count
  and, if it noises its scores, its public score grid (``grid: [query_bits, doc_bits]``,
  `crypto.he.grid`): the querier then quantises its query on that grid and rounds;
- ``rag_score``: an encrypted query -> encrypted scores of every stored vector (the party
  never sees the query or the scores in the clear);
- ``rag_fetch``: at most ``k`` row indices -> those documents' texts, the only plaintext a
  party ever reveals.

Every request is validated; a bad one gets an ``error`` reply and the party keeps serving.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from splitfed.rag.budget import BudgetExceeded, ScoreBudget
from splitfed.rag.config import PartyConfig
from splitfed.rag.store import VectorStore
from splitfed.transport import Incoming, RequestLoop, ServerSocket
from splitfed.wire import ErrorCode, Header, Message, MsgType, WireError, bytes_tensor, encode, tensor_bytes
from splitfed.wire.messages import short
from splitfed.wire.meta import RagContext, RagDoc, RagFetch, RagScore

log = logging.getLogger("splitfed.rag.party")


class Party:
    def __init__(
        self,
        store: VectorStore,
        *,
        name: str,
        endpoint: str,
        keys_dir=None,
        insecure: bool = False,
        max_message_mb: float = 128.0,
        k_max: int = 10,
        noise: Any = None,
        randbytes: Callable[[int], bytes] = os.urandom,
        max_contexts: int = 4,
        budget: ScoreBudget | None = None,
    ):
        """`keys_dir` holds the party's own pair (``NAME.key_secret``, NAME = `name`) and ``allowed/``,
        the public keys of the queriers it answers; `noise` (a `crypto.he.ScoreNoise`, see
        `score_noise`) noises every score with integer discrete Gaussian noise drawn from
        `randbytes` (inject it only in tests); `budget` accounts it per querier and refuses a
        querier over its budget."""
        self.store, self.name, self.k_max = store, name, k_max
        self.noise, self.randbytes = noise, randbytes
        if noise is not None:
            noise.prepare()
        self.max_bytes = int(max_message_mb * 1024 * 1024)
        self.scorers: collections.OrderedDict[str, object] = collections.OrderedDict()
        self.max_contexts = max_contexts
        self.socket = ServerSocket(endpoint, keys_dir=keys_dir, insecure=insecure, name=name)
        self.endpoint = self.socket.endpoint
        self.served = 0
        self.budget = budget

    @classmethod
    def from_config(cls, cfg: PartyConfig, *, insecure: bool = False) -> Party:
        """A party as its TOML file describes it, with its per-querier score budget."""
        if not insecure:
            check_party_keys(cfg)
        store = VectorStore.load(cfg.index)
        noise = score_noise(cfg.noise_std, store.embeddings.shape[1])
        budget = ScoreBudget(
            cfg.ledger_dir or Path(cfg.index).with_name(Path(cfg.index).name + "-ledger"),
            noise_multiplier=float(noise.noise_multiplier) if noise else 0.0,
            tv=noise.tv(len(store.docs)) if noise else 0.0,
            delta=cfg.delta,
            max_epsilon=cfg.max_epsilon,
        )
        return cls(
            store,
            name=cfg.name,
            endpoint=cfg.endpoint,
            keys_dir=cfg.keys_dir or None,
            insecure=insecure,
            noise=noise,
            k_max=cfg.k_max,
            budget=budget,
        )

    def serve(self, *, max_seconds: float | None = None, max_queries: int | None = None) -> int:
        loop = RequestLoop(self.socket, self._dispatch, max_bytes=self.max_bytes, log=log)
        try:
            loop.run(
                poll_ms=500,
                tick=lambda: max_queries is not None and self.served >= max_queries,
                max_seconds=max_seconds,
            )
        finally:
            self.socket.close()
        return 0

    def _dispatch(self, inc: Incoming, msg: Message) -> None:
        handler = {
            MsgType.RAG_CONTEXT: self._context,
            MsgType.RAG_SCORE: lambda m: self._score(m, self._querier(inc)),
            MsgType.RAG_FETCH: self._fetch,
            MsgType.HEARTBEAT: lambda m: encode(Header(MsgType.HEARTBEAT)),
        }.get(msg.type)
        if handler is None:
            raise WireError(
                ErrorCode.UNKNOWN_TYPE, f"a party answers rag_context, rag_score, rag_fetch; got {msg.type.value}"
            )
        self.socket.send(inc.identity, handler(msg))

    def _context(self, msg: Message) -> list:
        from crypto.he import HEError

        data = tensor_bytes(msg.tensors, "context")
        try:
            scorer = make_scorer(
                data, self.store.embeddings, max_bytes=self.max_bytes, noise=self.noise, randbytes=self.randbytes
            )
        except HEError as exc:
            raise WireError(ErrorCode.BAD_TENSOR, f"public context refused: {exc}") from None
        key_id = scorer_key_id(scorer)
        self.scorers[key_id] = scorer
        self.scorers.move_to_end(key_id)
        while len(self.scorers) > self.max_contexts:
            self.scorers.popitem(last=False)
        grid = self.noise.grid.to_meta() if self.noise is not None else None
        meta = RagContext(key_id=key_id, rows=len(self.store.docs), grid=grid)
        return encode(Header(MsgType.RAG_CONTEXT, step=msg.header.step, meta=meta))

    def _querier(self, inc: Incoming) -> str:
        """Who asks: the allow-list name of the querier's CURVE key (``anonymous`` in plaintext mode)."""
        return "anonymous" if inc.user is None else self.socket.clients.get(inc.user, inc.user)

    def _score(self, msg: Message, querier: str) -> list:
        from crypto.he import HEError

        key_id = msg.meta.key_id
        scorer = self.scorers.get(key_id) if key_id is not None else None
        if scorer is None:
            raise WireError(ErrorCode.OUT_OF_ORDER, f"unknown key id {key_id!r}: send rag_context first")
        if self.budget is not None:
            try:
                eps = self.budget.charge(querier)
            except BudgetExceeded as exc:
                raise WireError(ErrorCode.BUDGET, str(exc)) from None
            log.info("%s: answered %s, epsilon spent on it %.3g", self.name, querier, eps)
        try:
            cts = score(scorer, tensor_bytes(msg.tensors, "query"))
        except HEError as exc:
            raise WireError(ErrorCode.BAD_TENSOR, f"encrypted query refused: {exc}") from None
        self.served += 1
        tensors = {f"scores.{i}": bytes_tensor(c) for i, c in enumerate(cts)}
        meta = RagScore(key_id=key_id, rows=len(self.store.docs))
        return encode(Header(MsgType.RAG_SCORE, step=msg.header.step, meta=meta), tensors)

    def _fetch(self, msg: Message) -> list:
        rows = msg.meta.rows  # None or a list of integers >= 0 (the codec checked)
        n = len(self.store.docs)
        if not rows or len(rows) > self.k_max or not all(r < n for r in rows) or len(set(rows)) != len(rows):
            raise WireError(
                ErrorCode.MALFORMED, f"rows: expected 1..{self.k_max} distinct integers in [0, {n}), got {short(rows)}"
            )
        docs = [RagDoc(r, self.store.docs[r].doc_id, self.store.docs[r].title, self.store.docs[r].text) for r in rows]
        return encode(Header(MsgType.RAG_FETCH, step=msg.header.step, meta=RagFetch(docs=docs)))


def check_party_keys(cfg: PartyConfig) -> None:
    """Refuse, with the command that fixes it, a party without its own pair or allow-list."""
    from splitfed.transport.keys import KeyFileError

    if not cfg.keys_dir:
        raise KeyFileError(f"{cfg.name}: keys_dir is empty; CURVE needs the party's key pair (or --insecure)")
    keys = Path(cfg.keys_dir)
    if not (keys / f"{cfg.name}.key_secret").is_file():
        raise KeyFileError(
            f"{cfg.name}: no key pair at {keys / (cfg.name + '.key_secret')}; `splitfed rag index ... "
            f"--name {cfg.name} --keys-dir {keys}` creates it"
        )
    if not (keys / "allowed").is_dir():
        raise KeyFileError(f"{cfg.name}: no allow-list folder {keys / 'allowed'} (the queriers' public keys)")


def allowed_queriers(cfg: PartyConfig) -> dict[str, str]:
    """name -> fingerprint of every querier in the party's allow-list."""
    from splitfed.transport.keys import read_public_key_file

    files = sorted((Path(cfg.keys_dir) / "allowed").glob("*.key"))
    return {k.name: k.fingerprint for k in map(read_public_key_file, files)}


# --- the narrow seam to crypto.he -------------------------------------------------------------
def score_noise(noise_std: float, dim: int):
    """The party's `crypto.he.ScoreNoise` for ``noise_std`` (cosine units), None for 0.

    ``noise_std`` keeps its float-era meaning: noise multiplier ``noise_std / 2`` (the cosine
    score's sensitivity is 2), hence the same epsilon; the scores are integers on the finest
    public grid that keeps the noise table small, and the noise actually added is a little
    larger than ``noise_std`` (``ScoreNoise.std``: the grid's rounding enters the sensitivity).
    """
    if noise_std == 0:
        return None
    from crypto.he import ScoreNoise

    return ScoreNoise.for_std(noise_std, dim)


def make_scorer(context_bytes: bytes, matrix: np.ndarray, *, max_bytes: int, noise, randbytes):
    from crypto.he import EncryptedScorer, PublicContext

    ctx = PublicContext.from_bytes(context_bytes, max_bytes=max_bytes)
    return EncryptedScorer(ctx, matrix, noise=noise, randbytes=randbytes)


def scorer_key_id(scorer) -> str:
    return scorer.public_ctx.key_id


def score(scorer, query: bytes) -> list[bytes]:
    return scorer.score(query)
