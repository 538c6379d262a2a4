"""Helpers for the ServerCore tests (fixtures in conftest.py): a `ServerCore` in memory with a
real config, trunk engine and FedAvg over a tiny random Llama,
fed events built from encoded-then-decoded messages (as the network would deliver them),
with time given in the events."""

from __future__ import annotations

import torch

from splitfed.aggregation import server_aggregator
from splitfed.config import parse_config
from splitfed.server.core import ServerCore
from splitfed.server.engine import load_engine
from splitfed.server.events import Banned, Idle, Outbox, Received, Record, Reject, Send, Tick
from splitfed.transport import client_name
from splitfed.wire import Header, MsgType, WireError, compress, decode, decompress, encode, frames_nbytes

HIDDEN = 32  # the tiny models' hidden size
MAX_BYTES = 1 << 24


def base_config(model_dir, run_dir, clients: int) -> dict:
    return {
        "run": {"dir": str(run_dir), "seed": 0},
        "model": {"path": str(model_dir), "cut": [1, 3]},
        "data": {"clients": clients, "batch_size": 2},
        "training": {"rounds": 2, "lr": 0.05},
        "server": {"device": "cpu", "step_timeout_s": 5.0, "round_deadline_s": 30.0},
        "transport": {"heartbeat_s": 1.0, "timeout_s": 10.0},
    }


def make_config(model_dir, run_dir, clients: int = 2, **overrides):
    """A `RunConfig`; overrides as ``section__key=value`` (``server__limits`` is not needed here)."""
    data = base_config(model_dir, run_dir, clients)
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})[key] = value
    return parse_config(data)


