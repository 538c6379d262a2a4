"""Hostile messages for live fuzzing: seeded, reproducible, thousands per second.

`HostileGenerator(seed, session=..., hidden=...)` yields frame lists an authenticated but
malicious peer might send: random bytes, bit flips of valid messages, deep nesting, odd and
huge numbers, bad shapes and dtypes, every message type out of order, replays,
impersonation, oversize frames, non-finite and huge values.

`GenerationPeer(seed, session=..., ...)` does the same from a generation session: valid opens
and steps (it follows the server's answers) among hostile opens, steps, closes and HELLOs.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

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
        meta = {**self.hello, "client_id": cid, "n_samples": n}
        if self.rng.random() < 0.25:  # its own id (1), now (or no longer) a generation session on this connection
            meta.update(client_id=1, n_samples=1, generate=self.rng.choice([True, True, False, None, "yes"]))
        return encode(Header(MsgType.HELLO, meta=meta))

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


GEN_KINDS = {  # kind -> relative weight, for the generation peer
    "gen_open": 10,
    "gen_step": 15,
    "gen_bad_open": 10,
    "gen_bad_step": 25,
    "gen_close": 6,
    "gen_garbage": 10,
    "gen_hello": 2,
}
STALE = 50  # a valid request not answered within this many generation messages is given up


@dataclass
class OpenStream:
    """A stream as the generation peer believes the server holds it."""

    rows: int
    length: int  # positions cached so far
    positions: int  # as opened


class GenerationPeer:
    """Hostile GENERATE messages from a generation session (HELLO with ``generate``), seeded.

    It tracks the streams the server confirmed (`observe` each reply), so valid opens and steps
    reach the trunk's caches and the hostile ones hit the scheduler's open, step and close
    checks and its limits: wrong shapes and dtypes, non-finite values, masks of the wrong width,
    unknown and closed streams, duplicate opens, huge ``positions``, odd step numbers, garbage meta.
    """

    def __init__(self, seed: int, *, session: str, hidden: int, hello: dict, max_positions: int):
        """`hello`: an honest generation HELLO's meta; `max_positions`: ``server.inference.max_positions``."""
        self.rng = random.Random(seed)
        self.session, self.hidden, self.hello, self.max_positions = session, hidden, hello, max_positions
        self.streams: dict[int, OpenStream] = {}
        self.pending: dict[int, tuple[int, OpenStream | None]] = {}  # header step -> (stream, state once answered)
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self) -> tuple[str, list[bytes]]:
        self.pending = {k: v for k, v in self.pending.items() if self.step - k <= STALE}
        kind = self.rng.choices(list(GEN_KINDS), weights=list(GEN_KINDS.values()))[0]
        frames = [bytes(memoryview(f).cast("B")) for f in getattr(self, "_" + kind)()]
        return kind, frames

    def observe(self, msg) -> None:
        """A reply from the server: a GENERATED confirms what its request did; a WELCOME starts over."""
        if msg.type == MsgType.WELCOME:
            self.session, self.streams, self.pending = msg.header.session, {}, {}
            return
        number, state = self.pending.pop(msg.header.step, (None, None))
        if msg.type != MsgType.GENERATED or number is None:
            return
        if state is None:
            self.streams.pop(number, None)
        else:
            self.streams[number] = state

    # ------------------------------------------------------------------ helpers
    def _send(
        self,
        meta,
        tensors: dict | None,
        *,
        expect: tuple[int, OpenStream | None] | None = None,
        step: int | None = None,
    ) -> list:
        """A GENERATE; `expect`: the stream's state once the server answers it."""
        if step is None:
            self.step += 1
            step = self.step
        if expect is not None:
            self.pending[step] = expect
        return encode(Header(MsgType.GENERATE, self.session, 0, step, meta), tensors)

    def _tensors(self, rows: int, length: int) -> dict:
        return {"act": torch.randn(rows, length, self.hidden), "mask": torch.ones(rows, length, dtype=torch.uint8)}

    def _number(self) -> int:
        """A stream number: mostly a few (so opens collide and per-client limits are reached), now and then any."""
        return self.rng.randrange(6) if self.rng.random() < 0.9 else self.rng.choice([2**31 - 1, 10**6, 77])

    def _ready(self) -> tuple[int, OpenStream] | None:
        """An open stream with its last answer back (a step may follow), if any."""
        waiting = {n for n, _ in self.pending.values()}
        ready = [(n, s) for n, s in self.streams.items() if n not in waiting]
        return self.rng.choice(ready) if ready else None

    # ------------------------------------------------------------------ kinds
    def _gen_open(self):
        r = self.rng
        rows, length = r.randint(1, 3), r.randint(1, 8)
        positions = r.choice([length, length + 1, length + r.randint(2, 40)])  # full at once, after one step, later
        number = self._number()
        meta = {"op": "open", "stream": number, "positions": positions}
        return self._send(meta, self._tensors(rows, length), expect=(number, OpenStream(rows, length, positions)))

    def _gen_step(self):
        ready = self._ready()
        if ready is None:
            return self._gen_open()
        number, s = ready
        after = OpenStream(s.rows, s.length + 1, s.positions)
        return self._send({"op": "step", "stream": number}, self._tensors(s.rows, 1), expect=(number, after))

    def _gen_close(self):
        r = self.rng
        number = r.choice(list(self.streams)) if self.streams and r.random() < 0.7 else self._number()
        return self._send({"op": "close", "stream": number}, None, expect=(number, None))

    def _gen_bad_open(self):
        r = self.rng
        rows, length = r.randint(1, 3), r.randint(1, 6)
        number = r.choice(list(self.streams)) if self.streams and r.random() < 0.3 else self._number()  # duplicate
        positions = r.choice([None, 0, length - 1, self.max_positions + 1, 2**31 - 1, 10**12, 10 * length])
        tensors = self._tensors(rows, length)
        which = r.randrange(6)  # 4, 5: only positions (sometimes valid after all) or the number is off
        if which == 0:  # a prompt longer or shorter than its mask
            tensors["act"] = torch.randn(rows, length + r.choice([1, -1 if length > 1 else 2]), self.hidden)
        elif which == 1:  # more rows or tokens than the server takes
            big = r.choice([(65, 1), (1, 2049)])
            tensors = self._tensors(*big)
        elif which == 2:  # 3 rows x the most positions: over the server's cache budget in the test
            tensors, positions = self._tensors(3, 2), self.max_positions
        elif which == 3:
            tensors["mask"] = torch.zeros(rows, length, dtype=torch.uint8)
        meta = {"op": "open", "stream": number}
        if positions is not None:
            meta["positions"] = positions
        return self._send(meta, tensors)

    def _gen_bad_step(self):
        r = self.rng
        ready = self._ready() or (self._number(), OpenStream(r.randint(1, 3), 1, 8))  # else an unknown stream
        number, s = ready
        rows, h = s.rows, self.hidden
        act, mask = torch.randn(rows, 1, h), torch.ones(rows, 1, dtype=torch.uint8)
        step, which = None, r.randrange(11)
        if which == 0:  # the mask's new column: wrong width (the whole mask, or two columns)
            mask = torch.ones(rows, r.choice([2, s.length + 1]), dtype=torch.uint8)
            act = torch.randn(rows, mask.shape[1], h)
        elif which == 1:  # another number of rows than opened
            act, mask = torch.randn(rows + 1, 1, h), torch.ones(rows + 1, 1, dtype=torch.uint8)
        elif which == 2:
            act = torch.randn(rows, 1, h + r.choice([-1, 1]))
        elif which == 3:
            act = act.to(r.choice([torch.bfloat16, torch.float16, torch.int32, torch.uint8]))
        elif which == 4:
            mask = mask.to(r.choice([torch.float32, torch.int64, torch.int8]))
        elif which == 5:
            mask = r.choice([mask * 2, mask * 0, torch.ones(rows, dtype=torch.uint8)])
        elif which == 6:
            act[r.randrange(rows), 0, r.randrange(h)] = r.choice([float("nan"), float("inf"), -float("inf"), 3e38])
        elif which == 7:  # a step number out of order (the server echoes it): a valid step otherwise
            step = r.choice([0, 1, self.step, self.step + 10**6, 2**62])
        elif which == 8:
            return self._send({"op": "step", "stream": number}, r.choice([None, {"act": act}, {"mask": mask}]))
        elif which == 9:  # on a stream whose answer has not come back yet (else one never opened)
            number = next(iter(self.pending.values()))[0] if self.pending else self._number()
        elif which == 10:  # positions on a step (open only)
            return self._send({"op": "step", "stream": number, "positions": r.choice([1, 10**9])}, {"act": act})
        return self._send({"op": "step", "stream": number}, {"act": act, "mask": mask}, step=step)

    def _gen_garbage(self):
        r = self.rng
        odd = r.choice([-1, 2**31, 2**63, 10**400, 1.5, "0", None, True, [], {}, "x" * 300])
        metas = [
            {"op": r.choice(["reopen", "", "OPEN", None, 5]), "stream": 0},
            {"op": "open"},
            {"op": "step", "stream": odd},
            {"op": "open", "stream": 0, "positions": odd},
            {"op": "close", "stream": 0, "extra": 1},
            r.choice([[], "open", 7, None]),
            {"op": "close", "stream": {"a": [1]}},
        ]
        header = {"v": 1, "type": "generate", "session": self.session, "round": 0, "step": r.randint(0, 9)}
        header.update(meta=r.choice(metas), tensors=[])
        if r.random() < 0.3:  # a server-to-client type, or a training message, from the generation session
            header["type"] = r.choice(["generated", "forward", "backward", "update", "welcome"])
        return [json.dumps(header).encode()]

    def _gen_hello(self):
        """Mostly refused (a generate flag that is no bool, another config); now and then a real
        one, which replaces the session (and frees its streams): `observe` reads the WELCOME."""
        r = self.rng
        meta = {**self.hello, "generate": True}
        bad = r.choice([None, ("generate", "yes"), ("generate", 1), ("config_hash", "0" * 64), ("client_id", 0)])
        if bad is not None:
            meta[bad[0]] = bad[1]
        return encode(Header(MsgType.HELLO, meta=meta))
