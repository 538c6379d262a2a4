"""The server process: `ServerCore` behind ZeroMQ, with the files it writes.

A thin adapter.  It builds what the core needs from the configuration (the base model, the
trunk engine, the aggregator; the last checkpoint with ``--resume``), turns the network into
events (the shared `RequestLoop` decodes and validates every message first, and answers
what fails to decode) and performs the core's actions: replies, error answers, metrics
lines, atomic checkpoints after every round, the merged adapter after the last.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from splitfed.aggregation import AdapterLayout, run_roster, server_aggregator
from splitfed.config import RunConfig
from splitfed.config.fields import ConfigError
from splitfed.metrics import MetricsWriter
from splitfed.server.checkpoint import load_checkpoint, save_checkpoint
from splitfed.server.core import ServerCore
from splitfed.server.engine import TrunkEngine, load_engine
from splitfed.server.events import (
    Action,
    Banned,
    Export,
    Idle,
    Outbox,
    Progress,
    Received,
    Record,
    Reject,
    SaveCheckpoint,
    Send,
    Tick,
)
from splitfed.server.export import export_run_adapter
from splitfed.server.ops import Restore
from splitfed.transport import Ban, Incoming, PeerLimits, RequestLoop, ServerSocket, client_name
from splitfed.wire import Message, frames_nbytes

log = logging.getLogger("splitfed.server")


class Server:
    def __init__(
        self,
        cfg: RunConfig,
        *,
        resume: bool = False,
        insecure: bool = False,
        endpoint: str | None = None,
        on_step=None,
        engine: TrunkEngine | None = None,
    ):
        """`on_step(round, n_steps)` is called after every finished trunk step (for progress bars);
        `engine` replaces the one built from `cfg` (the distributed server passes its replicated one)."""
        from splitfed.models.client_adapter import client_adapter_shapes
        from splitfed.models.source import resolve_base_model

        self.cfg = cfg
        self.run_dir = Path(cfg.run.dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tb = self.run_dir / "tensorboard" / "server" if cfg.run.tensorboard else None
        self.metrics = MetricsWriter(self.run_dir / "metrics" / "server.jsonl", tensorboard=tb)
        clients = [client_name(k) for k in range(cfg.data.clients)]
        torch.manual_seed(cfg.run.seed)
        self.base_model = resolve_base_model(cfg.model, need_tokenizer=False)
        self.model_dir = self.base_model.path
        self.engine = engine or load_engine(cfg, self.model_dir, clients=clients)
        self.checkpoint_dir = self.run_dir / "checkpoint"
        start, client_state = self._resume(cfg.hash()) if resume else (0, {})
        outbox = Outbox()
        layout = AdapterLayout(client_adapter_shapes(self.model_dir, cfg.model.cut, cfg.lora.to_split_lora()))
        self.core = ServerCore(
            cfg,
            self.engine,
            server_aggregator(cfg, layout, metrics=outbox),
            outbox=outbox,
            model_fingerprint=self.base_model.fingerprint,
            hidden=int(self.engine.trunk.config.hidden_size),
            roster=run_roster(cfg) if cfg.aggregation.secure else None,
            start_round=start,
            client_state=client_state,
            now=time.monotonic(),
        )
        if self.core.done and not self.adapter_path.is_file():  # resumed after the last round's checkpoint
            self._export(Export(self.engine.final_state(), self.core.client_state))
        self.on_step = on_step or (lambda rnd, n: None)
        self.socket = ServerSocket(
            endpoint or cfg.transport.endpoint, keys_dir=cfg.transport.keys_dir, insecure=insecure
        )
        self.endpoint = self.socket.endpoint
        self.loop = RequestLoop(
            self.socket,
            self._dispatch,
            max_bytes=int(cfg.transport.max_message_mb * 1024 * 1024),
            log=log,
            on_reject=lambda err: self.metrics.write("error", code=err.code.value, detail=err.detail),
            on_ban=self._banned,
            limits=PeerLimits.of(cfg.server.limits),
        )
        self.metrics.write("start", endpoint=self.endpoint, round=self.round, mode=cfg.server.mode)

    @property
    def adapter_path(self) -> Path:
        """The exported PEFT adapter's weights (present once the last round is exported)."""
        return self.run_dir / "adapter" / "adapter_model.safetensors"

    @property
    def round(self) -> int:
        return self.core.round

    @property
    def done(self) -> bool:
        return self.core.done

    def _resume(self, config_hash: str) -> tuple[int, dict]:
        """Restore the last checkpoint into the engine; the round to continue with and the client aggregate."""
        ck = load_checkpoint(self.checkpoint_dir)
        if ck is None:
            log.warning("--resume: no checkpoint in %s, starting from round 0", self.checkpoint_dir)
            return 0, {}
        if ck.config_hash != config_hash:
            raise ConfigError(f"checkpoint in {self.checkpoint_dir} was written with a different configuration")
        self.engine.run(Restore(ck.trunk, ck.optimizers))
        log.info("resumed after round %d", ck.round_completed)
        return ck.round_completed + 1, ck.clients

    # ------------------------------------------------------------------ loop
    def serve(self, *, max_seconds: float | None = None) -> int:
        """Run until all rounds are done and every client has left (or timed out)."""
        try:
            finished = self.loop.run(
                poll_ms=int(self.cfg.transport.heartbeat_s * 1000),
                tick=self._tick,
                idle=self._idle,
                max_seconds=max_seconds,
            )
            if not finished:
                log.error("server ran past %.0f s; stopping", max_seconds)
            return 0 if finished else 1
        finally:
            self.metrics.write("stop", round=self.round)
            self.socket.close()

    def _dispatch(self, inc: Incoming, msg: Message) -> None:
        owner = self.socket.clients.get(inc.user) if inc.user is not None else None
        event = Received(inc.identity, msg, time.monotonic(), frames_nbytes(inc.frames), inc.user, owner)
        self._perform(self.core.handle(event))

    def _tick(self) -> bool:
        """Housekeeping after every message or poll timeout; True when the server is finished."""
        self._perform(self.core.handle(Tick(time.monotonic())))
        self.engine.tick()
        return self.core.finished

    def _idle(self) -> None:
        """The socket is drained: run the queued generation work (decode steps batched)."""
        self._perform(self.core.handle(Idle(time.monotonic())))

    def _banned(self, ban: Ban) -> None:
        """A peer over its limits is ignored for a cool-down: its session (and any step it holds) goes."""
        name = self.socket.clients.get(ban.user) if ban.user else None
        self.metrics.write("ban", client=name, reason=ban.reason.value, detail=ban.detail, cooldown_s=ban.cooldown_s)
        self._perform(self.core.handle(Banned(ban.identity, name, time.monotonic())))

    def _perform(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                self.socket.send(a.identity, a.frames)
            elif isinstance(a, Reject):
                self.loop.reject(a.identity, a.error, step=a.step)
            elif isinstance(a, Record):
                self.metrics.write(a.event, **a.fields)
            elif isinstance(a, Progress):
                self.on_step(self.round, a.steps)
            elif isinstance(a, SaveCheckpoint):
                save_checkpoint(self.checkpoint_dir, a.checkpoint)
            elif isinstance(a, Export):
                self._export(a)

    def _export(self, a: Export) -> Path:
        out = export_run_adapter(
            self.cfg,
            trunk_state=a.trunk_state,
            client_state=a.client_state,
            model_type=self.engine.trunk.layout.model_type,
            model_dir=self.model_dir,
        )
        self.metrics.write("export", path=str(out))
        log.info("exported the merged PEFT adapter to %s", out)
        return out
