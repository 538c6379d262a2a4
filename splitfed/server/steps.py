"""Who runs on the trunk next: the forward queue, cross-client batches, and the one pending step.

A training step holds the trunk from its forward until its backward, so no backward ever
sees weights changed under its graph; other clients' forwards wait in arrival order.  With
``server.batch_clients`` the waiting training forwards of different clients run as one
padded batch, and the trunk steps once every member's gradient is in (or the member left).

The step in flight is one `PendingStep` value; a session's stage changes to and from
``AWAIT_BACKWARD`` only here.  I/O-free: replies and metrics go to the `Outbox`.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from splitfed.server.events import Outbox, Progress, Reject
from splitfed.server.ops import Backward, Forward, Infer
from splitfed.server.session import Session, Stage
from splitfed.training import NonFiniteError
from splitfed.wire import ErrorCode, Header, MsgType, WireError, compress, encode

log = logging.getLogger("splitfed.server")


@dataclass(frozen=True, eq=False)
class QueuedForward:
    """A validated FORWARD: the session, its header, (B, T, D) activations and (B, T) mask."""

    sess: Session
    header: Header
    act: torch.Tensor
    mask: torch.Tensor
    train: bool = True
    base: bool = False  # an evaluation of the public base model (trunk adapter off)


@dataclass(frozen=True)
class Member:
    """One session's part of the pending step."""

    session: Session
    step: int  # the client's step number, echoed in its GRADIENT
    shape: tuple[int, ...]  # the activations it got back: its gradient must have this shape


