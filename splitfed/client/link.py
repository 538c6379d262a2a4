"""The client's link to the server: request/reply over one DEALER, and the trunk behind it.

`Connection.request` sends one message and waits for the expected reply, sending heartbeats
while it waits (not for a HELLO: no session exists yet); `RemoteTrunk` is the `TrunkLink` the
client step talks to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from splitfed.config import RunConfig
from splitfed.transport import ClientSocket, client_name
from splitfed.wire import ErrorCode, Header, Message, MsgType, WireError, compress, decode, decompress, encode


class ServerLost(ConnectionError):
    """No reply from the server within the timeout."""


class ServerRefused(RuntimeError):
    """The server answered with an error that retrying cannot fix."""


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
        self.max_bytes = int(cfg.transport.max_message_mb * 1024 * 1024)
        self.traffic = Traffic()

    def request(
        self, header: Header, tensors=None, *, expect: MsgType | frozenset[MsgType], step: int | None = None
    ) -> Message:
        frames = encode(header, tensors)
        t0 = time.perf_counter()
        self.traffic.bytes_out += sum(len(memoryview(f).cast("B")) for f in frames)
        self.sock.send(frames)
        hb = self.cfg.transport.heartbeat_s
        last_heard = time.monotonic()
        # No heartbeats while a HELLO waits for its WELCOME: there is no session to keep alive
        # yet, and the server, having handled the HELLO first, would answer a heartbeat carrying
        # the old (or no) session id with unknown_client, which the next request would then read
        # as "session lost" and reconnect.  A server busy with many clients (or a long trunk step)
        # easily takes longer than heartbeat_s to get to a HELLO.
        beat = header.type != MsgType.HELLO
        while True:
            reply = self.sock.recv(int(hb * 1000))
            if reply is None:
                if time.monotonic() - last_heard > self.cfg.transport.timeout_s:
                    raise ServerLost(f"no reply to {header.type.value} within {self.cfg.transport.timeout_s:.0f} s")
                if beat:
                    self.sock.send(encode(Header(MsgType.HEARTBEAT, self.session, header.round)))
                continue
            last_heard = time.monotonic()
            self.traffic.bytes_in += sum(len(f.buffer) for f in reply)
            try:
                msg = decode(reply, max_bytes=self.max_bytes)
            except WireError as err:
                raise ServerRefused(f"server sent a malformed message: {err}") from err
            if msg.type == MsgType.ERROR:
                code, detail = msg.header.meta.get("code"), msg.header.meta.get("detail")
                if code in (ErrorCode.UNKNOWN_CLIENT.value, ErrorCode.OUT_OF_ORDER.value):
                    raise ServerLost(f"server lost our session ({code}: {detail})")
                raise ServerRefused(f"server refused {header.type.value}: {code}: {detail}")
            expected = expect if isinstance(expect, frozenset) else frozenset({expect})
            if msg.type in expected and (step is None or msg.header.step == step):
                self.traffic.transport_s += time.perf_counter() - t0
                return msg
            # heartbeat replies and stale answers are dropped

    def close(self) -> None:
        self.sock.close()


class RemoteTrunk:
    """`TrunkLink` to the server: compressed activations up, activations/gradients back."""

    def __init__(self, conn: Connection, compression: str, hidden: int):
        self.conn, self.compression, self.hidden = conn, compression, hidden
        self.round = 0
        self.step = 0
        self.train = True
        self.base = False  # evaluate the public base model (the server's trunk adapter off)

    def forward(self, act: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tensors = {**compress("act", act.cpu(), self.compression), "mask": mask.to("cpu", torch.uint8)}
        meta = {"train": self.train, "base": True} if self.base else {"train": self.train}
        h = Header(MsgType.FORWARD, self.conn.session, self.round, self.step, meta)
        msg = self.conn.request(h, tensors, expect=MsgType.ACTIVATIONS, step=self.step)
        out = decompress("act", msg.tensors, self.compression)
        if tuple(out.shape) != tuple(act.shape):
            raise ServerRefused(f"server activations have shape {list(out.shape)}, expected {list(act.shape)}")
        return out.to(act.device)

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        h = Header(MsgType.BACKWARD, self.conn.session, self.round, self.step)
        msg = self.conn.request(
            h, compress("grad", grad.cpu(), self.compression), expect=MsgType.GRADIENT, step=self.step
        )
        out = decompress("grad", msg.tensors, self.compression)
        if tuple(out.shape) != tuple(grad.shape):
            raise ServerRefused(f"server gradient has shape {list(out.shape)}, expected {list(grad.shape)}")
        return out.to(grad.device)
