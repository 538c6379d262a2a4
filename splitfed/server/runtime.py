"""The server process: holds the trunk, serves clients over ZeroMQ, closes rounds.

A thin dispatcher: the shared `RequestLoop` decodes and validates every message and turns
failures into ERROR replies; the handlers here check what the protocol allows and hand the
work to the parts that own it: `TrunkScheduler` (forward queue, cross-client batches),
`RoundPolicy` (membership, deadlines), the run's `Aggregator` (FedAvg or SecAgg+), and the
checkpoint.  A client silent for ``transport.timeout_s`` is dropped (its pending step
discarded) so it never blocks the others.  The server checkpoints atomically after every
round and resumes from there.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

import torch

from splitfed.aggregation import AdapterLayout, Aggregator, ClientUpdate, RoundOutcome, run_roster, server_aggregator
from splitfed.config import RunConfig
from splitfed.config.fields import ConfigError
from splitfed.metrics import MetricsWriter
from splitfed.models.client_adapter import TRUNK_PREFIX
from splitfed.models.source import short_fingerprint
from splitfed.server.batching import PendingForward, TrunkScheduler
from splitfed.server.checkpoint import ServerCheckpoint, load_checkpoint, save_checkpoint
from splitfed.server.export import export_run_adapter
from splitfed.server.housekeeping import Housekeeping
from splitfed.server.rounds import RoundPolicy
from splitfed.server.session import Session, Stage
from splitfed.server.trunk import TrunkService, load_trunk
from splitfed.server.validate import check_activations, check_bound, config_difference, gradient_encoding
from splitfed.transport import Ban, Incoming, PeerLimits, RequestLoop, ServerSocket, client_name
from splitfed.transport.keys import key_fingerprint
from splitfed.transport.roster import format_fingerprint
from splitfed.wire import ErrorCode, Header, Message, MsgType, WireError, decompress, encode, frames_nbytes
from splitfed.wire.messages import short

log = logging.getLogger("splitfed.server")


class Server:
    def __init__(
        self,
        cfg: RunConfig,
        *,
        resume: bool = False,
        insecure: bool = False,
        endpoint: str | None = None,
        on_step=None,
        trunk: TrunkService | None = None,
    ):
        """`on_step(round, n_steps)` is called after every finished trunk step (for progress bars);
        `trunk` replaces the one built from `cfg` (the distributed server passes its replicated one)."""
        from splitfed.models.client_adapter import client_adapter_shapes
        from splitfed.models.source import resolve_base_model

        if cfg.server.batch_clients and cfg.server.mode != "shared":
            raise ConfigError(
                "server.batch_clients needs server.mode = 'shared' (per-client adapters cannot share a batch)"
            )
        self.cfg, self.config_hash = cfg, cfg.hash()
        self.run_dir = Path(cfg.run.dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tb = self.run_dir / "tensorboard" / "server" if cfg.run.tensorboard else None
        self.metrics = MetricsWriter(self.run_dir / "metrics" / "server.jsonl", tensorboard=tb)
        self.clients = [client_name(k) for k in range(cfg.data.clients)]
        torch.manual_seed(cfg.run.seed)
        self.base_model = resolve_base_model(cfg.model, need_tokenizer=False)
        self.model_dir = self.base_model.path
        self.trunk: TrunkService = trunk or load_trunk(cfg, self.model_dir, clients=self.clients)
        self.hidden = int(self.trunk.trunk.config.hidden_size)
        layout = AdapterLayout(client_adapter_shapes(self.model_dir, cfg.model.cut, cfg.lora.to_split_lora()))
        self.aggregator: Aggregator = server_aggregator(cfg, layout, metrics=self.metrics)
        self.roster = run_roster(cfg) if cfg.aggregation.secure else None
        self.key_digests = cfg.key_digests()
        self.client_state: dict[str, torch.Tensor] = {}
        self.checkpoint_dir = self.run_dir / "checkpoint"
        start = self._resume() if resume else 0
        self.rounds = RoundPolicy(
            self.clients, rounds=cfg.training.rounds, deadline_s=cfg.server.round_deadline_s, start=start
        )
        self.closing: list[str] | None = None  # clients missing from the round being aggregated
        self.done_at = 0.0
        if self.done:  # resumed after the last round's checkpoint: finish what the run promised
            if not self.adapter_path.is_file():
                self.export()
            self.done_at = time.monotonic() + cfg.transport.timeout_s  # time for waiting clients to come back
        self.sessions: dict[bytes, Session] = {}
        self.on_step = on_step or (lambda rnd, n: None)
        self.socket = ServerSocket(
            endpoint or cfg.transport.endpoint, keys_dir=cfg.transport.keys_dir, insecure=insecure
        )
        self.endpoint = self.socket.endpoint
        self.loop = RequestLoop(
            self.socket,
            self._dispatch,
            max_bytes=int(cfg.transport.max_message_mb * 1024 * 1024),
            log=log,
            on_reject=lambda err: self.metrics.write("error", code=err.code.value, detail=err.detail),
            on_ban=self._banned,
            limits=PeerLimits.of(cfg.server.limits),
        )
        self.housekeeping = Housekeeping((self._expire, self._maybe_close_round, self.trunk.tick), metrics=self.metrics)
        self.scheduler = TrunkScheduler(
            self.trunk,
            batch_clients=cfg.server.batch_clients,
            max_batch=cfg.server.max_batch,
            compression=cfg.transport.compression,
            reply=self._reply,
            reject=self.loop.reject,
            metrics=self.metrics,
            on_step=lambda rnd, n: self.on_step(self.rounds.round, n),
        )
        self.metrics.write("start", endpoint=self.endpoint, round=self.round, mode=cfg.server.mode)

    @property
    def adapter_path(self) -> Path:
        """The exported PEFT adapter's weights (present once the last round is exported)."""
        return self.run_dir / "adapter" / "adapter_model.safetensors"

    @property
    def round(self) -> int:
        return self.rounds.round

    @property
    def done(self) -> bool:
        return self.rounds.done

    def _resume(self) -> int:
        """Restore the last checkpoint; returns the round to continue with."""
        ck = load_checkpoint(self.checkpoint_dir)
        if ck is None:
            log.warning("--resume: no checkpoint in %s, starting from round 0", self.checkpoint_dir)
            return 0
        if ck.config_hash != self.config_hash:
            raise ConfigError(f"checkpoint in {self.checkpoint_dir} was written with a different configuration")
        self.trunk.restore(ck.trunk, ck.optimizers)
        self.client_state = ck.clients
        log.info("resumed after round %d", ck.round_completed)
        return ck.round_completed + 1

    # ------------------------------------------------------------------ loop
    def serve(self, *, max_seconds: float | None = None) -> int:
        """Run until all rounds are done and every client has left (or timed out)."""
        try:
            finished = self.loop.run(
                poll_ms=int(self.cfg.transport.heartbeat_s * 1000), tick=self._tick, max_seconds=max_seconds
            )
            if not finished:
                log.error("server ran past %.0f s; stopping", max_seconds)
            return 0 if finished else 1
        finally:
            self.metrics.write("stop", round=self.round)
            self.socket.close()

    def _tick(self) -> bool:
        """Housekeeping after every message or poll timeout; True when the server is finished.

        A fault is logged with its traceback once per episode, then counted (`Housekeeping`)."""
        self.housekeeping.tick()
        everyone_left = not any(s.stage != Stage.DONE for s in self.sessions.values())
        return self.done and everyone_left and time.monotonic() - self.done_at > 1.0

    def _reply(self, sess: Session, frames: list) -> None:
        sess.bytes_out += frames_nbytes(frames)
        self.socket.send(sess.identity, frames)

    def _banned(self, ban: Ban) -> None:
        """A peer over its limits is ignored for a cool-down: its session (and any step it holds) goes."""
        name = self.socket.clients.get(ban.user) if ban.user else None
        self.metrics.write("ban", client=name, reason=ban.reason.value, detail=ban.detail, cooldown_s=ban.cooldown_s)
        for ident, sess in list(self.sessions.items()):
            if ident == ban.identity or (name is not None and sess.name == name):
                self._forget(ident, sess)

    def _dispatch(self, inc: Incoming, msg: Message) -> None:
        if msg.type == MsgType.HELLO:
            self._hello(inc, msg)
            return
        sess = self.sessions.get(inc.identity)
        if sess is None:
            raise WireError(ErrorCode.OUT_OF_ORDER, f"{msg.type.value} before hello: say hello first")
        if msg.header.session != sess.session_id:
            raise WireError(ErrorCode.UNKNOWN_CLIENT, "unknown session id: say hello again")
        sess.last_seen = time.monotonic()
        sess.bytes_in += frames_nbytes(inc.frames)
        sess.check(msg.type)
        {
            MsgType.FORWARD: self._forward,
            MsgType.BACKWARD: self._backward,
            MsgType.UPDATE: self._update,
            MsgType.HEARTBEAT: self._heartbeat,
            MsgType.SECAGG: self._secagg,
            MsgType.BYE: self._bye,
        }[msg.type](sess, msg)

    # ------------------------------------------------------------------ handlers
    def _hello(self, inc: Incoming, msg: Message) -> None:
        meta = msg.header.meta
        cid = meta.get("client_id")
        if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid < len(self.clients):
            raise WireError(ErrorCode.UNKNOWN_CLIENT, f"client_id must be in [0, {len(self.clients)}), got {cid!r}")
        name = client_name(cid)
        if inc.user is not None and self.socket.clients.get(inc.user) != name:
            raise WireError(
                ErrorCode.WRONG_IDENTITY,
                f"this key (fingerprint {key_fingerprint(inc.user)}) belongs to {self.socket.clients.get(inc.user)}, "
                f"not {name}",
            )
        if meta.get("config_hash") != self.config_hash:
            raise WireError(ErrorCode.CONFIG_MISMATCH, config_difference(self.cfg, self.key_digests, meta, name))
        if self.roster is not None and meta.get("roster") != self.roster.digest:
            theirs = meta.get("roster")
            theirs = format_fingerprint(theirs) if isinstance(theirs, str) else short(theirs)
            raise WireError(
                ErrorCode.CONFIG_MISMATCH,
                f"different secure-aggregation roster: the server's has fingerprint {self.roster.fingerprint}, "
                f"{name}'s {theirs} (every party needs the same roster.toml)",
            )
        fp = meta.get("model")
        if fp != self.base_model.fingerprint:
            theirs = short_fingerprint(fp) if isinstance(fp, str) else short(fp)
            raise WireError(
                ErrorCode.CONFIG_MISMATCH,
                f"different base model: the server's is {short_fingerprint(self.base_model.fingerprint)}, "
                f"{name}'s is {theirs} (every party needs a copy of the same weights)",
            )
        n, most = meta.get("n_samples"), self.cfg.server.max_samples
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= most:
            raise WireError(ErrorCode.MALFORMED, f"n_samples must be an integer in [1, {most}], got {short(n)}")
        for ident, old in list(self.sessions.items()):  # a reconnecting client replaces its old session
            if old.name == name:
                self._forget(ident, old)
        self.rounds.joined(name)
        sess = Session(name, cid, inc.identity, secrets.token_hex(8), n)
        self.sessions[inc.identity] = sess
        meta_out = {
            "round": self.round,
            "rounds": self.cfg.training.rounds,
            "done": self.done,
            "hidden": self.hidden,
            "compression": self.cfg.transport.compression,
            "mode": self.cfg.server.mode,
        }
        tensors = self._result_tensors(sess)
        self._reply(sess, encode(Header(MsgType.WELCOME, sess.session_id, self.round, 0, meta_out), tensors))
        self.metrics.write("hello", client=name, round=self.round)
        log.info("%s joined (round %d)", name, self.round)

    def _forward(self, sess: Session, msg: Message) -> None:
        meta = msg.header.meta
        for flag in ("train", "base"):
            if flag in meta and not isinstance(meta[flag], bool):
                raise WireError(ErrorCode.MALFORMED, f"forward: {flag} must be true or false, got {short(meta[flag])}")
        if meta.get("base") is True and meta.get("train", True) is not False:
            raise WireError(ErrorCode.MALFORMED, "forward: a base-model forward (base = true) needs train = false")
        act, mask = check_activations(msg, self.cfg, hidden=self.hidden)  # validated before it is queued
        self.scheduler.forward(PendingForward(sess, msg.header, act, mask))

    def _backward(self, sess: Session, msg: Message) -> None:
        if msg.header.step != sess.pending_step:
            raise WireError(ErrorCode.OUT_OF_ORDER, f"backward for step {msg.header.step}, pending {sess.pending_step}")
        grad = decompress("grad", msg.tensors, gradient_encoding(self.cfg))
        if tuple(grad.shape) != sess.pending_shape:
            raise WireError(
                ErrorCode.BAD_TENSOR, f"grad: expected shape {list(sess.pending_shape)}, got {list(grad.shape)}"
            )
        check_bound("grad", grad, self.cfg.server.max_abs_value)
        self.scheduler.backward(sess, msg.header, grad)

    def _update(self, sess: Session, msg: Message) -> None:
        state = self.aggregator.accept(msg)
        r = msg.header.round
        sess.stage = Stage.AWAIT_ROUND
        if r != self.round or self.done:
            log.warning("%s sent its update for round %d after it closed; skipped", sess.name, r)
            self._send_round_result(sess)
            return
        loss = msg.header.meta.get("loss")
        self.rounds.add(
            sess.name,
            ClientUpdate(sess.client_id, sess.n_samples, state),
            float(loss) if isinstance(loss, int | float) else None,
        )
        self.metrics.write("update", client=sess.name, round=r, loss=loss)

    def _heartbeat(self, sess: Session, msg: Message) -> None:
        self._reply(sess, encode(Header(MsgType.HEARTBEAT, sess.session_id, self.round)))

    def _secagg(self, sess: Session, msg: Message) -> None:
        self.aggregator.receive(sess.name, msg)

    def _bye(self, sess: Session, msg: Message) -> None:
        sess.stage = Stage.DONE
        self.scheduler.drop(sess.identity)
        self.scheduler.release(sess.name, self.round)
        self.rounds.left(sess.name)
        self.metrics.write(
            "bye", client=sess.name, bytes_in=sess.bytes_in, bytes_out=sess.bytes_out, metrics=msg.header.meta
        )
        log.info("%s left", sess.name)

    def _forget(self, ident: bytes, sess: Session) -> None:
        """Remove a session (replaced or silent): its queued forwards and pending step go with it."""
        del self.sessions[ident]
        self.scheduler.drop(ident)
        self.scheduler.release(sess.name, self.round)

    # ------------------------------------------------------------------ rounds
    def _expire(self) -> None:
        for name in self.scheduler.expire(self.cfg.server.step_timeout_s, self.round):
            log.warning("%s held a trunk step longer than %.0f s: step dropped", name, self.cfg.server.step_timeout_s)
            self.metrics.write("step_timeout", client=name, round=self.round)
        now = time.monotonic()
        for ident, sess in list(self.sessions.items()):
            if sess.stage != Stage.DONE and now - sess.last_seen > self.cfg.transport.timeout_s:
                log.warning("%s silent for %.0f s: dropped", sess.name, now - sess.last_seen)
                self.metrics.write("dropped", client=sess.name, round=self.round)
                self._forget(ident, sess)
                self.rounds.left(sess.name)

    def _maybe_close_round(self) -> None:
        if self.done:
            return
        start = self.closing is None
        if start:
            live = {s.name for s in self.sessions.values() if s.stage != Stage.DONE}
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
            self.metrics.write("aggregation_error", round=self.round, reason=short(f"{type(exc).__name__}: {exc}"))
            outcome = RoundOutcome(None)
        if outcome is not None:
            self._finish_round(outcome)

    def _send_aggregation(self, name: str, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        sess = next((s for s in self.sessions.values() if s.name == name and s.stage == Stage.AWAIT_ROUND), None)
        if sess is not None:  # gone: the aggregation protocol counts it as dropped
            self._reply(sess, encode(Header(MsgType.SECAGG, sess.session_id, self.round, 0, meta), tensors))

    def _finish_round(self, outcome: RoundOutcome) -> None:
        r, updates = self.round, self.rounds.updates
        missing, self.closing = sorted(set(self.closing or []) | set(outcome.dropped)), None
        if outcome.state is not None:
            self.client_state = outcome.state
        self.trunk.average({name: u.n_samples for name, u in updates.items()})
        save_checkpoint(
            self.checkpoint_dir,
            ServerCheckpoint(r, self.config_hash, self.trunk.states, self.trunk.optimizer_states(), self.client_state),
        )
        self.metrics.write(
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
            self.done_at = time.monotonic()
            self.export()
        for sess in self.sessions.values():
            if sess.stage == Stage.AWAIT_ROUND:
                self._send_round_result(sess)

    def _send_round_result(self, sess: Session) -> None:
        sess.stage = Stage.READY
        meta = {"round": self.round, "done": self.done}
        tensors = self._result_tensors(sess)
        self._reply(sess, encode(Header(MsgType.ROUND_RESULT, sess.session_id, self.round, 0, meta), tensors))

    def _result_tensors(self, sess: Session) -> dict[str, torch.Tensor]:
        """The client aggregate; once the run is done also the trunk adapter (``trunk/`` keys),
        unless the parties agreed that the server keeps it (``server.share_trunk_adapter``)."""
        if not (self.done and self.cfg.server.share_trunk_adapter):
            return self.client_state
        trunk = {f"{TRUNK_PREFIX}{k}": v.detach().cpu() for k, v in self.trunk.adapter_for(sess.name).items()}
        return {**self.client_state, **trunk}

    def export(self) -> Path:
        out = export_run_adapter(
            self.cfg,
            trunk_state=self.trunk.final_state(),
            client_state=self.client_state,
            model_type=self.trunk.trunk.layout.model_type,
            model_dir=self.model_dir,
        )
        self.metrics.write("export", path=str(out))
        log.info("exported the merged PEFT adapter to %s", out)
        return out
