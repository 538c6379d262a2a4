"""Secure aggregation of client adapters: `crypto.secagg` (SecAgg+) carried in SECAGG messages.

The server learns only the sum of the round's client updates.  FedAvg needs a weighted
mean, so each client sends ``w_k * x_k`` with ``w_k = n_k / sum(n)`` over the round's
participants (sample counts are public: clients state them when they join).  If clients
drop out after their masked input is in, the server divides by the survivors' total
weight, so the result is the weighted mean of exactly the inputs in the sum.

On the wire every SECAGG message carries the protocol stage it belongs to (a
`crypto.secagg.Stage` name) and one uint8 ``payload``; the server's first message also
carries the client's weight.  Clip and bits are not sent: both sides read them from the
run configuration, whose hash the server checked when the client joined.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from crypto.secagg import (
    AggregateResult,
    ProtocolError,
    RoundConfig,
    SecAggAbort,
    SecAggClient,
    SecAggServer,
    Stage,
    check_capacity,
    decode,
    dequantize_sum,
    encode,
    quantize,
)
from splitfed.aggregation.base import ClientUpdate, Outbox, Request, RoundOutcome, State
from splitfed.aggregation.layout import AdapterLayout
from splitfed.config import AggregationSection
from splitfed.wire import ErrorCode, Message, MsgType, WireError, bytes_tensor, tensor_bytes
from splitfed.wire.messages import short
from splitfed.wire.meta import SecAgg, Update

log = logging.getLogger("splitfed.aggregation")

MODULUS_BITS = 32  # masked vectors travel as uint32
_EITHER = frozenset({MsgType.SECAGG, MsgType.ROUND_RESULT})


def wire_stage(name: str) -> Stage:
    """The protocol stage a SECAGG message names (``msg.meta.stage``, checked by the codec against
    `wire.meta.StageName`).  Raises `WireError`."""
    if not isinstance(name, str) or name not in Stage.__members__:
        raise WireError(
            ErrorCode.MALFORMED, f"secagg 'stage': expected one of {list(Stage.__members__)}, got {short(name)}"
        )
    return Stage[name]


class SecureAggregator:
    """Server side (an `Aggregator`): one SecAgg+ round per training round."""

    def __init__(
        self,
        params: AggregationSection,
        layout: AdapterLayout,
        *,
        identity_keys: Mapping[int, bytes],
        n_clients: int,
        metrics,
    ):
        check_capacity(n_clients, bits=params.bits, modulus_bits=MODULUS_BITS)
        params.threshold_for(n_clients)
        self.params, self.layout, self.identity_keys, self.metrics = params, layout, identity_keys, metrics
        self._reset()

    def _reset(self) -> None:
        self.server: SecAggServer | None = None
        self.rnd = -1
        self.ids: dict[str, int] = {}  # participant name -> client id
        self.weights: dict[int, float] = {}
        self.send: Outbox | None = None
        self.stage_started = 0.0
        self._outcome: RoundOutcome | None = None

    def accept(self, msg: Message) -> State:
        if msg.tensors or not msg.meta.secure:
            raise WireError(ErrorCode.OUT_OF_ORDER, "this run uses secure aggregation: send no plaintext adapter")
        if self.server is not None:
            raise WireError(ErrorCode.OUT_OF_ORDER, f"round {self.rnd}'s secure aggregation has already started")
        return {}

    def start(self, rnd: int, updates: Mapping[str, ClientUpdate], send: Outbox) -> None:
        self.rnd, self.send = rnd, send
        self.ids = {name: u.client_id for name, u in updates.items()}
        counts = {u.client_id: u.n_samples for u in updates.values()}
        total = sum(counts.values())
        try:
            check_capacity(len(counts), bits=self.params.bits, modulus_bits=MODULUS_BITS)
            config = RoundConfig.create(
                sorted(counts),
                threshold=self.params.threshold_for(len(counts)),
                vector_length=self.layout.size,
                modulus_bits=MODULUS_BITS,
            )
            self.server = SecAggServer(config, identity_keys={c: self.identity_keys[c] for c in counts})
        except ValueError as exc:  # too few clients for a strict majority, or capacity
            self._abort(f"cannot start: {exc}", str(exc))
            return
        self.weights = {cid: n / total for cid, n in counts.items()}
        self.stage_started = time.monotonic()
        self.metrics.write("secagg_start", round=rnd, clients=sorted(counts))
        payload = encode(config)
        for name, cid in self.ids.items():
            self._send(name, payload, weight=self.weights[cid])

    def _send(self, name: str, payload: bytes, weight: float | None = None) -> None:
        self.send(name, SecAgg(self.server.stage.name, weight), {"payload": bytes_tensor(payload)})

    def receive(self, client: str, msg: Message) -> None:
        if self.server is None:
            raise WireError(ErrorCode.OUT_OF_ORDER, "no secure aggregation in progress")
        if client not in self.ids:
            raise WireError(ErrorCode.OUT_OF_ORDER, f"{client} is not a participant of round {self.rnd}")
        stage = wire_stage(msg.meta.stage)
        if stage is not self.server.stage:
            raise WireError(
                ErrorCode.OUT_OF_ORDER, f"secagg: expected stage {self.server.stage.name}, got {stage.name}"
            )
        payload = tensor_bytes(msg.tensors, "payload", only=True)
        cid = self.ids[client]
        try:
            message = decode(payload)
            if getattr(message, "sender", cid) != cid:
                raise ProtocolError(f"message from client {cid} claims sender {message.sender}")
            self.server.receive(message)
        except ProtocolError as exc:
            raise WireError(ErrorCode.MALFORMED, f"secure aggregation: {exc}") from None

    def poll(self, alive: set[str]) -> RoundOutcome | None:
        if self._outcome is not None or self.server is None:
            out = self._outcome
            self._reset()
            return out
        alive_ids = {self.ids[n] for n in alive if n in self.ids}
        waiting = (set(self.server.expected) - set(self.server.received)) & alive_ids
        if waiting and time.monotonic() - self.stage_started <= self.params.stage_timeout_s:
            return None
        self.stage_started = time.monotonic()
        closed = self.server.stage
        try:
            if closed is Stage.UNMASK:
                return self._finish(self.server.finish())
            nxt = self.server.finish_stage()
        except SecAggAbort as exc:
            self._abort(f"aborted: {exc}", str(exc))
            out = self._outcome
            self._reset()
            return out
        self.metrics.write("secagg_stage", round=self.rnd, closed=closed.name.lower(), next=sorted(nxt))
        names = {cid: name for name, cid in self.ids.items()}
        for cid, message in nxt.items():
            self._send(names[cid], encode(message))
        return None

    def _finish(self, result: AggregateResult) -> RoundOutcome:
        survivors = list(result.survivors)
        total = dequantize_sum(
            result.sum_mod, len(survivors), clip=self.params.clip, bits=self.params.bits, modulus_bits=MODULUS_BITS
        )
        state = self.layout.unflatten(total / sum(self.weights[c] for c in survivors))
        self.metrics.write("secagg_done", round=self.rnd, survivors=sorted(survivors), dropped=sorted(result.dropped))
        names = {cid: name for name, cid in self.ids.items()}
        self._reset()
        return RoundOutcome(state, dropped=tuple(names.get(c, f"client-{c}") for c in result.dropped))

    def _abort(self, what: str, reason: str) -> None:
        log.error("round %d: secure aggregation %s; keeping the previous aggregate", self.rnd, what)
        self.metrics.write("secagg_abort", round=self.rnd, reason=reason)
        self.server, self._outcome = None, RoundOutcome(None)


class SecureUpload:
    """Client side (an `Uploader`): announce the update, then answer the server's SecAgg+ stages."""

    def __init__(
        self,
        client_id: int,
        params: AggregationSection,
        *,
        signing_key: bytes,
        identity_keys: Mapping[int, bytes],
        metrics=None,
        rng: np.random.Generator | None = None,
        randbytes=os.urandom,
    ):
        self.client_id, self.params, self.metrics = client_id, params, metrics
        self.signing_key, self.identity_keys = signing_key, dict(identity_keys)
        self.rng, self.randbytes = rng or np.random.default_rng(), randbytes
        self.machine: SecAggClient | None = None

    def upload(self, request: Request, rnd: int, update: State, loss: float) -> Message:
        vector = AdapterLayout.of(update).flatten(update)
        self.machine = None
        msg = request(MsgType.UPDATE, Update(loss=loss, secure=True), None, _EITHER)
        while msg.type == MsgType.SECAGG:
            stage = wire_stage(msg.meta.stage)
            payload = tensor_bytes(msg.tensors, "payload")
            if self.machine is None:
                reply = self.begin(rnd, stage, msg.meta.weight, payload, vector)
            else:
                reply = self.answer(stage, payload)
            msg = request(MsgType.SECAGG, SecAgg(stage.name), {"payload": bytes_tensor(reply)}, _EITHER)
        self._record("secagg", round=rnd, stage=None if self.machine is None else self.machine.stage.name)
        return msg

    def begin(self, rnd: int, stage: Stage, weight: float | None, payload: bytes, vector: np.ndarray) -> bytes:
        """The server's round configuration and this client's weight -> the key advertisement."""
        config = decode(payload)
        if stage is not Stage.ADVERTISE_KEYS or not isinstance(config, RoundConfig):
            raise ProtocolError(f"expected the round configuration first, got {type(config).__name__} ({stage.name})")
        if config.vector_length != vector.size:
            raise ProtocolError(f"round expects {config.vector_length} values, this client has {vector.size}")
        if not isinstance(weight, float) or not 0.0 < weight <= 1.0:  # the codec checked [0, 1] or absent
            raise ProtocolError(f"weight: expected a number in (0, 1], got {weight!r}")
        ints, report = quantize(
            weight * vector, clip=self.params.clip, bits=self.params.bits, modulus_bits=MODULUS_BITS, rng=self.rng
        )
        if report.clipped:
            log.warning(
                "client-%d: %d of %d adapter values were outside [-clip, clip] and clipped",
                self.client_id,
                report.clipped,
                report.total,
            )
        self._record("secagg_quantized", round=rnd, clipped=report.clipped, total=report.total)
        self.machine = SecAggClient(
            config,
            self.client_id,
            signing_key=self.signing_key,
            identity_keys=self.identity_keys,
            vector=ints,
            randbytes=self.randbytes,
        )
        return encode(self.machine.advertise())

    def _record(self, event: str, **fields: Any) -> None:
        if self.metrics is not None:
            self.metrics.write(event, **fields)

    def answer(self, stage: Stage, payload: bytes) -> bytes:
        """The reply to the server's message for `stage`."""
        if stage is not self.machine.stage:
            raise ProtocolError(f"server sent stage {stage.name}, this client is in {self.machine.stage.name}")
        return encode(self.machine.handle(decode(payload)))
