"""`ServerCore`: the training server as an I/O-free state machine, ``handle(event) -> [action]``.

It owns the sessions (one per connected client, an explicit stage each), the trunk steps
(`StepScheduler`: the forward queue and the one `PendingStep`), the round policy and the
aggregator.  It reads no socket, file or clock (time comes in the events) and writes
nothing: replies, error answers, metrics lines, checkpoints and the final export come out
as actions (`splitfed.server.events`), which the ZeroMQ adapter (`splitfed.server.runtime`)
performs in order.  The trunk is reached only through `TrunkOp` values given to the engine,
which is what lets torchrun ranks replicate it (`splitfed.server.distributed`).

A message that breaks the protocol is answered with a `Reject` naming what was expected and
what came; the server goes on.  A client silent for ``transport.timeout_s`` is dropped (its
pending step discarded) so it never blocks the others.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import torch

from splitfed.aggregation import Aggregator, ClientUpdate, RoundOutcome
from splitfed.config import RunConfig
from splitfed.config.fields import ConfigError
from splitfed.models.client_adapter import TRUNK_PREFIX
from splitfed.server.checkpoint import ServerCheckpoint
from splitfed.server.events import (
    Action,
    Banned,
    Event,
    Export,
    Idle,
    Outbox,
    Received,
    Reject,
    SaveCheckpoint,
    Send,
    Tick,
)
from splitfed.server.generation import GenerationScheduler
from splitfed.server.housekeeping import Housekeeping
from splitfed.server.ops import Average
from splitfed.server.rounds import RoundPolicy
from splitfed.server.session import Session, Stage
from splitfed.server.steps import QueuedForward, StepScheduler
from splitfed.server.validate import (
    check_activations,
    check_agreement,
    check_bound,
    check_identity,
    gradient_encoding,
)
from splitfed.transport import client_name
from splitfed.wire import ErrorCode, Header, Message, MsgType, WireError, decompress, encode, frames_nbytes
from splitfed.wire.messages import short
from splitfed.wire.meta import Forward as ForwardMeta
from splitfed.wire.meta import Hello, RoundResult, SecAgg, Welcome

log = logging.getLogger("splitfed.server")

LINGER_S = 1.0  # after the last round and the last bye, how long the server stays for stragglers


class ServerCore:
    def __init__(
        self,
        cfg: RunConfig,
        engine,
        aggregator: Aggregator,
        *,
        outbox: Outbox,
        model_fingerprint: str,
        hidden: int,
        roster=None,
        start_round: int = 0,
        client_state: dict[str, torch.Tensor] | None = None,
        now: float = 0.0,
        new_session_id: Callable[[], str] = lambda: secrets.token_hex(8),
    ):
        """`engine` runs `TrunkOp`s (already restored from a checkpoint when resuming, then
        `start_round` and `client_state` come from it too); `aggregator` reports through
        `outbox`, as the core does; `roster`: the secure-aggregation roster, if any;
        `new_session_id`: where session ids come from (unguessable by default)."""
        if cfg.server.batch_clients and cfg.server.mode != "shared":
            raise ConfigError(
                "server.batch_clients needs server.mode = 'shared' (per-client adapters cannot share a batch)"
            )
        self.cfg, self.config_hash, self.key_digests = cfg, cfg.hash(), cfg.key_digests()
        self.engine, self.aggregator, self.outbox = engine, aggregator, outbox
        self.model_fingerprint, self.hidden, self.roster = model_fingerprint, hidden, roster
        self.clients = [client_name(k) for k in range(cfg.data.clients)]
        self.client_state: dict[str, torch.Tensor] = dict(client_state or {})
        self.now, self.new_session_id = now, new_session_id
        self.rounds = RoundPolicy(
            self.clients,
            rounds=cfg.training.rounds,
            deadline_s=cfg.server.round_deadline_s,
            start=start_round,
            clock=lambda: self.now,
        )
        self.closing: list[str] | None = None  # clients missing from the round being aggregated
        # resumed after the last round's checkpoint: give waiting clients time to come back for the result
        self.done_at = now + cfg.transport.timeout_s if self.done else 0.0
        self.sessions: dict[bytes, Session] = {}
        self.steps = StepScheduler(
            engine,
            batch_clients=cfg.server.batch_clients,
            max_batch=cfg.server.max_batch,
            compression=cfg.transport.compression,
            reply=self._reply,
            outbox=outbox,
            clock=lambda: self.now,
        )
        self.generation = GenerationScheduler(
            engine,
            cfg.server.inference,
            max_rows=cfg.server.max_batch,
            compression=cfg.transport.compression,
            reply=self._reply,
            outbox=outbox,
            clock=lambda: self.now,
            blocked=lambda: self.steps.pending is not None,
        )
        self.housekeeping = Housekeeping(
            (self._expire, self.generation.expire, self._maybe_close_round), metrics=outbox
        )

    @property
    def round(self) -> int:
        return self.rounds.round

    @property
    def done(self) -> bool:
        return self.rounds.done

    @property
    def finished(self) -> bool:
        """All rounds are done and every client has left (or was dropped); never while serving
        generation (``server.inference.serve``)."""
        if self.cfg.server.inference.serve:
            return False
        everyone_left = not any(s.stage != Stage.DONE for s in self.sessions.values())
        return self.done and everyone_left and self.now - self.done_at > LINGER_S

    def handle(self, event: Event) -> list[Action]:
        """Advance the state machine by one event; the actions to perform, in order.

        A protocol error in a message becomes a `Reject` after whatever the message had
        already caused; any other exception is a bug and propagates."""
        self.now = event.now
        if isinstance(event, Received):
            try:
                self._received(event)
            except WireError as err:
                self.outbox.put(Reject(event.identity, err, event.msg.header.step))
        elif isinstance(event, Tick):
            self.housekeeping.tick()
        elif isinstance(event, Idle):
            self.generation.flush()
        elif isinstance(event, Banned):
            for ident, sess in list(self.sessions.items()):
                if ident == event.identity or (event.key_owner is not None and sess.name == event.key_owner):
                    self._forget(ident, sess)
        else:
            raise TypeError(f"not a server event: {type(event).__name__}")
        return self.outbox.take()

    def _reply(self, sess: Session, frames: list) -> None:
        sess.bytes_out += frames_nbytes(frames)
        self.outbox.put(Send(sess.identity, frames))

    def _received(self, ev: Received) -> None:
        msg = ev.msg
        if msg.type == MsgType.HELLO:
            self._hello(ev)
            return
        sess = self.sessions.get(ev.identity)
        if sess is None:
            raise WireError(ErrorCode.OUT_OF_ORDER, f"{msg.type.value} before hello: say hello first")
        if msg.header.session != sess.session_id:
            raise WireError(ErrorCode.UNKNOWN_CLIENT, "unknown session id: say hello again")
        sess.last_seen = self.now
        sess.bytes_in += ev.nbytes
        sess.check(msg.type)
        {
            MsgType.FORWARD: self._forward,
            MsgType.BACKWARD: self._backward,
            MsgType.UPDATE: self._update,
            MsgType.HEARTBEAT: self._heartbeat,
            MsgType.SECAGG: self._secagg,
            MsgType.GENERATE: self._generate,
            MsgType.BYE: self._bye,
        }[msg.type](sess, msg)

    # ------------------------------------------------------------------ handlers
    def _hello(self, ev: Received) -> None:
        hello: Hello = ev.msg.meta  # types and protocol bounds checked by the codec
        name = check_identity(hello, len(self.clients), ev.user, ev.key_owner)
        check_agreement(
            hello,
            name,
            self.cfg,
            config_hash=self.config_hash,
            digests=self.key_digests,
            roster=self.roster,
            model_fingerprint=self.model_fingerprint,
        )
        most = self.cfg.server.max_samples
        if hello.n_samples > most:
            raise WireError(ErrorCode.MALFORMED, f"n_samples must be an integer in [1, {most}], got {hello.n_samples}")
        generates = bool(hello.generate)
        for ident, old in list(self.sessions.items()):
            if old.name == name and not (old.generates or generates):  # a reconnecting trainer replaces its session
                self._forget(ident, old)
            elif ident == ev.identity:  # this connection's other session ends (its pending step would hold the trunk)
                self._forget(ident, old)
                if not old.generates:
                    self.rounds.left(old.name)
        if generates:  # one client may generate from several processes at once: its oldest sessions go past the cap
            mine = sorted((s.last_seen, i) for i, s in self.sessions.items() if s.name == name and s.generates)
            cap = self.cfg.server.inference.max_streams_per_client
            for _, ident in mine[: max(0, len(mine) + 1 - cap)]:
                self._forget(ident, self.sessions[ident])
        if not generates:
            self.rounds.joined(name)
        sess = Session(
            name, hello.client_id, ev.identity, self.new_session_id(), hello.n_samples, last_seen=self.now,
            stage=Stage.GENERATE if generates else Stage.READY, generates=generates,
        )  # fmt: skip
        self.sessions[ev.identity] = sess
        welcome = Welcome(
            round=self.round,
            rounds=self.cfg.training.rounds,
            done=self.done,
            hidden=self.hidden,
            compression=self.cfg.transport.compression,
            mode=self.cfg.server.mode,
        )
        tensors = self._result_tensors(sess)
        self._reply(sess, encode(Header(MsgType.WELCOME, sess.session_id, self.round, 0, welcome), tensors))
        self.outbox.write("hello", client=name, round=self.round)
        log.info("%s joined (round %d)", name, self.round)

    def _forward(self, sess: Session, msg: Message) -> None:
        fwd: ForwardMeta = msg.meta
        if fwd.base and fwd.train:
            raise WireError(ErrorCode.MALFORMED, "forward: a base-model forward (base = true) needs train = false")
        act, mask = check_activations(msg, self.cfg, hidden=self.hidden, train=fwd.train)  # before it is queued
        self.steps.forward(QueuedForward(sess, msg.header, act, mask, train=fwd.train, base=fwd.base))

    def _backward(self, sess: Session, msg: Message) -> None:
        member = self.steps.member(sess, msg.header.step)
        grad = decompress("grad", msg.tensors, gradient_encoding(self.cfg))
        if tuple(grad.shape) != member.shape:
            raise WireError(ErrorCode.BAD_TENSOR, f"grad: expected shape {list(member.shape)}, got {list(grad.shape)}")
        check_bound("grad", grad, self.cfg.server.max_abs_value)
        self.steps.backward(sess, msg.header.round, grad)

    def _update(self, sess: Session, msg: Message) -> None:
        state = self.aggregator.accept(msg)
        r = msg.header.round
        sess.stage = Stage.AWAIT_ROUND
        if r != self.round or self.done:
            log.warning("%s sent its update for round %d after it closed; skipped", sess.name, r)
            self._send_round_result(sess)
            return
        loss = msg.meta.loss
        self.rounds.add(sess.name, ClientUpdate(sess.client_id, sess.n_samples, state), loss)
        self.outbox.write("update", client=sess.name, round=r, loss=loss)

    def _heartbeat(self, sess: Session, msg: Message) -> None:
        self._reply(sess, encode(Header(MsgType.HEARTBEAT, sess.session_id, self.round)))

    def _secagg(self, sess: Session, msg: Message) -> None:
        self.aggregator.receive(sess.name, msg)

    def _generate(self, sess: Session, msg: Message) -> None:
        self.generation.receive(sess, msg, lambda: check_activations(msg, self.cfg, hidden=self.hidden, train=False))

    def _bye(self, sess: Session, msg: Message) -> None:
        sess.stage = Stage.DONE
        self._end(sess)
        if not sess.generates:
            self.rounds.left(sess.name)
        self.outbox.write(
            "bye", client=sess.name, bytes_in=sess.bytes_in, bytes_out=sess.bytes_out, metrics=msg.header.meta
        )  # the client's own byte counts, as it sent them (checked by the codec)
        log.info("%s left", sess.name)

    def _end(self, sess: Session) -> None:
        """A session ends: its generation streams, queued forwards and pending step go with it
        (a generation session shares its client's name, never its steps)."""
        self.generation.drop(sess.identity)
        if not sess.generates:
            self.steps.drop(sess.identity)
            self.steps.release(sess.name, self.round)

    def _forget(self, ident: bytes, sess: Session) -> None:
        """Remove a session (replaced, banned or silent)."""
        del self.sessions[ident]
        self._end(sess)

    # ------------------------------------------------------------------ rounds
    def _expire(self) -> None:
        timeout = self.cfg.server.step_timeout_s
        for name in self.steps.expire(timeout, self.round):
            log.warning("%s held a trunk step longer than %.0f s: step dropped", name, timeout)
            self.outbox.write("step_timeout", client=name, round=self.round)
        for ident, sess in list(self.sessions.items()):
            if sess.stage != Stage.DONE and self.now - sess.last_seen > self.cfg.transport.timeout_s:
                log.warning("%s silent for %.0f s: dropped", sess.name, self.now - sess.last_seen)
                self.outbox.write("dropped", client=sess.name, round=self.round)
                self._forget(ident, sess)
                if not sess.generates:
                    self.rounds.left(sess.name)

    def _maybe_close_round(self) -> None:
        if self.done:
            return
        start = self.closing is None
        if start:
            live = {s.name for s in self.sessions.values() if s.stage != Stage.DONE and not s.generates}
            missing = self.rounds.due(live)
            if missing is None:
                return
            if missing:
                log.warning("round %d closes without %s", self.round, ", ".join(missing))
            self.closing = missing
        waiting = {s.name for s in self.sessions.values() if s.stage == Stage.AWAIT_ROUND}
        try:
            if start:
                self.aggregator.start(self.round, self.rounds.updates, self._send_aggregation)
            outcome = self.aggregator.poll(waiting)
        except Exception as exc:  # e.g. arithmetic on what clients declared: keep the previous aggregate
            log.exception("round %d: aggregation failed; keeping the previous aggregate", self.round)
            self.outbox.write("aggregation_error", round=self.round, reason=short(f"{type(exc).__name__}: {exc}"))
            outcome = RoundOutcome(None)
        if outcome is not None:
            self._finish_round(outcome)

    def _send_aggregation(self, name: str, meta: SecAgg, tensors: dict[str, torch.Tensor]) -> None:
        sess = next((s for s in self.sessions.values() if s.name == name and s.stage == Stage.AWAIT_ROUND), None)
        if sess is not None:  # gone: the aggregation protocol counts it as dropped
            self._reply(sess, encode(Header(MsgType.SECAGG, sess.session_id, self.round, 0, meta), tensors))

    def _finish_round(self, outcome: RoundOutcome) -> None:
        r, updates = self.round, self.rounds.updates
        missing, self.closing = sorted(set(self.closing or []) | set(outcome.dropped)), None
        if outcome.state is not None:
            self.client_state = outcome.state
        self.engine.run(Average(tuple((name, u.n_samples) for name, u in updates.items())))
        states, optimizers = self.engine.states, self.engine.optimizer_states()
        self.outbox.put(SaveCheckpoint(ServerCheckpoint(r, self.config_hash, states, optimizers, self.client_state)))
        self.outbox.write(
            "round",
            round=r,
            participants=sorted(updates),
            missing=missing,
            losses=dict(self.rounds.losses),
            aggregated=outcome.state is not None,
        )
        log.info("round %d closed with %d client(s)", r, len(updates))
        self.rounds.advance()
        if self.done:
            self.done_at = self.now
            self.outbox.put(Export(self.engine.final_state(), self.client_state))
        for sess in self.sessions.values():
            if sess.stage == Stage.AWAIT_ROUND:
                self._send_round_result(sess)

    def _send_round_result(self, sess: Session) -> None:
        sess.stage = Stage.READY
        meta = RoundResult(round=self.round, done=self.done)
        tensors = self._result_tensors(sess)
        self._reply(sess, encode(Header(MsgType.ROUND_RESULT, sess.session_id, self.round, 0, meta), tensors))

    def _result_tensors(self, sess: Session) -> dict[str, torch.Tensor]:
        """The client aggregate; once the run is done also the trunk adapter (``trunk/`` keys),
        unless the parties agreed that the server keeps it (``server.share_trunk_adapter``)."""
        if not (self.done and self.cfg.server.share_trunk_adapter):
            return self.client_state
        trunk = {f"{TRUNK_PREFIX}{k}": v.detach().cpu() for k, v in self.engine.adapter_for(sess.name).items()}
        return {**self.client_state, **trunk}
