"""The request-serving loop shared by every ROUTER service (the training server, a RAG party).

One loop: receive, decode (validated), dispatch, and turn every failure into an ERROR reply:
a `WireError` names what was wrong with the request; any other exception is a bug or a
resource problem, logged with its traceback and answered with code ``server``.  Either way
the service keeps serving everyone else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from splitfed.transport.sockets import Incoming, ServerSocket
from splitfed.wire import ErrorCode, Message, WireError, decode, decode_header, error_frames

Dispatch = Callable[[Incoming, Message], None]


class RequestLoop:
    """Decode -> dispatch -> error reply over one `ServerSocket`.

    `on_reject(err)` is told about every rejected request (for metrics); `tick()` runs after
    every receive or poll timeout and returns True when the service is finished.
    """

    def __init__(
        self,
        socket: ServerSocket,
        dispatch: Dispatch,
        *,
        max_bytes: int,
        log: logging.Logger,
        on_reject: Callable[[WireError], None] | None = None,
    ):
        self.socket, self.dispatch, self.max_bytes, self.log = socket, dispatch, max_bytes, log
        self.on_reject = on_reject or (lambda err: None)

    def handle(self, inc: Incoming) -> None:
        try:
            self.dispatch(inc, decode(inc.frames, max_bytes=self.max_bytes))
        except WireError as err:
            self.reject(inc.identity, err, step=request_step(inc.frames))
        except Exception as exc:  # a bug or a resource problem must not take the service down
            self.log.exception("error while handling a message")
            self.reject(
                inc.identity, WireError(ErrorCode.SERVER, f"{type(exc).__name__}: {exc}"), step=request_step(inc.frames)
            )

    def reject(self, identity: bytes, err: WireError, *, step: int = 0) -> None:
        """Log, count and answer a rejected request; `step` lets the peer match the reply."""
        self.log.warning("rejected message: %s", err)
        self.on_reject(err)
        self.socket.send(identity, error_frames(err.code, err.detail, step=step))

    def run(self, *, poll_ms: int, tick: Callable[[], bool] = lambda: False, max_seconds: float | None = None) -> bool:
        """Serve until `tick()` says finished (True) or `max_seconds` pass (False)."""
        t0 = time.monotonic()
        while True:
            inc = self.socket.recv(poll_ms)
            if inc is not None:
                self.handle(inc)
            if tick():
                return True
            if max_seconds is not None and time.monotonic() - t0 > max_seconds:
                return False


def request_step(frames: list) -> int:
    """The step (request id) of a possibly malformed request, so that its error reply can be matched."""
    try:
        first = frames[0]
        return decode_header(first.buffer if hasattr(first, "buffer") else first).step
    except Exception:  # best effort: the request may be anything at all
        return 0