class Harness:
    """The core and what a test needs to talk to it."""

    def __init__(self, model, run_dir, *, clients: int = 2, core_kwargs=None, **overrides):
        self.model_dir, self.fingerprint, self.layout = model
        self.cfg = make_config(self.model_dir, run_dir, clients, **overrides)
        self.names = [client_name(k) for k in range(clients)]
        self.engine = self.fresh_engine()
        self.outbox = Outbox()
        self.core = ServerCore(
            self.cfg,
            self.engine,
            server_aggregator(self.cfg, self.layout, metrics=self.outbox),
            outbox=self.outbox,
            model_fingerprint=self.fingerprint,
            hidden=HIDDEN,
            now=0.0,
            **(core_kwargs or {}),
        )
        self.sessions: dict[bytes, str] = {}  # identity -> session id from its WELCOME

    def fresh_engine(self):
        """Another engine with the weights the core's started with (same seed)."""
        return load_engine(self.cfg, self.model_dir, clients=self.names)

    # ------------------------------------------------------------------ events
    def send(self, ident: bytes, mtype: MsgType, *, now: float, meta=None, tensors=None, rnd=None, step=0,
             session=None, user=None, key_owner=None):  # fmt: skip
        session = self.sessions.get(ident, "") if session is None else session
        rnd = self.core.round if rnd is None else rnd
        frames = encode(Header(mtype, session, rnd, step, dict(meta or {})), tensors)
        try:
            msg = decode(frames, max_bytes=MAX_BYTES)
        except WireError as err:  # what the transport's loop does: the core never sees it
            return [Reject(ident, err, step)]
        return self.core.handle(Received(ident, msg, now, frames_nbytes(frames), user, key_owner))

    def tick(self, now: float):
        return self.core.handle(Tick(now))

    def idle(self, now: float):
        """The socket is drained: queued generation work runs."""
        return self.core.handle(Idle(now))

    def gen_hello(self, ident: bytes, cid: int, *, now: float = 0.0):
        """HELLO of a generation session (streams only)."""
        meta = {**self.hello_meta(cid, 1), "generate": True}
        actions = self.send(ident, MsgType.HELLO, now=now, meta=meta)
        for m in messages(actions, ident):
            if m.type == MsgType.WELCOME:
                self.sessions[ident] = m.header.session
        return actions

    def generate(self, ident, op, stream, *, now, act=None, mask=None, positions=None, step=0):
        tensors = None
        if act is not None:
            tensors = {**compress("act", act, self.cfg.transport.compression), "mask": mask.to(torch.uint8)}
        meta = {"op": op, "stream": stream, **({"positions": positions} if positions is not None else {})}
        return self.send(ident, MsgType.GENERATE, now=now, step=step, meta=meta, tensors=tensors)

    def ban(self, ident: bytes, key_owner, now: float):
        return self.core.handle(Banned(ident, key_owner, now))

    def hello_meta(self, cid: int, n_samples: int = 10, **over) -> dict:
        meta = {
            "client_id": cid,
            "config_hash": self.cfg.hash(),
            "config_keys": self.cfg.key_digests(),
            "model": self.fingerprint,
            "n_samples": n_samples,
        }
        meta.update(over)
        return meta

    def hello(self, ident: bytes, cid: int, *, now: float = 0.0, n_samples: int = 10, **kw):
        """HELLO; on a WELCOME the session id is remembered for `ident`."""
        actions = self.send(ident, MsgType.HELLO, now=now, meta=self.hello_meta(cid, n_samples), **kw)
        for m in messages(actions, ident):
            if m.type == MsgType.WELCOME:
                self.sessions[ident] = m.header.session
        return actions

    def forward(self, ident, act, mask, *, now, step=0, **meta):
        tensors = {**compress("act", act, self.cfg.transport.compression), "mask": mask.to(torch.uint8)}
        return self.send(ident, MsgType.FORWARD, now=now, step=step, meta=meta, tensors=tensors)

    def backward(self, ident, grad, *, now, step=0):
        tensors = compress("grad", grad, self.cfg.transport.compression)
        return self.send(ident, MsgType.BACKWARD, now=now, step=step, tensors=tensors)

    def update(self, ident, state, *, now, loss=1.0, rnd=None):
        return self.send(ident, MsgType.UPDATE, now=now, meta={"loss": loss}, tensors=state, rnd=rnd)

    def bye(self, ident, *, now):
        return self.send(ident, MsgType.BYE, now=now, meta={"bytes_out": 1, "bytes_in": 2})

    def client_state(self, value: float) -> dict[str, torch.Tensor]:
        """A client adapter update of the agreed layout, every value `value`."""
        return {k: torch.full(s, value) for k, s in self.layout.shapes.items()}

    def session(self, ident: bytes):
        return self.core.sessions[ident]


# ------------------------------------------------------------------ reading actions
def messages(actions, ident: bytes | None = None):
    """The decoded messages of the `Send` actions (to `ident`), in order."""
    return [
        decode(a.frames, max_bytes=MAX_BYTES)
        for a in actions
        if isinstance(a, Send) and (ident is None or a.identity == ident)
    ]


def sent(actions):
    """(identity, message type) of every `Send`, in order."""
    return [(a.identity, decode(a.frames, max_bytes=MAX_BYTES).type) for a in actions if isinstance(a, Send)]


def only_message(actions, ident: bytes, mtype: MsgType):
    got = messages(actions, ident)
    assert [m.type for m in got] == [mtype], f"expected one {mtype.value} to {ident!r}, got {[m.type for m in got]}"
    return got[0]


def rejects(actions):
    return [a for a in actions if isinstance(a, Reject)]


def only_reject(actions, ident: bytes):
    got = rejects(actions)
    assert len(got) == 1 and got[0].identity == ident, f"expected one reject to {ident!r}, got {actions}"
    assert not messages(actions), "a rejected message got a reply too"
    return got[0].error


def records(actions, event: str | None = None):
    return [a for a in actions if isinstance(a, Record) and (event is None or a.event == event)]


def tensor_of(msg, name: str, compression: str = "fp32") -> torch.Tensor:
    return decompress(name, msg.tensors, compression)
