"""The client's end of a generation stream: a `DecodeLink` to the server's trunk.

Only activations at the first cut and the attention mask leave the client: the prompt's
(B, T, D) once (``open``), then one position (B, 1, D) and the mask's new column per token
(``step``); the trunk's output of the same shape comes back.  Token ids, the sampled text and
the Top's cache never leave.  ``close`` frees the server's cache.
"""

from __future__ import annotations

import torch

from splitfed.client.link import Connection, ServerRefused
from splitfed.wire import Header, MsgType, compress, decompress
from splitfed.wire.meta import Generate


class RemoteDecodeLink:
    """One stream (`number`, unique among this connection's open streams) of at most `positions`
    positions (prompt + new tokens; the server refuses more than it allows)."""

    def __init__(self, conn: Connection, number: int, *, compression: str, positions: int):
        self.conn, self.number, self.compression, self.positions = conn, number, compression, positions
        self.step = 0
        self.opened = False

    def _request(self, meta: Generate, tensors: dict | None, like: torch.Tensor | None) -> torch.Tensor | None:
        self.step += 1
        h = Header(MsgType.GENERATE, self.conn.session, 0, self.step, meta)
        msg = self.conn.request(h, tensors, expect=MsgType.GENERATED, step=self.step)
        if like is None:
            return None
        out = decompress("act", msg.tensors, self.compression)
        if tuple(out.shape) != tuple(like.shape):
            raise ServerRefused(f"server generation output has shape {list(out.shape)}, expected {list(like.shape)}")
        return out.to(like.device)

    def _tensors(self, h: torch.Tensor, mask: torch.Tensor) -> dict:
        return {**compress("act", h.detach().cpu(), self.compression), "mask": mask.to("cpu", torch.uint8)}

    def prefill(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self._request(Generate("open", self.number, self.positions), self._tensors(h, mask), h)
        self.opened = True
        return out

    def decode(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._request(Generate("step", self.number), self._tensors(h, mask[:, -1:]), h)

    def close(self) -> None:
        if self.opened:
            self.opened = False
            self._request(Generate("close", self.number), None, None)
