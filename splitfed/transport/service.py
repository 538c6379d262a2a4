"""The request-serving loop shared by every ROUTER service (the training server, a RAG party).

One loop: admit, decode (validated), dispatch, and turn every failure into an ERROR reply:
a `WireError` names what was wrong with the request; any other exception is a bug or a
resource problem, logged with its traceback and answered with code ``server``.  Either way
the service keeps serving everyone else.

An authenticated peer may still be hostile, so every peer has two budgets (`PeerLimits`): a
message rate (a token bucket) and an error budget (rejected messages within a sliding
window).  A peer over either is banned for a cool-down: its messages are dropped unread and
unanswered, with one log line and one `on_ban` call per ban.  Peers are keyed by their CURVE
public key when there is one, so a ban survives a reconnect; in insecure mode there is no key
and they are keyed by the ROUTER routing id, which is per connection (a reconnect starts
afresh).  Log lines and `on_reject` calls about rejected input are rate-limited per peer, so a
flood never turns into a flood of log or metrics lines.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from splitfed.checks import is_int
from splitfed.transport.sockets import Incoming, ServerSocket
from splitfed.wire import ErrorCode, Message, WireError, decode, decode_header, error_frames

Dispatch = Callable[[Incoming, Message], None]
PeerKey = str | bytes  # the peer's CURVE public key (z85), or its routing id when it has none
LOG_DETAIL_CHARS = 300  # a rejected message's detail is cut to this in the log


class BanReason(enum.Enum):
    RATE = "rate"  # more messages than `PeerLimits.max_rate` allows
    ERRORS = "errors"  # more rejected messages than `PeerLimits.max_errors` allows


@dataclass(frozen=True)
class PeerLimits:
    """What one peer may do before a `RequestLoop` ignores it; None switches a limit off.

    The defaults keep an honest client (a few messages per second, a heartbeat every 0.5-2 s,
    now and then a rejected message) far from every limit.
    """

    max_rate: float | None = 200.0  # messages per second, sustained ...
    burst: int = 400  # ... plus this many at once
    max_errors: int | None = 100  # rejected messages allowed ...
    error_window_s: float = 10.0  # ... within this many seconds
    cooldown_s: float = 30.0  # how long a peer over a limit is ignored
    log_interval_s: float = 1.0  # at most one log line per peer about its rejected messages per interval
    max_reports: float | None = 5.0  # `on_reject` calls per peer per second, sustained ...
    report_burst: int = 20  # ... plus this many at once
    max_peers: int = 10_000  # peers remembered; the least recently seen is forgotten first

    @classmethod
    def of(cls, section) -> PeerLimits:
        """From a `[server.limits]` config section, where 0 switches a limit off."""
        return cls(
            max_rate=section.max_rate or None,
            burst=section.burst,
            max_errors=section.max_errors or None,
            error_window_s=section.error_window_s,
            cooldown_s=section.cooldown_s,
        )

    def __post_init__(self) -> None:
        for name in ("max_rate", "max_reports"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"PeerLimits.{name}: expected a finite number > 0 or None, got {value!r}")
        for name in ("error_window_s", "cooldown_s", "log_interval_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"PeerLimits.{name}: expected a finite number > 0, got {value!r}")
        for name, least in (("burst", 1), ("report_burst", 1), ("max_peers", 1), ("max_errors", 0)):
            value = getattr(self, name)
            if name == "max_errors" and value is None:
                continue
            if not is_int(value) or value < least:
                raise ValueError(f"PeerLimits.{name}: expected an integer >= {least}, got {value!r}")


UNLIMITED = PeerLimits(max_rate=None, max_errors=None, max_reports=None)  # log lines stay rate-limited


@dataclass(frozen=True)
class Ban:
    """A peer over a limit: ignored for `cooldown_s`."""

    identity: bytes  # routing id of the message that crossed the limit
    user: str | None  # the peer's CURVE public key (z85); None in insecure mode
    reason: BanReason
    detail: str
    cooldown_s: float


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; `take` spends one when there is one."""

    def __init__(self, rate: float, burst: int, now: float):
        self.rate, self.burst, self.tokens, self.at = rate, float(burst), float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(now - self.at, 0.0) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class _Peer:
    """What the loop remembers about one peer (one key)."""

    def __init__(self, limits: PeerLimits, user: str | None, now: float):
        self.user = user
        self.banned_until: float | None = None
        self.dropped = 0  # messages dropped unread during the current (or last) ban
        self.log_at = -math.inf
        self.log_suppressed = 0  # rejections not logged since the last line
        self.reports = None if limits.max_reports is None else TokenBucket(limits.max_reports, limits.report_burst, now)
        self.forgive(limits, now)

    def forgive(self, limits: PeerLimits, now: float) -> None:
        """A fresh message and error budget (new peer, or its cool-down is over)."""
        self.banned_until = None
        self.rate = None if limits.max_rate is None else TokenBucket(limits.max_rate, limits.burst, now)
        self.errors: deque[float] = deque()

    def banned(self, now: float) -> bool:
        return self.banned_until is not None and now < self.banned_until