@dataclass
class PendingStep:
    """The training step holding the trunk: from its forward until every member's gradient
    is in or the member left (None).  Opening it moves the members to ``AWAIT_BACKWARD``."""

    members: dict[str, Member]
    since: float
    grads: dict[str, torch.Tensor | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for m in self.members.values():
            m.session.stage = Stage.AWAIT_BACKWARD

    @property
    def complete(self) -> bool:
        return len(self.grads) == len(self.members)

    @property
    def batched(self) -> bool:
        return len(self.members) > 1

    def waiting(self) -> list[Member]:
        return [m for name, m in self.members.items() if name not in self.grads]

    def free(self) -> list[Session]:
        """The step is over: members still waiting for their gradient go back to ``READY``."""
        out = [m.session for m in self.members.values() if m.session.stage == Stage.AWAIT_BACKWARD]
        for s in out:
            s.stage = Stage.READY
        return out


Reply = Callable[[Session, list], None]


class StepScheduler:
    def __init__(
        self,
        engine,
        *,
        batch_clients: bool,
        max_batch: int,
        compression: str,
        reply: Reply,
        outbox: Outbox,
        clock: Callable[[], float],
    ):
        """`engine` runs `TrunkOp`s (a `TrunkEngine`, or its replicated form); `reply(session,
        frames)` sends; `clock` is the core's notion of now."""
        self.engine, self.batch_clients, self.max_batch = engine, batch_clients, max_batch
        self.compression = compression
        self.reply, self.outbox, self.clock = reply, outbox, clock
        self.queue: collections.deque[QueuedForward] = collections.deque()
        self.pending: PendingStep | None = None

    # ------------------------------------------------------------------ forward
    def forward(self, fwd: QueuedForward) -> None:
        if self.pending is not None:
            self.queue.append(fwd)
        else:
            self._run([fwd])

    def _run(self, work: list[QueuedForward]) -> None:
        t = time.perf_counter()
        first = work[0]
        try:
            if first.train:
                outs = self.engine.run(Forward(tuple((f.sess.name, f.act, f.mask) for f in work)))
            else:
                outs = {first.sess.name: self.engine.run(Infer(first.sess.name, first.act, first.mask, first.base))}
        except NonFiniteError as exc:
            raise WireError(ErrorCode.BAD_TENSOR, str(exc)) from None
        compute = time.perf_counter() - t
        if first.train:
            members = {f.sess.name: Member(f.sess, f.header.step, tuple(outs[f.sess.name].shape)) for f in work}
            self.pending = PendingStep(members, since=self.clock())
        for f in work:
            self._send(f.sess, MsgType.ACTIVATIONS, f.header.round, f.header.step, "act", outs[f.sess.name])
        h = first.header
        if len(work) == 1:
            fields = {"client": first.sess.name, "round": h.round, "step": h.step, "train": first.train}
            self.outbox.write("forward", **fields, compute_s=compute)
        else:
            clients = [f.sess.name for f in work]
            fields = {"clients": clients, "round": h.round, "train": True}
            self.outbox.write("forward", **fields, compute_s=compute, batched=len(work))

    def _take(self) -> list[QueuedForward]:
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
        while self.queue and self.pending is None:
            work = self._take()
            try:
                self._run(work)
            except WireError as err:  # the queued clients get the error; the others go on
                for f in work:
                    self.outbox.put(Reject(f.sess.identity, err, f.header.step))
            except Exception as exc:
                log.exception("queued forward failed")
                for f in work:
                    err = WireError(ErrorCode.SERVER, f"{type(exc).__name__}: {exc}")
                    self.outbox.put(Reject(f.sess.identity, err, f.header.step))

    # ------------------------------------------------------------------ backward
    def member(self, sess: Session, step: int) -> Member:
        """`sess`'s part of the pending step, for a BACKWARD of `step`; raises `WireError`."""
        m = self.pending.members.get(sess.name) if self.pending is not None else None
        if m is None or step != m.step:
            raise WireError(ErrorCode.OUT_OF_ORDER, f"backward for step {step}, pending {m.step if m else -1}")
        if sess.name in self.pending.grads:
            raise WireError(ErrorCode.OUT_OF_ORDER, f"{sess.name}: backward for step {m.step} sent twice")
        return m

    def backward(self, sess: Session, rnd: int, grad: torch.Tensor) -> None:
        """`grad` (checked against `member`) is `sess`'s part; the step runs once all are in."""
        self.pending.grads[sess.name] = grad
        if self.pending.complete:
            self._complete(rnd, by=sess)

    def _complete(self, rnd: int, *, by: Session | None) -> None:
        """Run the pending step's backward; gradients to the members still waiting for them.
        A non-finite step is dropped: every member hears why (`by`, whose message completed
        the step, through the error raised)."""
        step, self.pending = self.pending, None
        t = time.perf_counter()
        try:
            results = self.engine.run(Backward(tuple(step.grads.items())))
        except NonFiniteError as exc:
            err = WireError(ErrorCode.BAD_TENSOR, f"batched step dropped: {exc}" if step.batched else str(exc))
            for s in step.free():
                if s is not by:
                    self.outbox.put(Reject(s.identity, err, step.members[s.name].step))
            self.drain()
            if by is not None:
                raise err from None
            return
        compute = time.perf_counter() - t
        waiting = {s.name: s for s in step.free()}
        sent = [c for c in results if c in waiting]
        for name in sent:
            m = step.members[name]
            self._send(m.session, MsgType.GRADIENT, rnd, m.step, "grad", results[name])
        if sent:
            self.outbox.put(Progress(rnd, len(sent)))
            if step.batched:
                self.outbox.write("backward", clients=sorted(sent), round=rnd, compute_s=compute)
            else:
                self.outbox.write("backward", client=sent[0], round=rnd, step=step.members[sent[0]].step,
                                  compute_s=compute)  # fmt: skip
        self.drain()

    # ------------------------------------------------------------------ departures
    def release(self, name: str, rnd: int) -> None:
        """`name` left (or timed out): its part of the pending step is dropped (it contributes
        nothing); a step whose members are all in or gone runs; the queue goes on."""
        if self.pending is not None and name in self.pending.members:
            left = self.pending.members[name].session
            if left.stage == Stage.AWAIT_BACKWARD:  # a client that said bye stays DONE
                left.stage = Stage.READY
            self.pending.grads[name] = None
            if self.pending.complete:
                self._complete(rnd, by=None)
        self.drain()

    def expire(self, timeout_s: float, rnd: int) -> list[str]:
        """Take the trunk back from clients that held a step longer than `timeout_s`: their
        parts are dropped (no weight changes from them) and they may start over; returns them."""
        if self.pending is None or self.clock() - self.pending.since <= timeout_s:
            return []
        late = [m.session.name for m in self.pending.waiting()]
        for name in late:
            self.release(name, rnd)
        return late

    def drop(self, identity: bytes) -> None:
        """Forget the queued forwards of a session that no longer exists."""
        self.queue = collections.deque(f for f in self.queue if f.sess.identity != identity)

    def _send(self, sess: Session, mtype: MsgType, rnd: int, step: int, name: str, x: torch.Tensor) -> None:
        self.reply(sess, encode(Header(mtype, sess.session_id, rnd, step), compress(name, x, self.compression)))
