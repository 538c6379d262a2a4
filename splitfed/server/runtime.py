"""The server process: holds the trunk, serves clients over ZeroMQ, closes rounds.

One event loop: receive a message, validate it, act, reply.  A bad message gets an ERROR
reply naming the problem and changes nothing; a client that goes silent for
``transport.timeout_s`` is dropped (its pending step discarded) so it never blocks the
others; a round closes when every connected client has sent its update or at the round
deadline.  The server checkpoints atomically after every round and resumes from there.
"""

from __future__ import annotations

import collections
import logging
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from splitfed.aggregation import Aggregator, FedAvg
from splitfed.config import RunConfig
from splitfed.metrics import MetricsWriter
from splitfed.server.checkpoint import ServerCheckpoint, load_checkpoint, save_checkpoint
from splitfed.server.session import Session, Stage
from splitfed.server.trunk import GROUP, TrunkService
from splitfed.transport import Incoming, ServerSocket, client_name
from splitfed.wire import ErrorCode, Header, Message, MsgType, WireError, compress, decode, decompress, encode
from splitfed.wire.codec import error_frames

log = logging.getLogger("splitfed.server")


@dataclass(frozen=True)
class ClientAdapterSpec:
    """Names and shapes the server expects in a client UPDATE (from a meta-device skeleton)."""

    shapes: dict[str, tuple[int, ...]]

    def check(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shapes) - set(tensors))
        extra = sorted(set(tensors) - set(self.shapes))
        if missing or extra:
            raise WireError(ErrorCode.BAD_TENSOR, f"adapter update: missing {missing[:3]}, unexpected {extra[:3]}")
        for k, t in tensors.items():
            if tuple(t.shape) != self.shapes[k] or t.dtype != torch.float32:
                raise WireError(
                    ErrorCode.BAD_TENSOR,
                    f"adapter update {k}: expected float32{list(self.shapes[k])}, got {t.dtype}{list(t.shape)}",
                )


