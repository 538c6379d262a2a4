"""Generation streams on the server: who holds which cache, the decode queue, and the limits.

A client opens a stream with its prompt's activations (``generate`` op ``open``), then sends
one position per new token (``step``) and finally ``close``.  The server never sees a token
id: only activations at the first cut and the 2-D attention mask.  The trunk's per-stream KV
caches live in the engine (`splitfed.server.caches`); this scheduler decides what runs when:

- requests queue in arrival order, at most one per stream (a step before the previous answer
  is refused), and run when the socket is drained (`flush`, the core's `Idle` event), never
  while a training step is pending;
- with ``server.inference.batch`` the queued decode steps of different streams run as one
  trunk forward of at most ``max_batch_rows`` rows, oldest first, so no stream waits more
  than one batch behind a newer one; prefills run one at a time (their lengths differ);
- limits: ``max_streams`` on the server, ``max_streams_per_client``, ``max_positions`` per
  stream, ``server.max_batch`` rows, and the cache budgets ``max_cache`` (all streams) and
  ``max_client_cache`` (one client's), counted as rows x positions reserved at open; a stream
  idle for ``idle_timeout_s`` is closed and a client that leaves (bye, silence, ban,
  reconnect) loses all its streams.  Refusals are protocol errors naming the limit, answered
  to that client only.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from splitfed.config.parties import InferenceSection
from splitfed.server.events import Outbox
from splitfed.server.ops import Decode, Prefill, Release
from splitfed.server.session import Session
from splitfed.wire import ErrorCode, Header, MsgType, WireError, compress, encode
from splitfed.wire.meta import Generate, Generated

Reply = Callable[[Session, list], None]


@dataclass
class Stream:
    key: str  # the engine's cache key: "<client>/<session id>/<stream>"
    sess: Session
    number: int  # the client's stream number
    mask: torch.Tensor  # (rows, length): the positions cached so far
    positions: int  # the most it may hold
    last_used: float
    queued: bool = False

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def reserved(self) -> int:
        """Cache positions the stream may come to hold (rows x positions)."""
        return self.rows * self.positions


@dataclass
class Request:
    stream: Stream
    header: Header
    act: torch.Tensor
    mask: torch.Tensor  # open: the prompt's (B, T); step: the stream's whole mask (B, L + 1)
    opening: bool


class GenerationScheduler:
    def __init__(
        self,
        engine,
        limits: InferenceSection,
        *,
        max_rows: int,
        compression: str,
        reply: Reply,
        outbox: Outbox,
        clock: Callable[[], float],
        blocked: Callable[[], bool] = lambda: False,
    ):
        """`blocked()`: whether a training step is pending (generation then waits for its backward)."""
        self.engine, self.limits, self.max_rows, self.compression = engine, limits, max_rows, compression
        self.reply, self.outbox, self.clock, self.blocked = reply, outbox, clock, blocked
        self.streams: dict[tuple[bytes, int], Stream] = {}
        self.queue: collections.deque[Request] = collections.deque()

    def reserved(self) -> int:
        return sum(s.reserved for s in self.streams.values())

    # ------------------------------------------------------------------ messages
    def receive(self, sess: Session, msg, activations: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> None:
        """A GENERATE message; `activations()` reads and checks its act and mask."""
        meta: Generate = msg.meta
        if meta.op == "close":
            self.close(sess, msg.header, meta)
        elif meta.op == "open":
            self.open(sess, msg.header, meta, *activations())
        else:
            self.step(sess, msg.header, meta, *activations())

    def open(self, sess: Session, header: Header, meta: Generate, act: torch.Tensor, mask: torch.Tensor) -> None:
        lim = self.limits
        if (sess.identity, meta.stream) in self.streams:
            raise WireError(ErrorCode.OUT_OF_ORDER, f"generate: stream {meta.stream} is already open")
        if meta.positions is None or not mask.shape[1] <= meta.positions <= lim.max_positions:
            raise WireError(
                ErrorCode.MALFORMED,
                f"generate open: positions must be an integer in [{mask.shape[1]} (the prompt), "
                f"{lim.max_positions}] (server.inference.max_positions), got {meta.positions}",
            )
        own = [s for s in self.streams.values() if s.sess.name == sess.name]  # the client's, over all its sessions
        if len(own) >= lim.max_streams_per_client:
            raise WireError(
                ErrorCode.TOO_LARGE,
                f"generate: {len(own)} streams open, server.inference.max_streams_per_client = "
                f"{lim.max_streams_per_client}",
            )
        wanted = mask.shape[0] * meta.positions
        mine = sum(s.reserved for s in own)
        if mine + wanted > lim.max_client_cache:
            raise WireError(
                ErrorCode.TOO_LARGE,
                f"generate: {mask.shape[0]} rows x {meta.positions} positions on top of this client's {mine} "
                f"exceeds server.inference.max_client_cache = {lim.max_client_cache}",
            )
        if len(self.streams) >= lim.max_streams or self.reserved() + wanted > lim.max_cache:
            raise WireError(ErrorCode.TOO_LARGE, "generate: the server's generation capacity is taken; try later")
        key = f"{sess.name}/{sess.session_id}/{meta.stream}"
        stream = Stream(key, sess, meta.stream, mask, meta.positions, self.clock(), queued=True)
        self.streams[(sess.identity, meta.stream)] = stream
        self.queue.append(Request(stream, header, act, mask, opening=True))

    def step(self, sess: Session, header: Header, meta: Generate, act: torch.Tensor, column: torch.Tensor) -> None:
        stream = self._stream(sess, meta)
        if stream.queued:
            raise WireError(ErrorCode.OUT_OF_ORDER, f"generate: stream {meta.stream} sent a step before its answer")
        if column.shape != (stream.rows, 1):
            raise WireError(
                ErrorCode.BAD_TENSOR,
                f"generate step: expected {stream.rows} rows of one position, got {list(column.shape)}",
            )
        if stream.mask.shape[1] + 1 > stream.positions:
            raise WireError(
                ErrorCode.TOO_LARGE, f"generate: stream {meta.stream} is full ({stream.positions} positions, as opened)"
            )
        stream.queued, stream.last_used = True, self.clock()
        self.queue.append(Request(stream, header, act, torch.cat([stream.mask, column], dim=1), opening=False))

    def close(self, sess: Session, header: Header, meta: Generate) -> None:
        stream = self._stream(sess, meta)
        self._release([stream], "closed")
        self._send(sess, header, meta.stream, {})

    def _stream(self, sess: Session, meta: Generate) -> Stream:
        stream = self.streams.get((sess.identity, meta.stream))
        if stream is None:
            raise WireError(
                ErrorCode.OUT_OF_ORDER,
                f"generate: stream {meta.stream} is not open (never opened, closed, or closed after "
                f"server.inference.idle_timeout_s = {self.limits.idle_timeout_s:g} s idle)",
            )
        return stream

    # ------------------------------------------------------------------ running
    def flush(self) -> None:
        """Run what is queued (the socket is drained): prefills alone, decode steps batched."""
        if self.blocked():
            return  # a training step is pending: generation waits for its backward
        while self.queue:
            if self.queue[0].opening:
                self._prefill(self.queue.popleft())
                continue
            batch: list[Request] = []
            rows = 0
            while self.queue and not self.queue[0].opening:
                nxt = self.queue[0].stream.rows
                if batch and (not self.limits.batch or rows + nxt > self.limits.max_batch_rows):
                    break
                batch.append(self.queue.popleft())
                rows += nxt
            self._decode(batch)

    def _prefill(self, req: Request) -> None:
        t = time.perf_counter()
        out = self.engine.run(Prefill(req.stream.key, req.stream.sess.name, req.act, req.mask))
        self._answered(req, out)
        self.outbox.write(
            "generate_open", client=req.stream.sess.name, stream=req.stream.number, rows=req.stream.rows,
            tokens=req.mask.shape[1], compute_s=time.perf_counter() - t,
        )  # fmt: skip

    def _decode(self, batch: list[Request]) -> None:
        t = time.perf_counter()
        items = tuple((r.stream.key, r.stream.sess.name, r.act, r.mask) for r in batch)
        outs = self.engine.run(Decode(items))
        for req, out in zip(batch, outs, strict=True):
            req.stream.mask = req.mask
            self._answered(req, out)
        self.outbox.write(
            "generate_step", streams=len(batch), rows=sum(r.stream.rows for r in batch),
            compute_s=time.perf_counter() - t,
        )  # fmt: skip

    def _answered(self, req: Request, out: torch.Tensor) -> None:
        req.stream.queued, req.stream.last_used = False, self.clock()
        self._send(req.stream.sess, req.header, req.stream.number, compress("act", out, self.compression))

    def _send(self, sess: Session, header: Header, number: int, tensors: dict) -> None:
        reply = Header(MsgType.GENERATED, sess.session_id, header.round, header.step, Generated(number))
        self.reply(sess, encode(reply, tensors))

    # ------------------------------------------------------------------ housekeeping
    def drop(self, identity: bytes) -> None:
        """A client left: its streams and queued requests go, and their caches are freed."""
        self._release([s for s in self.streams.values() if s.sess.identity == identity], "left")

    def expire(self) -> None:
        """Close the streams idle for longer than ``idle_timeout_s``."""
        now, timeout = self.clock(), self.limits.idle_timeout_s
        self._release([s for s in self.streams.values() if not s.queued and now - s.last_used > timeout], "idle")

    def _release(self, streams: list[Stream], why: str) -> None:
        if not streams:
            return
        gone = {s.key for s in streams}
        self.queue = collections.deque(r for r in self.queue if r.stream.key not in gone)
        for s in streams:
            del self.streams[(s.sess.identity, s.number)]
            self.outbox.write("generate_close", client=s.sess.name, stream=s.number, positions=s.mask.shape[1], why=why)
        self.engine.run(Release(tuple(sorted(gone))))
