"""The client's link to the server: request/reply over one DEALER, and the trunk behind it.

`Connection.request` sends one message and waits for the expected reply, sending heartbeats
while it waits (not for a HELLO: no session exists yet); `RemoteLink` is the `TrunkLink` the
client step talks to.

A HELLO also watches the transport: a server that refuses the handshake (our key is not in its
allow-list, or we trust the wrong server key) raises `HandshakeRejected` at once, and until the
first WELCOME a connection that has not come about within ``transport.connect_timeout_s``
raises `ServerUnreachable`; both say what to check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from splitfed.config import RunConfig
from splitfed.errors import SplitfedError
from splitfed.transport import ClientSocket, LinkState, NotSent, client_name
from splitfed.wire import (
    INTEGERS,
    ErrorCode,
    Header,
    Message,
    MsgType,
    WireError,
    compress,
    decode,
    decompress,
    encode,
    frames_nbytes,
)
from splitfed.wire.meta import Forward


class ServerLost(SplitfedError, ConnectionError):
    """No reply from the server within the timeout."""


class ServerUnreachable(ServerLost):
    """The first connection to the server did not come about within ``transport.connect_timeout_s``."""


class HandshakeRejected(ServerLost):
    """The server refused the CURVE handshake (our key, or the server key we trust, is wrong)."""


class ServerRefused(SplitfedError, RuntimeError):
    """The server answered with an error that retrying cannot fix."""


HELLO_POLL_S = 0.25  # how often a HELLO waiting for its WELCOME looks at the transport


@dataclass
class Traffic:
    bytes_out: int = 0
    bytes_in: int = 0
    transport_s: float = 0.0


class Connection:
    """Request/reply over one DEALER, with heartbeats while waiting."""

    def __init__(self, cfg: RunConfig, client_id: int, *, insecure: bool, endpoint: str | None = None):
        self.cfg = cfg
        self.sock = ClientSocket(
            endpoint or cfg.transport.endpoint,
            keys_dir=cfg.transport.keys_dir,
            name=client_name(client_id),
            insecure=insecure,
        )
        self.session = ""
        self.started = time.monotonic()
        self.welcomed = False  # a WELCOME came back once: from then on the server may restart
        self.max_bytes = int(cfg.transport.max_message_mb * 1024 * 1024)
        self.traffic = Traffic()

    def request(
        self, header: Header, tensors=None, *, expect: MsgType | frozenset[MsgType], step: int | None = None
    ) -> Message:
        frames = encode(header, tensors)
        t0 = time.perf_counter()
        self.traffic.bytes_out += frames_nbytes(frames)
        self._send(frames)
        hb = self.cfg.transport.heartbeat_s
        last_heard = time.monotonic()
        # No heartbeats while a HELLO waits for its WELCOME: there is no session to keep alive
        # yet, and the server, having handled the HELLO first, would answer a heartbeat carrying
        # the old (or no) session id with unknown_client, which the next request would then read
        # as "session lost" and reconnect.  A server busy with many clients (or a long trunk step)
        # easily takes longer than heartbeat_s to get to a HELLO.
        beat = header.type != MsgType.HELLO
        while True:
            reply = self.sock.recv(int((hb if beat else min(hb, HELLO_POLL_S)) * 1000))
            if reply is None:
                silent = time.monotonic() - last_heard
                if silent > self.cfg.transport.timeout_s:
                    raise ServerLost(f"no reply to {header.type.value}: {self.sock.explain(silent)}")
                if beat:
                    self._send(encode(Header(MsgType.HEARTBEAT, self.session, header.round)))
                else:
                    self._check_transport()
                continue
            last_heard = time.monotonic()
            self.traffic.bytes_in += frames_nbytes(reply)
            try:
                msg = decode(reply, max_bytes=self.max_bytes)
            except WireError as err:
                raise ServerRefused(f"server sent a malformed message: {err}") from err
            if msg.type == MsgType.ERROR:
                code, detail = msg.meta.code, msg.meta.detail
                if code in (ErrorCode.UNKNOWN_CLIENT.value, ErrorCode.OUT_OF_ORDER.value):
                    raise ServerLost(f"server lost our session ({code}: {detail})")
                if code == ErrorCode.WRONG_IDENTITY.value:
                    raise ServerRefused(
                        f"server refused {header.type.value}: {code}: {detail}; the key pair in "
                        f"{self.cfg.transport.keys_dir} named {self.sock.name} is not {self.sock.name}'s: start "
                        "with the --client-id that key belongs to, or give this client its own key files"
                    )
                raise ServerRefused(f"server refused {header.type.value}: {code}: {detail}")
            expected = expect if isinstance(expect, frozenset) else frozenset({expect})
            if msg.type in expected and (step is None or msg.header.step == step):
                self.traffic.transport_s += time.perf_counter() - t0
                self.welcomed = self.welcomed or msg.type == MsgType.WELCOME
                return msg
            # heartbeat replies and stale answers are dropped

    def _send(self, frames: list) -> None:
        try:
            self.sock.send(frames)
        except NotSent as exc:
            if self.sock.state == LinkState.REFUSED:
                raise HandshakeRejected(self.sock.explain(time.monotonic() - self.started)) from None
            raise ServerLost(str(exc)) from None

    def _check_transport(self) -> None:
        """While a HELLO waits: fail fast on a refused handshake, and on no connection at all
        within ``connect_timeout_s`` until the server has welcomed us once."""
        state = self.sock.state
        if state == LinkState.REFUSED or (state != LinkState.READY and self.sock.events.failed):
            raise HandshakeRejected(self.sock.explain(time.monotonic() - self.started))
        waited = time.monotonic() - self.started
        if not self.welcomed and state != LinkState.READY and waited > self.cfg.transport.connect_timeout_s:
            raise ServerUnreachable(self.sock.explain(waited))

    def close(self) -> None:
        self.sock.close()


class RemoteLink:
    """`TrunkLink` to the server: compressed activations up, activations/gradients back.

    `act_step` / `grad_step` (0 = none): the grid step of a channel whose release is the discrete
    LDP mechanism's; that release goes as its integers (`wire.INTEGERS`), not compressed.  The
    activations of an evaluation forward (``train`` false) are no release and are compressed.
    """

    def __init__(
        self, conn: Connection, compression: str, hidden: int, *, act_step: float = 0.0, grad_step: float = 0.0
    ):
        self.conn, self.compression, self.hidden = conn, compression, hidden
        self.act_step, self.grad_step = act_step, grad_step
        self.round = 0
        self.step = 0
        self.train = True
        self.base = False  # evaluate the public base model (the server's trunk adapter off)

    def forward(self, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kind = INTEGERS if self.train and self.act_step else self.compression
        tensors = {**compress("act", act.cpu(), kind, step=self.act_step), "mask": mask.to("cpu", torch.uint8)}
        h = Header(MsgType.FORWARD, self.conn.session, self.round, self.step, Forward(self.train, self.base))
        msg = self.conn.request(h, tensors, expect=MsgType.ACTIVATIONS, step=self.step)
        out = decompress("act", msg.tensors, self.compression)
        if tuple(out.shape) != tuple(act.shape):
            raise ServerRefused(f"server activations have shape {list(out.shape)}, expected {list(act.shape)}")
        return out.to(act.device)

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        h = Header(MsgType.BACKWARD, self.conn.session, self.round, self.step)
        kind = INTEGERS if self.grad_step else self.compression
        tensors = compress("grad", grad.cpu(), kind, step=self.grad_step)
        msg = self.conn.request(h, tensors, expect=MsgType.GRADIENT, step=self.step)
        out = decompress("grad", msg.tensors, self.compression)
        if tuple(out.shape) != tuple(grad.shape):
            raise ServerRefused(f"server gradient has shape {list(out.shape)}, expected {list(grad.shape)}")
        return out.to(grad.device)
