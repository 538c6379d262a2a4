"""Who runs on the trunk next: the forward queue and cross-client batches.

A training step holds the trunk from its forward until its backward, so no backward ever
sees weights changed under its graph; other clients' forwards wait in arrival order.  With
``server.batch_clients`` the waiting training forwards of different clients run as one
padded batch, and the trunk steps once every member's gradient is in (or the member left).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from splitfed.server.session import Session, Stage
from splitfed.server.trunk import GROUP, TrunkService
from splitfed.training import NonFiniteError
from splitfed.wire import ErrorCode, Header, MsgType, WireError, compress, encode

log = logging.getLogger("splitfed.server")


@dataclass(frozen=True, eq=False)
class PendingForward:
    """A validated FORWARD: the session, its header, (B, T, D) activations and (B, T) mask."""

    sess: Session
    header: Header
    act: torch.Tensor
    mask: torch.Tensor

    @property
    def train(self) -> bool:
        return self.header.meta.get("train", True) is True

    @property
    def base(self) -> bool:
        """An evaluation of the public base model (trunk adapter off)."""
        return self.header.meta.get("base", False) is True


class TrunkScheduler:
    def __init__(
        self,
        trunk: TrunkService,
        *,
        batch_clients: bool,
        max_batch: int,
        compression: str,
        reply: Callable[[Session, list], None],
        reject: Callable[..., None],
        metrics,
        on_step: Callable[[int, int], None],
    ):
        self.trunk, self.batch_clients, self.max_batch, self.compression = trunk, batch_clients, max_batch, compression
        self.reply, self.reject, self.metrics, self.on_step = reply, reject, metrics, on_step
        self.queue: collections.deque[PendingForward] = collections.deque()
        self.members: dict[str, Session] = {}  # sessions holding the pending step (one, or a batch)
        self.busy_since = 0.0

    # ------------------------------------------------------------------ forward
    def forward(self, fwd: PendingForward) -> None:
        if self.trunk.busy is not None:
            self.queue.append(fwd)
        else:
            self._run_one(fwd)

    def _run_one(self, fwd: PendingForward) -> None:
        sess, h = fwd.sess, fwd.header
        t = time.perf_counter()
        try:
            out = self.trunk.forward(sess.name, fwd.act, fwd.mask, train=fwd.train, base=fwd.base)
        except NonFiniteError as exc:
            raise WireError(ErrorCode.BAD_TENSOR, str(exc)) from None
        compute = time.perf_counter() - t
        if fwd.train:
            sess.stage, sess.pending_shape, sess.pending_step = Stage.AWAIT_BACKWARD, tuple(out.shape), h.step
            self.members, self.busy_since = {sess.name: sess}, time.monotonic()
        self._send(sess, MsgType.ACTIVATIONS, h.round, h.step, "act", out)
        self.metrics.write("forward", client=sess.name, round=h.round, step=h.step, train=fwd.train, compute_s=compute)

    def _run_batch(self, batch: list[PendingForward]) -> None:
        t = time.perf_counter()
        try:
            outs = self.trunk.forward_group([(f.sess.name, f.act, f.mask) for f in batch])
        except NonFiniteError as exc:
            raise WireError(ErrorCode.BAD_TENSOR, str(exc)) from None
        compute = time.perf_counter() - t
        self.members, self.busy_since = {f.sess.name: f.sess for f in batch}, time.monotonic()
        for f in batch:
            out, h = outs[f.sess.name], f.header
            f.sess.stage, f.sess.pending_shape, f.sess.pending_step = Stage.AWAIT_BACKWARD, tuple(out.shape), h.step
            self._send(f.sess, MsgType.ACTIVATIONS, h.round, h.step, "act", out)
        rnd = batch[0].header.round
        clients = [f.sess.name for f in batch]
        self.metrics.write("forward", clients=clients, round=rnd, train=True, compute_s=compute, batched=len(batch))

    def _take(self) -> list[PendingForward]:
        """Next work for the free trunk: queued training forwards of distinct clients, up to
        ``max_batch`` rows, when batching is on and more than one fits; else one forward."""
        if not (self.batch_clients and len(self.queue) > 1):
            return [self.queue.popleft()]
        taken, rows, keep = [], 0, collections.deque()
        for f in self.queue:
            fits = rows + f.mask.shape[0] <= self.max_batch
            if f.train and fits and all(t.sess is not f.sess for t in taken):
                taken.append(f)
                rows += f.mask.shape[0]
            else:
                keep.append(f)
        if len(taken) > 1:
            self.queue = keep
            return taken
        if taken:  # a lone training forward goes first, as it would in a batch
            self.queue.remove(taken[0])
            return taken
        return [self.queue.popleft()]

    def drain(self) -> None:
        """Run queued forwards while the trunk is free."""
        while self.queue and self.trunk.busy is None:
            work = self._take()
            try:
                self._run_batch(work) if len(work) > 1 else self._run_one(work[0])
            except WireError as err:  # the queued clients get the error; the others go on
                for f in work:
                    self.reject(f.sess.identity, err, step=f.header.step)
            except Exception as exc:
                log.exception("queued forward failed")
                for f in work:
                    err = WireError(ErrorCode.SERVER, f"{type(exc).__name__}: {exc}")
                    self.reject(f.sess.identity, err, step=f.header.step)

    # ------------------------------------------------------------------ backward
    def backward(self, sess: Session, header: Header, grad: torch.Tensor) -> None:
        """`grad` (validated against the pending shape) completes `sess`'s pending step."""
        if self.trunk.busy == GROUP:
            if sess.name in self.trunk.group_grads:
                raise WireError(
                    ErrorCode.OUT_OF_ORDER, f"{sess.name}: backward for step {sess.pending_step} sent twice"
                )
            t = time.perf_counter()
            try:
                results = self.trunk.backward_group(sess.name, grad)
            except NonFiniteError as exc:  # the whole batch's step is dropped: every member hears why
                err = WireError(ErrorCode.BAD_TENSOR, f"batched step dropped: {exc}")
                for member in self._free_members():
                    if member is not sess:
                        self.reject(member.identity, err, step=member.pending_step)
                self.drain()
                raise err from None
            if results is not None:
                self.on_step(header.round, len(results))
                self.metrics.write(
                    "backward", clients=sorted(results), round=header.round, compute_s=time.perf_counter() - t
                )
                self._send_gradients(results, header.round)
            return
        t = time.perf_counter()
        try:
            grad_in = self.trunk.backward(sess.name, grad)
        except NonFiniteError as exc:
            self._free_members()
            self.drain()
            raise WireError(ErrorCode.BAD_TENSOR, str(exc)) from None
        compute = time.perf_counter() - t
        self.members = {}
        sess.stage, sess.pending_shape = Stage.READY, None
        self._send(sess, MsgType.GRADIENT, header.round, header.step, "grad", grad_in)
        self.metrics.write("backward", client=sess.name, round=header.round, step=header.step, compute_s=compute)
        self.on_step(header.round, 1)
        self.drain()

    def _send_gradients(self, results: dict[str, torch.Tensor], rnd: int) -> None:
        """Return a finished batch's activation gradients to its members."""
        members, self.members = self.members, {}
        for name, grad_in in results.items():
            sess = members.get(name)
            if sess is None or sess.stage != Stage.AWAIT_BACKWARD:
                continue
            sess.stage, sess.pending_shape = Stage.READY, None
            self._send(sess, MsgType.GRADIENT, rnd, sess.pending_step, "grad", grad_in)
        self.drain()

    # ------------------------------------------------------------------ departures
    def release(self, name: str, rnd: int) -> None:
        """A client left: drop its pending step (no weight changes); finish a batch it was part of;
        let the queue go on."""
        results = self.trunk.abort(name)
        self.members.pop(name, None)
        if results:
            results.pop(name, None)
            self._send_gradients(results, rnd)
        self.drain()

    def expire(self, timeout_s: float, rnd: int) -> list[str]:
        """Take the trunk back from clients that held a step longer than `timeout_s`: their
        pending steps are dropped (no weight changes) and they may start over; returns them."""
        if self.trunk.busy is None or time.monotonic() - self.busy_since <= timeout_s:
            return []
        late = [s for s in self.members.values() if s.name not in self.trunk.group_grads]
        for sess in late:
            sess.stage, sess.pending_shape = Stage.READY, None
            self.release(sess.name, rnd)
        return [s.name for s in late]

    def _free_members(self) -> list[Session]:
        """After a dropped step: its members are back to READY with nothing pending."""
        members, self.members = list(self.members.values()), {}
        for m in members:
            m.stage, m.pending_shape = Stage.READY, None
        return members

    def drop(self, identity: bytes) -> None:
        """Forget the queued forwards of a session that no longer exists."""
        self.queue = collections.deque(f for f in self.queue if f.sess.identity != identity)

    def _send(self, sess: Session, mtype: MsgType, rnd: int, step: int, name: str, x: torch.Tensor) -> None:
        self.reply(sess, encode(Header(mtype, sess.session_id, rnd, step), compress(name, x, self.compression)))
