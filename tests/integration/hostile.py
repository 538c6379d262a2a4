"""Hostile messages for live fuzzing: seeded, reproducible, thousands per second.

`HostileGenerator(seed, session=..., hidden=...)` yields frame lists an authenticated but
malicious peer might send: random bytes, bit flips of valid messages, deep nesting, odd and
huge numbers, bad shapes and dtypes, every message type out of order, replays,
impersonation, oversize frames, non-finite and huge values.
"""

from __future__ import annotations

import json
import random

import torch

from splitfed.wire import Header, MsgType, encode

KINDS = {  # kind -> relative weight (oversize messages are heavy on the wire: rare)
    "random_bytes": 10,
    "bit_flip": 10,
    "deep_nesting": 10,
    "odd_numbers": 10,
    "bad_specs": 10,
    "out_of_order": 10,
    "replay": 5,
    "impersonation": 5,
    "oversize": 1,
    "non_finite": 10,
    "long_strings": 5,
}


class HostileGenerator:
    def __init__(self, seed: int, *, session: str, hidden: int, hello: dict, max_bytes: int):
        """`hello`: an honest HELLO's meta (config hash, model fingerprint), impersonated with bad ids."""
        self.rng = random.Random(seed)
        self.session, self.hidden, self.hello, self.max_bytes = session, hidden, hello, max_bytes
        self.sent: list[list[bytes]] = []

    def __iter__(self):
        return self

    def __next__(self) -> tuple[str, list[bytes]]:
        kind = self.rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        frames = [bytes(memoryview(f).cast("B")) for f in getattr(self, "_" + kind)()]
        if len(self.sent) < 200:
            self.sent.append(frames)
        return kind, frames

    # ------------------------------------------------------------------ helpers
    def _valid(self) -> list:
        r, h = self.rng, self.hidden
        b, t = r.randint(1, 3), r.randint(1, 6)
        choices = [
            lambda: encode(Header(MsgType.HEARTBEAT, self.session)),
            lambda: encode(
                Header(MsgType.FORWARD, self.session, 0, r.randint(0, 5), {"train": r.random() < 0.5}),
                {"act": torch.randn(b, t, h), "mask": torch.ones(b, t, dtype=torch.uint8)},
            ),
            lambda: encode(Header(MsgType.BACKWARD, self.session, 0, r.randint(0, 5)), {"grad": torch.randn(b, t, h)}),
            lambda: encode(Header(MsgType.UPDATE, self.session, 0, 0, {"loss": 1.0}), {"bottom/x": torch.zeros(3)}),
            lambda: encode(
                Header(MsgType.SECAGG, self.session, 0, 0, {"stage": "ADVERTISE_KEYS"}),
                {"payload": torch.randint(0, 255, (40,), dtype=torch.uint8)},
            ),
            lambda: encode(Header(MsgType.RAG_SCORE, self.session)),
        ]
        return r.choice(choices)()

    def _header(self, **fields) -> bytes:
        base = {"v": 1, "type": "heartbeat", "session": self.session, "round": 0, "step": 0, "meta": {}, "tensors": []}
        base.update(fields)
        return json.dumps(base).encode()

    def _odd(self):
        r = self.rng
        return r.choice(
            [
                10 ** r.randint(18, 400),
                -(10 ** r.randint(1, 30)),
                -1,
                2**63,
                1.5,
                float("1e308"),
                True,
                None,
                "",
                "x" * r.randint(1, 300),
                [],
                {},
                [1, [2, [3]]],
                {"a": {"b": {}}},
            ]
        )

    # ------------------------------------------------------------------ kinds
    def _random_bytes(self):
        r = self.rng
        return [r.randbytes(r.randint(0, 600)) for _ in range(r.randint(1, 3))]

    def _bit_flip(self):
        frames = [bytearray(memoryview(f).cast("B")) for f in self._valid()]
        for _ in range(self.rng.randint(1, 8)):
            f = self.rng.choice(frames)
            if f:
                i = self.rng.randrange(len(f))
                f[i] ^= 1 << self.rng.randrange(8)
        return frames

    def _deep_nesting(self):
        depth = self.rng.choice([50, 999, 1001, 5000, 20000])
        nested = "[" * depth + "]" * depth if self.rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth
        where = self.rng.choice(["meta", "tensors", "round"])
        text = self._header().decode().replace(f'"{where}": ', f'"{where}": {nested}, "_": ', 1)
        return [text.encode()[: 64 * 1024 + 10]]

    def _odd_numbers(self):
        field = self.rng.choice(["v", "round", "step", "session", "type", "meta", "tensors"])
        return [self._header(**{field: self._odd()})]

    def _bad_specs(self):
        r = self.rng
        dtype = r.choice(["float32", "uint8", "float64", [], {}, 5, None, "int8", "bfloat16"])
        shape = r.choice(
            [[0, 2**63], [10**30, 0], [0, 2**62, 4], [-1], [True], [1.5], ["3"], [1] * 9, [2, 3], [], 7, None]
        )
        name = r.choice(["act", "mask", "grad", "", "x" * 300, 5])
        spec = {"name": name, "dtype": dtype, "shape": shape}
        frames = [self._header(type=r.choice(["forward", "backward", "update"]), tensors=[spec])]
        return frames + [r.randbytes(r.choice([0, 1, 24, 4096]))]

    def _out_of_order(self):
        mtype = self.rng.choice(list(MsgType))
        tensors = {"payload": torch.zeros(4, dtype=torch.uint8)} if self.rng.random() < 0.3 else None
        return encode(Header(mtype, self.session, self.rng.randint(0, 3), self.rng.randint(0, 9)), tensors)

    def _replay(self):
        return self.rng.choice(self.sent) if self.sent else self._valid()

    def _impersonation(self):
        cid = self.rng.choice([0, 0, 1, 2, -1, 10**6])
        n = self.rng.choice([1, 10**400, 0, -5, 2**62])
        return encode(Header(MsgType.HELLO, meta={**self.hello, "client_id": cid, "n_samples": n}))

    def _oversize(self):
        return [self._header(type="forward"), self.rng.randbytes(self.max_bytes + 1024)]

    def _non_finite(self):
        r = self.rng
        value = r.choice([float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 1e6])
        act = torch.randn(1, 4, self.hidden)
        act[0, r.randrange(4), r.randrange(self.hidden)] = value
        if r.random() < 0.5:
            return encode(
                Header(MsgType.FORWARD, self.session, 0, 0, {"train": True}),
                {"act": act, "mask": torch.ones(1, 4, dtype=torch.uint8)},
            )
        return encode(Header(MsgType.BACKWARD, self.session, 0, 0), {"grad": act})

    def _long_strings(self):
        big = "A" * self.rng.choice([1000, 30_000, 60_000])
        field = self.rng.choice(["type", "session", "meta"])
        value = {"k": big} if field == "meta" else big
        return [self._header(**{field: value})]