class RequestLoop:
    """Admit -> decode -> dispatch -> error reply over one `ServerSocket`.

    `on_reject(err)` is told about rejected requests (for metrics), at most `limits.max_reports`
    per peer per second after a burst of `limits.report_burst`; the rest are only counted
    (`unreported`, and in the peer's next log line).  `on_ban(ban)` is told about every
    ban.  `tick()` runs after every receive or poll timeout and returns True when the service
    is finished.  `clock` (seconds, monotonic) drives every limit, so tests need no sleeping.
    """

    def __init__(
        self,
        socket: ServerSocket,
        dispatch: Dispatch,
        *,
        max_bytes: int,
        log: logging.Logger,
        on_reject: Callable[[WireError], None] | None = None,
        on_ban: Callable[[Ban], None] | None = None,
        limits: PeerLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.socket, self.dispatch, self.max_bytes, self.log = socket, dispatch, max_bytes, log
        self.on_reject = on_reject or (lambda err: None)
        self.on_ban = on_ban or (lambda ban: None)
        self.limits = limits or PeerLimits()
        self.clock = clock
        self.peers: OrderedDict[PeerKey, _Peer] = OrderedDict()  # least recently seen first
        self._users: OrderedDict[bytes, str] = OrderedDict()  # routing id -> CURVE key, for `reject`
        self.bans = 0
        self.dropped = 0  # messages dropped unread from banned peers
        self.unreported = 0  # rejections not passed to on_reject (over limits.max_reports)

    # ------------------------------------------------------------------ serving
    def handle(self, inc: Incoming) -> None:
        now = self.clock()
        peer = self._peer(inc.identity, inc.user, now)
        if not self._admit(peer, inc.identity, now):
            return
        try:
            self.dispatch(inc, decode(inc.frames, max_bytes=self.max_bytes))
        except WireError as err:
            self._reject(peer, inc.identity, err, request_step(inc.frames))
        except Exception as exc:  # a bug or a resource problem must not take the service down
            err = WireError(ErrorCode.SERVER, f"{type(exc).__name__}: {exc}")
            self._reject(peer, inc.identity, err, request_step(inc.frames), exc=exc)

    def reject(self, identity: bytes, err: WireError, *, step: int = 0) -> None:
        """Log, count and answer a rejected request; `step` lets the peer match the reply.

        Counts against the peer's error budget; a banned peer gets no reply.
        """
        now = self.clock()
        peer = self._peer(identity, self._users.get(identity), now)
        if not peer.banned(now):
            self._reject(peer, identity, err, step)

    def run(
        self,
        *,
        poll_ms: int,
        tick: Callable[[], bool] = lambda: False,
        idle: Callable[[], None] | None = None,
        max_seconds: float | None = None,
    ) -> bool:
        """Serve until `tick()` says finished (True) or `max_seconds` pass (False).  `idle()` runs
        whenever no message is waiting, before the loop blocks: work queued while messages kept
        coming (the server's batched decode steps) runs then, as one batch."""
        t0 = self.clock()
        while True:
            inc = self.socket.recv(0) if idle is not None else None
            if inc is None:
                if idle is not None:
                    idle()
                inc = self.socket.recv(poll_ms)
            if inc is not None:
                self.handle(inc)
            if tick():
                return True
            if max_seconds is not None and self.clock() - t0 > max_seconds:
                return False

    def banned(self, identity: bytes, user: str | None = None) -> bool:
        """Whether the peer (by CURVE key `user`, else by routing id) is cooling down now."""
        peer = self.peers.get(user if user is not None else self._users.get(identity, identity))
        return peer is not None and peer.banned(self.clock())

    # ------------------------------------------------------------------ limits
    def _peer(self, identity: bytes, user: str | None, now: float) -> _Peer:
        if user is not None:
            _remember(self._users, identity, user, self.limits.max_peers)
        key: PeerKey = identity if user is None else user
        peer = self.peers.get(key)
        if peer is None:
            peer = _Peer(self.limits, user, now)
        _remember(self.peers, key, peer, self.limits.max_peers)
        return peer

    def _admit(self, peer: _Peer, identity: bytes, now: float) -> bool:
        """False when the message must be dropped unread: the peer is banned, or now goes over its rate."""
        if peer.banned_until is not None:
            if now < peer.banned_until:
                peer.dropped += 1
                self.dropped += 1
                return False
            self.log.info(
                "%s: cool-down over, served again (%d messages were dropped unread)",
                self._name(identity, peer),
                peer.dropped,
            )
            peer.forgive(self.limits, now)
        if peer.rate is not None and not peer.rate.take(now):
            lim = self.limits
            self._ban(peer, identity, BanReason.RATE, f"over {lim.max_rate:g} messages/s (burst {lim.burst})", now)
            peer.dropped += 1
            self.dropped += 1
            return False
        return True

    def _over_error_budget(self, peer: _Peer, now: float) -> bool:
        lim = self.limits
        if lim.max_errors is None:
            return False
        peer.errors.append(now)
        while peer.errors and now - peer.errors[0] >= lim.error_window_s:
            peer.errors.popleft()
        return len(peer.errors) > lim.max_errors

    def _ban(self, peer: _Peer, identity: bytes, reason: BanReason, detail: str, now: float) -> None:
        cooldown = self.limits.cooldown_s
        peer.banned_until, peer.dropped = now + cooldown, 0
        self.bans += 1
        self.log.warning(
            "%s banned for %g s: %s; its messages are dropped unread and unanswered "
            "(%d rejections not logged since the last line)",
            self._name(identity, peer),
            cooldown,
            detail,
            peer.log_suppressed,
        )
        peer.log_suppressed = 0
        self.on_ban(Ban(identity, peer.user, reason, detail, cooldown))

    # ------------------------------------------------------------------ rejections
    def _reject(self, peer: _Peer, identity: bytes, err: WireError, step: int, *, exc: Exception | None = None):
        now = self.clock()
        if self._over_error_budget(peer, now):
            lim = self.limits
            detail = f"{len(peer.errors)} rejected messages within {lim.error_window_s:g} s (limit {lim.max_errors})"
            self._ban(peer, identity, BanReason.ERRORS, detail, now)
            return
        self._log_rejection(peer, identity, err, now, exc)
        if peer.reports is None or peer.reports.take(now):
            self.on_reject(err)
        else:
            self.unreported += 1
        self.socket.send(identity, error_frames(err.code, err.detail, step=step))

    def _log_rejection(self, peer: _Peer, identity: bytes, err: WireError, now: float, exc: Exception | None):
        """At most one line per peer per `log_interval_s`; the next line says how many were skipped."""
        if now - peer.log_at < self.limits.log_interval_s:
            peer.log_suppressed += 1
            return
        skipped = f" (+{peer.log_suppressed} more not logged)" if peer.log_suppressed else ""
        peer.log_at, peer.log_suppressed = now, 0
        text = _cut(str(err), LOG_DETAIL_CHARS)
        if exc is None:
            self.log.warning("rejected message from %s: %s%s", self._name(identity, peer), text, skipped)
        else:
            self.log.error(
                "error while handling a message from %s: %s%s", self._name(identity, peer), text, skipped, exc_info=exc
            )

    def _name(self, identity: bytes, peer: _Peer) -> str:
        """A peer in a log line: routing id, and the client name and key when it has one."""
        name = f"peer {identity.hex()[:32]}"
        if peer.user is not None:
            name += f" ({self.socket.clients.get(peer.user, 'key not in the allow-list')}, key {peer.user[:40]})"
        return name


def _remember(table: OrderedDict, key, value, most: int) -> None:
    """table[key] = value as the most recent entry; the oldest go beyond `most` entries."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > most:
        table.popitem(last=False)


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 20] + f"... (+{len(text) - most + 20} chars)"


def request_step(frames: list) -> int:
    """The step (request id) of a possibly malformed request, so that its error reply can be matched."""
    try:
        first = frames[0]
        return decode_header(first.buffer if hasattr(first, "buffer") else first).step
    except Exception:  # best effort: the request may be anything at all
        return 0