def client_adapter_spec(cfg: RunConfig, checkpoint: Path) -> ClientAdapterSpec:
    """Shapes of the client-side LoRA tensors, computed without loading any client weight."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from splitfed.models import add_lora, detect_layout, get_adapter_state, validate_cut
    from splitfed.models.split import build_parts

    with init_empty_weights(include_buffers=False):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(checkpoint))
    layout = detect_layout(skeleton)
    cut = validate_cut(cfg.model.cut, layout.num_layers)
    parts = build_parts(skeleton, layout, cut, roles=("bottom", "top"))
    lora = cfg.lora.to_split_lora()
    shapes = {}
    for role, part in parts.items():
        spec = lora.for_role(role)
        if spec is not None and add_lora(part, spec):
            shapes.update({f"{role}/{k}": tuple(v.shape) for k, v in get_adapter_state(part).items()})
    return ClientAdapterSpec(shapes)


class Server:
    def __init__(
        self,
        cfg: RunConfig,
        *,
        resume: bool = False,
        insecure: bool = False,
        endpoint: str | None = None,
        on_step=None,
    ):
        """`on_step(round, n_steps)` is called after every finished trunk step (for progress bars)."""
        from splitfed.models import add_lora, load_part, prepare

        if cfg.server.batch_clients and cfg.server.mode != "shared":
            raise ValueError(
                "server.batch_clients needs server.mode = 'shared' (per-client adapters cannot share a batch)"
            )
        self.cfg = cfg
        self.on_step = on_step or (lambda rnd, n: None)
        self.run_dir = Path(cfg.run.dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = MetricsWriter(self.run_dir / "metrics" / "server.jsonl")
        self.clients = [client_name(k) for k in range(cfg.data.clients)]
        torch.manual_seed(cfg.run.seed)
        ckpt_dir = prepare(cfg.model.name, cache_dir=cfg.model.cache_dir or None)
        self.model_dir = ckpt_dir
        self.trunk_part = load_part(ckpt_dir, "trunk", tuple(cfg.model.cut))
        self.hidden = int(self.trunk_part.config.hidden_size)
        spec = cfg.lora.to_split_lora().trunk
        if spec is not None:
            add_lora(self.trunk_part, spec, seed=cfg.run.seed + 1)  # same seeds as apply_lora in-process
        from splitfed.training import OptimConfig

        optim = OptimConfig(lr=cfg.training.lr, weight_decay=cfg.training.weight_decay)
        self.trunk = TrunkService(self.trunk_part, mode=cfg.server.mode, clients=self.clients, optim=optim)
        self.client_spec = client_adapter_spec(cfg, ckpt_dir)
        self.secure, self.secure_round, self.secure_missing = None, None, []
        if cfg.aggregation.secure:
            from crypto.secagg import check_capacity
            from splitfed.aggregation.secure import SecureParams
            from splitfed.transport import identity_keys

            a = cfg.aggregation
            self.secure = SecureParams(a.clip, a.bits, a.threshold, a.stage_timeout_s)
            check_capacity(cfg.data.clients, bits=a.bits, modulus_bits=self.secure.modulus_bits)
            self.secure.threshold_for(cfg.data.clients)
            self.identity_keys = identity_keys(cfg.transport.keys_dir)
            self.secure_length = sum(math.prod(s) for s in self.client_spec.shapes.values())
        self.aggregator: Aggregator = FedAvg()
        self.client_state: dict[str, torch.Tensor] = {}
        self.round = 0
        self.config_hash = cfg.hash()
        self.checkpoint_dir = self.run_dir / "checkpoint"
        if resume:
            ck = load_checkpoint(self.checkpoint_dir)
            if ck is None:
                log.warning("--resume: no checkpoint in %s, starting from round 0", self.checkpoint_dir)
            else:
                if ck.config_hash != self.config_hash:
                    raise ValueError(f"checkpoint in {self.checkpoint_dir} was written with a different configuration")
                self.trunk.restore(ck.trunk, ck.optimizers)
                self.client_state = ck.clients
                self.round = ck.round_completed + 1
                log.info("resumed after round %d", ck.round_completed)
        self.done = self.round >= cfg.training.rounds
        self.sessions: dict[bytes, Session] = {}
        self.update_losses: dict[str, float | None] = {}
        self.gone: set[str] = set()  # said bye or were dropped: rounds do not wait for them
        self.queue: collections.deque[tuple[bytes, Message]] = collections.deque()
        self.updates: dict[str, tuple[dict[str, torch.Tensor], int]] = {}
        self.round_started = time.monotonic()
        self.max_bytes = int(cfg.transport.max_message_mb * 1024 * 1024)
        self.compression = cfg.transport.compression
        self.socket = ServerSocket(
            endpoint or cfg.transport.endpoint, keys_dir=cfg.transport.keys_dir, insecure=insecure
        )
        self.endpoint = self.socket.endpoint
        self.metrics.write("start", endpoint=self.endpoint, round=self.round, mode=cfg.server.mode)

    # ------------------------------------------------------------------ loop
    def serve(self, *, max_seconds: float | None = None) -> int:
        """Run until all rounds are done and every client has left (or timed out)."""
        t0 = time.monotonic()
        hb_ms = int(self.cfg.transport.heartbeat_s * 1000)
        try:
            while True:
                msg = self.socket.recv(hb_ms)
                if msg is not None:
                    self._handle(msg)
                self._expire()
                self._maybe_close_round()
                everyone_left = not any(s.stage != Stage.DONE for s in self.sessions.values())
                if self.done and everyone_left and time.monotonic() - self._done_at > 1.0:
                    break
                if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                    log.error("server ran past %.0f s; stopping", max_seconds)
                    return 1
            return 0
        finally:
            self.metrics.write("stop", round=self.round)
            self.socket.close()

    _done_at = 0.0

    def _reply(self, ident: bytes, frames: list) -> None:
        sess = self.sessions.get(ident)
        if sess is not None:
            sess.bytes_out += sum(len(memoryview(f).cast("B")) if not isinstance(f, bytes) else len(f) for f in frames)
        self.socket.send(ident, frames)

    def _error(self, ident: bytes, err: WireError) -> None:
        log.warning("rejected message: %s", err)
        self.metrics.write("error", code=err.code.value, detail=err.detail)
        self.socket.send(ident, error_frames(err.code, err.detail))

    def _handle(self, inc: Incoming) -> None:
        try:
            msg = decode(inc.frames, max_bytes=self.max_bytes)
            sess = self.sessions.get(inc.identity)
            if msg.type == MsgType.HELLO:
                self._hello(inc, msg)
                return
            if sess is None:
                raise WireError(ErrorCode.OUT_OF_ORDER, f"{msg.type.value} before hello: say hello first")
            if msg.header.session != sess.session_id:
                raise WireError(ErrorCode.UNKNOWN_CLIENT, "unknown session id: say hello again")
            sess.last_seen = time.monotonic()
            sess.bytes_in += sum(len(f.buffer) if hasattr(f, "buffer") else len(f) for f in inc.frames)
            sess.check(msg.type)
            {
                MsgType.FORWARD: self._forward,
                MsgType.BACKWARD: self._backward,
                MsgType.UPDATE: self._update,
                MsgType.HEARTBEAT: self._heartbeat,
                MsgType.SECAGG: self._secagg,
                MsgType.BYE: self._bye,
            }[msg.type](sess, msg)
        except WireError as err:
            self._error(inc.identity, err)
        except Exception as exc:  # a bug or a resource problem must not take the server down
            log.exception("error while handling a message")
            self._error(inc.identity, WireError(ErrorCode.SERVER, f"{type(exc).__name__}: {exc}"))

    # ------------------------------------------------------------------ handlers
    def _hello(self, inc: Incoming, msg: Message) -> None:
        meta = msg.header.meta
        cid = meta.get("client_id")
        if not isinstance(cid, int) or isinstance(cid, bool) or not 0 <= cid < len(self.clients):
            raise WireError(ErrorCode.UNKNOWN_CLIENT, f"client_id must be in [0, {len(self.clients)}), got {cid!r}")
        name = client_name(cid)
        if inc.user is not None and self.socket.clients.get(inc.user) != name:
            raise WireError(
                ErrorCode.UNKNOWN_CLIENT, f"this key belongs to {self.socket.clients.get(inc.user)}, not {name}"
            )
        if meta.get("config_hash") != self.config_hash:
            raise WireError(ErrorCode.CONFIG_MISMATCH, "client and server were started with different configurations")
        n = meta.get("n_samples")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise WireError(ErrorCode.MALFORMED, f"n_samples must be a positive integer, got {n!r}")
        for ident, old in list(self.sessions.items()):  # a reconnecting client replaces its old session
            if old.name == name:
                self._release(name)
                self._unqueue(ident)
                del self.sessions[ident]
        self.gone.discard(name)
        sess = Session(name, cid, inc.identity, secrets.token_hex(8), n)
        self.sessions[inc.identity] = sess
        meta_out = {
            "round": self.round,
            "rounds": self.cfg.training.rounds,
            "done": self.done,
            "hidden": self.hidden,
            "compression": self.compression,
            "mode": self.cfg.server.mode,
        }
        self._reply(
            inc.identity, encode(Header(MsgType.WELCOME, sess.session_id, self.round, 0, meta_out), self.client_state)
        )
        self.metrics.write("hello", client=name, round=self.round)
        log.info("%s joined (round %d)", name, self.round)

    def _check_activations(self, msg: Message) -> tuple[torch.Tensor, torch.Tensor]:
        mask = msg.tensors.get("mask")
        if mask is None or mask.dtype != torch.uint8 or mask.dim() != 2:
            raise WireError(ErrorCode.BAD_TENSOR, "forward needs 'mask': uint8 (batch, tokens)")
        b, t = mask.shape
        max_b, max_t = self.cfg.server.max_batch, self.cfg.server.max_seq
        if not (1 <= b <= max_b and 1 <= t <= max_t):
            raise WireError(ErrorCode.BAD_TENSOR, f"batch x tokens {b} x {t} outside limits 1..{max_b} x 1..{max_t}")
        if bool((mask > 1).any()) or bool((mask.sum(-1) == 0).any()):
            raise WireError(ErrorCode.BAD_TENSOR, "mask must be 0/1 with at least one token per row")
        act = decompress("act", msg.tensors, self.compression)
        if tuple(act.shape) != (b, t, self.hidden):
            raise WireError(ErrorCode.BAD_TENSOR, f"act: expected shape {[b, t, self.hidden]}, got {list(act.shape)}")
        return act, mask.long()

    def _forward(self, sess: Session, msg: Message) -> None:
        act, mask = self._check_activations(msg)  # validate before queueing
        if self.trunk.busy is not None:
            self.queue.append((sess.identity, msg))
            return
        self._run_forward(sess, msg, act, mask)

    def _run_forward(self, sess: Session, msg: Message, act: torch.Tensor, mask: torch.Tensor) -> None:
        train = bool(msg.header.meta.get("train", True))
        t = time.perf_counter()
        out = self.trunk.forward(sess.name, act, mask, train=train)
        compute = time.perf_counter() - t
        if train:
            sess.stage, sess.pending_shape, sess.pending_step = Stage.AWAIT_BACKWARD, tuple(out.shape), msg.header.step
        h = msg.header
        self._reply(
            sess.identity,
            encode(
                Header(MsgType.ACTIVATIONS, sess.session_id, h.round, h.step), compress("act", out, self.compression)
            ),
        )
        self.metrics.write("forward", client=sess.name, round=h.round, step=h.step, train=train, compute_s=compute)

    def _backward(self, sess: Session, msg: Message) -> None:
        if msg.header.step != sess.pending_step:
            raise WireError(ErrorCode.OUT_OF_ORDER, f"backward for step {msg.header.step}, pending {sess.pending_step}")
        grad = decompress("grad", msg.tensors, self.compression)
        if tuple(grad.shape) != sess.pending_shape:
            raise WireError(
                ErrorCode.BAD_TENSOR, f"grad: expected shape {list(sess.pending_shape)}, got {list(grad.shape)}"
            )
        if self.trunk.busy == GROUP:
            if sess.name in self.trunk.group_grads:
                raise WireError(
                    ErrorCode.OUT_OF_ORDER, f"{sess.name}: backward for step {sess.pending_step} sent twice"
                )
            t = time.perf_counter()
            results = self.trunk.backward_group(sess.name, grad)
            if results is not None:
                self.on_step(self.round, len(results))
                self.metrics.write(
                    "backward", clients=sorted(results), round=msg.header.round, compute_s=time.perf_counter() - t
                )
                self._send_gradients(results)
            return
        t = time.perf_counter()
        grad_in = self.trunk.backward(sess.name, grad)
        compute = time.perf_counter() - t
        sess.stage, sess.pending_shape = Stage.READY, None
        h = msg.header
        self._reply(
            sess.identity,
            encode(
                Header(MsgType.GRADIENT, sess.session_id, h.round, h.step), compress("grad", grad_in, self.compression)
            ),
        )
        self.metrics.write("backward", client=sess.name, round=h.round, step=h.step, compute_s=compute)
        self.on_step(self.round, 1)
        self._drain()

    def _send_gradients(self, results: dict[str, torch.Tensor]) -> None:
        """Return a finished batch's activation gradients to its members."""
        by_name = {s.name: s for s in self.sessions.values()}
        for name, grad_in in results.items():
            sess = by_name.get(name)
            if sess is None or sess.stage != Stage.AWAIT_BACKWARD:
                continue
            sess.stage, sess.pending_shape = Stage.READY, None
            header = Header(MsgType.GRADIENT, sess.session_id, self.round, sess.pending_step)
            self._reply(sess.identity, encode(header, compress("grad", grad_in, self.compression)))
        self._drain()

    def _release(self, name: str) -> None:
        """A client left: drop its pending step; finish a batch it was part of."""
        results = self.trunk.abort(name)
        if results:
            results.pop(name, None)
            self._send_gradients(results)

    def _take_batch(self) -> list[tuple[Session, Message, torch.Tensor, torch.Tensor]]:
        """Queued training forwards of distinct clients, up to server.max_batch rows in all."""
        taken, rows, keep = [], 0, collections.deque()
        while self.queue:
            ident, msg = self.queue.popleft()
            sess = self.sessions.get(ident)
            if sess is None:
                continue
            train = bool(msg.header.meta.get("train", True))
            act, mask = self._check_activations(msg)
            fits = rows + mask.shape[0] <= self.cfg.server.max_batch
            if train and fits and all(s is not sess for s, *_ in taken):
                taken.append((sess, msg, act, mask))
                rows += mask.shape[0]
            else:
                keep.append((ident, msg))
        self.queue = keep
        return taken

    def _run_batch(self, batch) -> None:
        t = time.perf_counter()
        outs = self.trunk.forward_group([(s.name, act, mask) for s, _, act, mask in batch])
        compute = time.perf_counter() - t
        for sess, msg, _, _ in batch:
            out = outs[sess.name]
            sess.stage, sess.pending_shape, sess.pending_step = Stage.AWAIT_BACKWARD, tuple(out.shape), msg.header.step
            h = msg.header
            self._reply(
                sess.identity,
                encode(
                    Header(MsgType.ACTIVATIONS, sess.session_id, h.round, h.step),
                    compress("act", out, self.compression),
                ),
            )
        self.metrics.write(
            "forward",
            clients=[s.name for s, *_ in batch],
            round=self.round,
            train=True,
            compute_s=compute,
            batched=len(batch),
        )

    def _drain(self) -> None:
        if self.cfg.server.batch_clients and self.trunk.busy is None and len(self.queue) > 1:
            try:
                batch = self._take_batch()
            except WireError as err:  # cannot happen: queued messages were validated on arrival
                log.error("queued message no longer valid: %s", err)
                batch = []
            if len(batch) > 1:
                self._run_batch(batch)
            elif batch:
                sess, msg, act, mask = batch[0]
                self.queue.appendleft((sess.identity, msg))
        while self.queue and self.trunk.busy is None:
            ident, msg = self.queue.popleft()
            sess = self.sessions.get(ident)
            if sess is None:
                continue
            try:
                act, mask = self._check_activations(msg)
                self._run_forward(sess, msg, act, mask)
            except Exception as exc:
                log.exception("queued forward failed")
                self._error(ident, WireError(ErrorCode.SERVER, f"{type(exc).__name__}: {exc}"))

    def _unqueue(self, ident: bytes) -> None:
        self.queue = collections.deque((i, m) for i, m in self.queue if i != ident)

    def _update(self, sess: Session, msg: Message) -> None:
        if self.secure is None:
            self.client_spec.check(msg.tensors)
        elif msg.tensors or msg.header.meta.get("secure") is not True:
            raise WireError(ErrorCode.OUT_OF_ORDER, "this run uses secure aggregation: send no plaintext adapter")
        elif self.secure_round is not None:
            raise WireError(ErrorCode.OUT_OF_ORDER, f"round {self.round}'s secure aggregation has already started")
        r = msg.header.round
        sess.stage = Stage.AWAIT_ROUND
        if r != self.round or self.done:
            log.warning("%s sent its update for round %d after it closed; skipped", sess.name, r)
            self._send_round_result(sess)
            return
        self.updates[sess.name] = (dict(msg.tensors), sess.n_samples)
        loss = msg.header.meta.get("loss")
        self.update_losses[sess.name] = float(loss) if isinstance(loss, int | float) else None
        self.metrics.write("update", client=sess.name, round=r, loss=msg.header.meta.get("loss"))

    def _heartbeat(self, sess: Session, msg: Message) -> None:
        self._reply(sess.identity, encode(Header(MsgType.HEARTBEAT, sess.session_id, self.round)))

    def _bye(self, sess: Session, msg: Message) -> None:
        self._release(sess.name)
        sess.stage = Stage.DONE
        self.gone.add(sess.name)
        self.metrics.write(
            "bye", client=sess.name, bytes_in=sess.bytes_in, bytes_out=sess.bytes_out, metrics=msg.header.meta
        )
        log.info("%s left", sess.name)

    # ------------------------------------------------------------------ rounds
    def _expire(self) -> None:
        now = time.monotonic()
        for ident, sess in list(self.sessions.items()):
            if sess.stage != Stage.DONE and now - sess.last_seen > self.cfg.transport.timeout_s:
                log.warning("%s silent for %.0f s: dropped", sess.name, now - sess.last_seen)
                self.metrics.write("dropped", client=sess.name, round=self.round)
                self._release(sess.name)
                self._unqueue(ident)
                del self.sessions[ident]
                self.gone.add(sess.name)
                self._drain()

    def _maybe_close_round(self) -> None:
        if self.done:
            return
        if self.secure_round is not None:
            self._secure_tick()
            return
        live = {s.name for s in self.sessions.values() if s.stage != Stage.DONE}
        expected = set(self.clients)
        waiting_for = (expected & live) - set(self.updates)
        never_joined = expected - live - set(self.updates) - self.gone
        late = time.monotonic() - self.round_started > self.cfg.server.round_deadline_s
        if not self.updates:
            if late:
                self.round_started = time.monotonic()
                log.warning("round %d: no update before the deadline; waiting again", self.round)
            return
        if not late and (waiting_for or never_joined):
            return
        missing = sorted(expected - set(self.updates))
        if missing:
            log.warning("round %d closes without %s", self.round, ", ".join(missing))
        self._close_round(missing)

    def _close_round(self, missing: list[str]) -> None:
        if self.secure is not None:
            self._start_secure_round(missing)
            return
        self.client_state = self.aggregator.aggregate(self.updates)
        self._finish_round(missing)

    # ------------------------------------------------------------------ secure aggregation
    def _start_secure_round(self, missing: list[str]) -> None:
        from splitfed.aggregation.secure import SecureRoundServer

        by_name = {s.name: s for s in self.sessions.values()}
        participants = {by_name[n].client_id: cnt for n, (_, cnt) in self.updates.items() if n in by_name}
        self.secure_missing = missing
        try:
            self.secure_round = SecureRoundServer(
                participants, vector_length=self.secure_length, params=self.secure, identity_keys=self.identity_keys
            )
        except ValueError as exc:  # too few clients for a strict majority, or capacity
            log.error("round %d: secure aggregation cannot start: %s; keeping the previous aggregate", self.round, exc)
            self.metrics.write("secagg_abort", round=self.round, reason=str(exc))
            self._finish_round(missing, aggregated=False)
            return
        self.metrics.write("secagg_start", round=self.round, clients=sorted(participants))
        for cid, (meta, payload) in self.secure_round.start().items():
            self._send_secagg(cid, payload, {"stage": "config", **meta})

    def _send_secagg(self, client_id: int, payload: bytes, meta: dict) -> None:
        sess = next(
            (s for s in self.sessions.values() if s.client_id == client_id and s.stage == Stage.AWAIT_ROUND), None
        )
        if sess is None:
            return  # gone: the protocol counts it as dropped
        frames = encode(
            Header(MsgType.SECAGG, sess.session_id, self.round, 0, meta),
            {"payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)},
        )
        self._reply(sess.identity, frames)

    def _secagg(self, sess: Session, msg: Message) -> None:
        from crypto.secagg import ProtocolError

        if self.secure_round is None:
            raise WireError(ErrorCode.OUT_OF_ORDER, "no secure aggregation in progress")
        payload = msg.tensors.get("payload")
        if payload is None or payload.dtype != torch.uint8 or payload.dim() != 1 or len(msg.tensors) != 1:
            raise WireError(ErrorCode.BAD_TENSOR, "secagg message needs exactly one 1-D uint8 tensor 'payload'")
        try:
            self.secure_round.receive(sess.client_id, payload.numpy().tobytes())
        except ProtocolError as exc:
            raise WireError(ErrorCode.MALFORMED, f"secure aggregation: {exc}") from None

    def _secure_tick(self) -> None:
        from crypto.secagg import AggregateResult, SecAggAbort
        from splitfed.aggregation.secure import unflatten

        alive = {s.client_id for s in self.sessions.values() if s.stage == Stage.AWAIT_ROUND}
        stage = self.secure_round.stage.name.lower()
        try:
            out = self.secure_round.poll(alive)
        except SecAggAbort as exc:
            log.error("round %d: secure aggregation aborted: %s; keeping the previous aggregate", self.round, exc)
            self.metrics.write("secagg_abort", round=self.round, reason=str(exc))
            self._finish_round(self.secure_missing, aggregated=False)
            return
        if out is None:
            return
        if isinstance(out, AggregateResult):
            keys = sorted(self.client_spec.shapes)
            self.client_state = unflatten(self.secure_round.average(out), self.client_spec.shapes, keys)
            names = {s.client_id: s.name for s in self.sessions.values()}
            self.metrics.write(
                "secagg_done", round=self.round, survivors=sorted(out.survivors), dropped=sorted(out.dropped)
            )
            dropped = [names.get(c, f"client-{c}") for c in out.dropped]
            self._finish_round(sorted(set(self.secure_missing) | set(dropped)))
            return
        self.metrics.write("secagg_stage", round=self.round, closed=stage, next=sorted(out))
        for cid, payload in out.items():
            self._send_secagg(cid, payload, {"stage": self.secure_round.stage.name.lower()})

    def _finish_round(self, missing: list[str], *, aggregated: bool = True) -> None:
        r = self.round
        weights = {name: n for name, (_, n) in self.updates.items()}
        self.secure_round = None
        self.trunk.average(weights)
        save_checkpoint(
            self.checkpoint_dir,
            ServerCheckpoint(r, self.config_hash, self.trunk.states, self.trunk.optimizer_states(), self.client_state),
        )
        self.metrics.write(
            "round",
            round=r,
            participants=sorted(self.updates),
            missing=missing,
            losses=dict(self.update_losses),
            aggregated=aggregated,
        )
        log.info("round %d closed with %d client(s)", r, len(self.updates))
        self.updates, self.update_losses = {}, {}
        self.round = r + 1
        self.round_started = time.monotonic()
        if self.round >= self.cfg.training.rounds:
            self.done = True
            self._done_at = time.monotonic()
            self.export()
        for sess in self.sessions.values():
            if sess.stage == Stage.AWAIT_ROUND:
                self._send_round_result(sess)

    def _send_round_result(self, sess: Session) -> None:
        sess.stage = Stage.READY
        meta = {"round": self.round, "done": self.done}
        self._reply(
            sess.identity, encode(Header(MsgType.ROUND_RESULT, sess.session_id, self.round, 0, meta), self.client_state)
        )

    def export(self) -> Path:
        from splitfed.models import PartAdapter, export_adapter

        lora = self.cfg.lora.to_split_lora()
        parts = [PartAdapter(lora.trunk, self.trunk.final_state()) if lora.trunk else None]
        for role in ("bottom", "top"):
            state = {k.split("/", 1)[1]: v for k, v in self.client_state.items() if k.startswith(role + "/")}
            spec = lora.for_role(role)
            if spec is not None and state:
                parts.append(PartAdapter(spec, state))
        out = export_adapter(
            self.run_dir / "adapter",
            parts,
            model_type=self.trunk_part.layout.model_type,
            base_model_name_or_path=str(self.model_dir),
            metadata={"rounds": self.cfg.training.rounds, "cut": list(self.cfg.model.cut)},
        )
        self.metrics.write("export", path=str(out))
        log.info("exported the merged PEFT adapter to %s", out)
        return out
