"""Secure aggregation of client adapters: `crypto.secagg` (SecAgg+) driven over the run's transport.

The server learns only the sum of the round's client updates.  FedAvg needs a weighted
mean, so each client sends ``w_k * x_k`` with ``w_k = n_k / sum(n)`` over the round's
participants (sample counts are public: clients state them when they join).  If clients
drop out after their masked input is in, the server divides by the survivors' total
weight, so the result is the weighted mean of exactly the inputs in the sum.

Both sides are transport-agnostic here: they take and return protocol bytes; the server
and client runtimes carry them in ``MsgType.SECAGG`` messages.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from crypto.secagg import (
    QuantizeReport,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    Stage,
    check_capacity,
    decode,
    dequantize_sum,
    encode,
    quantize,
)


def flatten(state: Mapping[str, torch.Tensor], keys: list[str]) -> np.ndarray:
    """Adapter tensors, in `keys` order, as one float64 vector."""
    return np.concatenate([state[k].detach().reshape(-1).double().numpy() for k in keys])


def unflatten(vector: np.ndarray, shapes: Mapping[str, tuple[int, ...]], keys: list[str]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k in keys:
        n = int(np.prod(shapes[k]))
        out[k] = torch.from_numpy(np.ascontiguousarray(vector[i : i + n])).float().reshape(shapes[k])
        i += n
    if i != vector.size:
        raise ValueError(f"vector has {vector.size} values, the adapter needs {i}")
    return out


@dataclass(frozen=True)
class SecureParams:
    clip: float
    bits: int
    threshold: int  # 0 = strict majority of the round's participants
    stage_timeout_s: float
    modulus_bits: int = 32  # masked vectors travel as uint32

    def threshold_for(self, n: int) -> int:
        t = self.threshold or n // 2 + 1
        if not n // 2 + 1 <= t <= n:
            raise ValueError(
                f"aggregation.threshold must be a strict majority of the {n} clients in the round "
                f"({n // 2 + 1}..{n}), got {t}"
            )
        return t


class SecureRoundServer:
    """Server side of one secure round: feeds client bytes to `SecAggServer`, closes stages."""

    def __init__(
        self,
        participants: Mapping[int, int],
        *,
        vector_length: int,
        params: SecureParams,
        identity_keys: Mapping[int, bytes],
    ):
        n = len(participants)
        check_capacity(n, bits=params.bits, modulus_bits=params.modulus_bits)
        self.params = params
        self.counts = dict(participants)
        total = sum(participants.values())
        self.weights = {cid: c / total for cid, c in participants.items()}
        self.config = RoundConfig.create(
            sorted(participants),
            threshold=params.threshold_for(n),
            vector_length=vector_length,
            modulus_bits=params.modulus_bits,
        )
        self.server = SecAggServer(self.config, identity_keys={c: identity_keys[c] for c in participants})
        self.stage_started = time.monotonic()

    @property
    def stage(self) -> Stage:
        return self.server.stage

    def start(self) -> dict[int, tuple[dict, bytes]]:
        """The first message to each participant: the round configuration and its weight."""
        cfg = encode(self.config)
        return {
            cid: ({"weight": w, "clip": self.params.clip, "bits": self.params.bits}, cfg)
            for cid, w in self.weights.items()
        }

    def receive(self, client_id: int, payload: bytes) -> None:
        """Raises `crypto.secagg.ProtocolError` for a bad message (state unchanged)."""
        msg = decode(payload)
        if getattr(msg, "sender", client_id) != client_id:
            from crypto.secagg import ProtocolError

            raise ProtocolError(f"message from client {client_id} claims sender {msg.sender}")
        self.server.receive(msg)

    def poll(self, alive: set[int]):
        """Close the stage when everyone expected has answered, left, or timed out.

        Returns None (keep waiting), ``{client_id: bytes}`` for the next stage, or the
        finished `AggregateResult`.  Raises `crypto.secagg.SecAggAbort` below threshold.
        """
        waiting = (set(self.server.expected) - set(self.server.received)) & alive
        late = time.monotonic() - self.stage_started > self.params.stage_timeout_s
        if waiting and not late:
            return None
        self.stage_started = time.monotonic()
        if self.server.stage is Stage.UNMASK:
            return self.server.finish()
        return {cid: encode(m) for cid, m in self.server.finish_stage().items()}

    def average(self, result) -> np.ndarray:
        """FedAvg of the survivors' inputs from the unmasked sum."""
        survivors = list(result.survivors)
        total = dequantize_sum(
            result.sum_mod,
            len(survivors),
            clip=self.params.clip,
            bits=self.params.bits,
            modulus_bits=self.params.modulus_bits,
        )
        return total / sum(self.weights[c] for c in survivors)


class SecureRoundClient:
    """Client side of one secure round: quantises ``w_k * x_k`` and answers the server's stages."""

    def __init__(
        self,
        client_id: int,
        *,
        signing_key: bytes,
        identity_keys: Mapping[int, bytes],
        rng: np.random.Generator,
        randbytes=os.urandom,
    ):
        self.client_id = client_id
        self.signing_key, self.identity_keys = signing_key, dict(identity_keys)
        self.rng, self.randbytes = rng, randbytes
        self.machine: SecAggClient | None = None
        self.report: QuantizeReport | None = None

    def start(self, meta: Mapping, payload: bytes, vector: np.ndarray) -> bytes:
        """Handle the server's round configuration; returns the key advertisement."""
        config = decode(payload)
        if not isinstance(config, RoundConfig):
            from crypto.secagg import ProtocolError

            raise ProtocolError(f"expected the round configuration first, got {type(config).__name__}")
        if config.vector_length != vector.size:
            from crypto.secagg import ProtocolError

            raise ProtocolError(f"round expects {config.vector_length} values, this client has {vector.size}")
        ints, self.report = quantize(
            float(meta["weight"]) * vector,
            clip=float(meta["clip"]),
            bits=int(meta["bits"]),
            modulus_bits=config.modulus_bits,
            rng=self.rng,
        )
        self.machine = SecAggClient(
            config,
            self.client_id,
            signing_key=self.signing_key,
            identity_keys=self.identity_keys,
            vector=ints,
            randbytes=self.randbytes,
        )
        return encode(self.machine.advertise())

    def handle(self, payload: bytes) -> bytes:
        return encode(self.machine.handle(decode(payload)))

    @property
    def stage(self) -> Stage | None:
        return None if self.machine is None else self.machine.stage
