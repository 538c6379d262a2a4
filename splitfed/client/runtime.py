"""The client process: holds Bottom + Top, its data and labels; reaches the trunk over ZeroMQ.

The connection and the remote trunk link are in `splitfed.client.link`.

Per round: ``training.local_steps`` split steps through the server, then the client adapter
goes to the server for aggregation and the aggregate comes back.  If the server goes
silent for ``transport.timeout_s`` the client reconnects by itself, says hello again and
continues from the round the server reports (a restarted server resumes from its last
checkpoint); `splitfed.client.reconnect` decides how long it keeps trying.  Its adapters in and
out (aggregate, audit copy, exported PEFT adapter) are in `splitfed.client.adapters`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch

from splitfed.aggregation import Uploader, client_uploader, run_roster
from splitfed.client.adapters import export_adapter, keep_update, take_result, wire_state
from splitfed.client.data import load_client_data, pad_id, releases_per_round, round_batches
from splitfed.client.evaluation import held_out_perplexity
from splitfed.client.link import Connection, RemoteLink, ServerLost, ServerRefused
from splitfed.client.privacy import ClientPrivacy
from splitfed.client.reconnect import ReconnectPolicy
from splitfed.config import RunConfig
from splitfed.errors import UsageError
from splitfed.metrics import MetricsWriter
from splitfed.models.client_adapter import load_client_adapter_state
from splitfed.privacy.ledger import describe, finite
from splitfed.transport import client_name
from splitfed.utility import utility_from_summary
from splitfed.wire import Header, Message, MsgType, WireError, encode
from splitfed.wire.meta import Bye, Hello

log = logging.getLogger("splitfed.client")


class Client:
    def __init__(
        self,
        cfg: RunConfig,
        client_id: int,
        *,
        insecure: bool = False,
        endpoint: str | None = None,
        uploader: Uploader | None = None,
    ):
        """`uploader` hands each round's adapter to the aggregation (default: the one the run configures)."""
        from splitfed.models import load_client_parts, load_tokenizer, set_lora
        from splitfed.models.placement import place, resolve_device
        from splitfed.models.source import resolve_base_model
        from splitfed.training import OptimConfig

        if not 0 <= client_id < cfg.data.clients:
            raise UsageError(f"--client-id must be in [0, {cfg.data.clients}), got {client_id}")
        self.cfg, self.client_id, self.name = cfg, client_id, client_name(client_id)
        self.run_dir = Path(cfg.run.dir)
        torch.manual_seed(cfg.run.seed)
        # model and data are checked before anything is written or sent: a bad file costs nothing
        self.base_model = resolve_base_model(cfg.model, need_tokenizer=bool(cfg.model.path))
        self.tokenizer = load_tokenizer(self.base_model.path)
        self.pad = pad_id(self.tokenizer)
        self.data = load_client_data(cfg, client_id, self.tokenizer, model=self.base_model.label)
        self.examples, self.eval_set = self.data.train, self.data.eval
        self.metrics = MetricsWriter(
            self.run_dir / "metrics" / f"{self.name}.jsonl", tensorboard=self._tensorboard_dir()
        )
        self.bottom, self.top = load_client_parts(self.base_model.path, tuple(cfg.model.cut))
        self.parts = {"bottom": self.bottom, "top": self.top}
        lora = cfg.lora.to_split_lora()
        for seed_offset, (role, part) in zip((0, 2), self.parts.items(), strict=True):
            set_lora(part, lora.for_role(role), seed=cfg.run.seed + seed_offset)  # the seeds apply_lora gives them
        self.device = resolve_device(cfg.client.device, key="client.device")
        for part in self.parts.values():
            place(part, self.device)  # float32: the client's parts are small, and DP-SGD wants exact sums
        self.optim = OptimConfig(lr=cfg.training.lr, weight_decay=cfg.training.weight_decay)
        self.roster = run_roster(cfg) if cfg.aggregation.secure else None
        self.uploader = uploader or client_uploader(cfg, client_id, metrics=self.metrics)
        self.privacy = (
            ClientPrivacy(cfg, client_id, self.name, n_examples=len(self.examples)) if cfg.privacy.enabled else None
        )
        if self.privacy is not None:  # noise tables take seconds: build them before talking to the server
            trainable = sum(p.numel() for part in (self.bottom, self.top) for p in part.parameters() if p.requires_grad)
            self.privacy.prepare(self.bottom.config.hidden_size, trainable=trainable)
        self.trunk_adapter: dict[str, torch.Tensor] | None = None  # the server's, once the run is done
        if self.privacy is not None and self.eval_set and cfg.data.train:
            log.warning(
                "%s: held-out evaluation sends the activations of %d held-out examples without noise and outside "
                "the privacy ledger; set data.eval_examples = 0 to keep them here",
                self.name,
                len(self.eval_set),
            )
        self.stepper = None  # built at the first connection, kept across reconnects (optimizer state)
        self.insecure, self.endpoint = insecure, endpoint
        self.losses: list[float] = []
        self.metrics.write(
            "start",
            client=self.name,
            n_samples=len(self.examples),
            eval_examples=len(self.eval_set),
            data=self.data.source,
            format=self.data.format,
            **self.data.stats,
            base_model=self.base_model.label,
            fingerprint=self.base_model.fingerprint,
        )

    def _tensorboard_dir(self) -> Path | None:
        return self.run_dir / "tensorboard" / self.name if self.cfg.run.tensorboard else None

    @property
    def adapter_dir(self) -> Path:
        """Where this client writes its fine-tuned PEFT adapter at the end of the run."""
        return (
            Path(self.cfg.client.adapter_dir)
            if self.cfg.client.adapter_dir
            else self.run_dir / "clients" / self.name / "adapter"
        )

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The client adapter as it goes on the wire (``bottom/...`` and ``top/...`` keys), on the host."""
        return wire_state(self.parts)

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        load_client_adapter_state(self.parts, state)

    def _take_result(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load the round's aggregate; keep the trunk adapter the server sends once the run is done."""
        trunk = take_result(self.parts, tensors, self.cfg, self.base_model)
        if trunk is not None:
            self.trunk_adapter = trunk

    def export(self) -> Path:
        """Write this client's fine-tuned model as one standard PEFT adapter for its own base model."""
        out = export_adapter(
            self.adapter_dir, self.cfg, self.parts, self.trunk_adapter, self.base_model, party=self.name
        )
        self.metrics.write("export", path=str(out), trunk_adapter=self.trunk_adapter is not None)
        return out

    def _send_update(self, conn: Connection, rnd: int, update: dict[str, torch.Tensor], loss: float | None) -> Message:
        """Hand the round's adapter to the aggregation; the round's aggregate comes back as ROUND_RESULT."""
        from crypto.secagg import ProtocolError

        def request(mtype: MsgType, meta, tensors, expect: frozenset[MsgType]) -> Message:
            return conn.request(Header(mtype, conn.session, rnd, 0, meta), tensors, expect=expect)

        try:
            return self.uploader.upload(request, rnd, update, loss)
        except (WireError, ProtocolError) as exc:
            raise ServerRefused(f"aggregation failed: {exc}") from exc

    def _hello(self, conn: Connection) -> Message:
        if self.privacy is not None:  # n_samples below is disclosed: recorded before it leaves
            self.privacy.ledger.append(self.privacy.hello_entries())
        h = Header(
            MsgType.HELLO,
            meta=Hello(
                client_id=self.client_id,
                config_hash=self.cfg.hash(),
                config_keys=self.cfg.key_digests(),
                model=self.base_model.fingerprint,
                roster=self.roster.digest if self.roster is not None else None,
                n_samples=len(self.examples),
            ),
        )
        msg = conn.request(h, expect=MsgType.WELCOME)
        conn.session = msg.header.session
        return msg

    def _stepper(self, link: RemoteLink):
        """The client half of a step (plain, or with this client's privacy mechanisms) over `link`."""
        if self.stepper is None:
            from splitfed.training import ClientStep

            if self.privacy is None:
                self.stepper = ClientStep(self.bottom, self.top, link, self.optim)
            else:
                self.stepper = self.privacy.stepper(self.bottom, self.top, link, self.optim, len(self.examples))
        self.stepper.link = link
        return self.stepper

    def _round_batches(self, rnd: int) -> tuple[list[dict | None], int]:
        """The round's batches (None: an empty Poisson batch) and how often its most-used example is sent."""
        if self.privacy is None or self.privacy.dpsgd is None:
            return (
                round_batches(self.cfg, self.examples, self.client_id, rnd, self.pad),
                releases_per_round(self.cfg, len(self.examples)),
            )
        return self.privacy.poisson_batches(self.examples, pad_token_id=self.pad)

    def _budget_stop(self, rnd: int, releases: int) -> str | None:
        """Record what round `rnd` will release; a reason to stop if that would exceed the budget."""
        if self.privacy is None:
            return None
        entries = self.privacy.round_entries(rnd, releases)
        over = self.privacy.over_budget(entries)
        if over is not None:
            budget = self.cfg.privacy.max_epsilon
            reason = f"privacy budget: round {rnd} would bring epsilon to {over:.3g} > privacy.max_epsilon = {budget:g}"
            log.warning("%s stops participating: %s", self.name, reason)
            self.metrics.write("budget_stop", round=rnd, epsilon=finite(over), max_epsilon=budget)
            return reason
        self.privacy.ledger.append(entries)
        return None

    def _train_round(self, conn: Connection, link: RemoteLink, stepper, rnd: int, batches, progress) -> Message:
        """The round's local steps through the server, then the update; returns ROUND_RESULT."""
        link.round = rnd
        losses = []
        for step, batch in enumerate(batches):
            link.step, link.train = step, True
            b0, i0, t0 = conn.traffic.bytes_out, conn.traffic.bytes_in, time.perf_counter()
            res = stepper.step(batch) if batch is not None else stepper.empty_step()
            if batch is not None:  # an empty Poisson batch has no loss
                losses.append(res.loss)
            self.metrics.write(
                "step",
                round=rnd,
                step=step,
                loss=res.loss,
                tokens=res.tokens,
                bytes_out=conn.traffic.bytes_out - b0,
                bytes_in=conn.traffic.bytes_in - i0,
                wall_s=time.perf_counter() - t0,
            )
            if progress is not None:
                progress(rnd, step, res.loss)
        self.losses.extend(losses)
        update = self.adapter_state()
        keep_update(self.run_dir / "clients" / self.name / f"update-round-{rnd}.safetensors", update)
        loss = sum(losses) / len(losses) if losses else None
        # the training loss is a statistic of the private data: with privacy on it stays here
        result = self._send_update(conn, rnd, update, None if self.privacy is not None else loss)
        self._take_result(result.tensors)
        self.metrics.write(
            "round",
            round=rnd,
            loss=loss,
            bytes_out=conn.traffic.bytes_out,
            bytes_in=conn.traffic.bytes_in,
            transport_s=conn.traffic.transport_s,
        )
        if self.privacy is not None:
            self.metrics.write("privacy", round=rnd, **self.privacy.round_statement())
        return result

    def run(self, *, progress=None, max_reconnect_s: float | None = None) -> dict:
        """Train every round; returns a summary (losses, perplexities, bytes)."""
        transport = self.cfg.transport
        policy = ReconnectPolicy(
            self.name,
            max_reconnect_s if max_reconnect_s is not None else 10 * transport.timeout_s,
            transport.connect_timeout_s,
        )
        summary: dict = {"client": self.name}
        conn = None
        while True:
            try:
                if conn is None:
                    conn = Connection(self.cfg, self.client_id, insecure=self.insecure, endpoint=self.endpoint)
                return self._session(conn, policy, summary, progress)
            except ServerLost as exc:
                if policy.lost(exc, now=time.monotonic(), welcomed=conn.welcomed, started=conn.started):
                    log.warning("%s: %s; reconnecting", self.name, exc)
                self.metrics.write("reconnect", reason=str(exc))
                time.sleep(min(1.0, transport.heartbeat_s))
                conn.sock.reconnect()  # just before the HELLO: a refusal comes after it left

    def _session(self, conn: Connection, policy: ReconnectPolicy, summary: dict, progress) -> dict:
        """One connection's part of the run, from HELLO to BYE; a lost server raises `ServerLost`."""
        welcome = self._hello(conn)
        policy.connected()
        link = self._link(conn, welcome)
        stepper = self._stepper(link)
        rnd, done = welcome.meta.round, welcome.meta.done
        if "ppl_before" not in summary and self.eval_set:
            # the public base model (every adapter off, here and on the server): the same
            # number whichever client trains first, and what a private run must beat
            summary["ppl_before"] = self.evaluate(link, base=True)
            self.metrics.write("eval", round=-1, model="base", perplexity=summary["ppl_before"])
        while not done:
            batches, releases = self._round_batches(rnd)
            stop = self._budget_stop(rnd, releases)
            if stop:
                summary["stopped"] = stop
                break
            result = self._train_round(conn, link, stepper, rnd, batches, progress)
            rnd, done = result.meta.round, result.meta.done
        self._conclude(link, summary, rnd, done)
        summary.update(losses=self.losses, bytes_out=conn.traffic.bytes_out, bytes_in=conn.traffic.bytes_in)
        traffic = Bye(bytes_out=conn.traffic.bytes_out, bytes_in=conn.traffic.bytes_in)
        with contextlib.suppress(ConnectionError):  # the run is done: a BYE that cannot leave is no loss
            conn.sock.send(encode(Header(MsgType.BYE, conn.session, rnd, 0, traffic)), timeout_ms=1000)
        time.sleep(0.2)  # let the BYE leave before the socket closes
        conn.close()
        self.metrics.write("done", **{k: v for k, v in summary.items() if k != "losses"})
        return summary

    def _link(self, conn: Connection, welcome: Message) -> RemoteLink:
        """The trunk link the server's WELCOME describes; its adapters are loaded."""
        meta = welcome.meta
        if meta.compression != self.cfg.transport.compression or meta.hidden != self.bottom.config.hidden_size:
            raise ServerRefused(f"server runs compression {meta.compression} / hidden {meta.hidden}")
        self._take_result(welcome.tensors)
        private = self.privacy is not None  # a discrete channel's release goes as its integers
        act_step, grad_step = self.privacy.grid_steps(meta.hidden) if private else (0.0, 0.0)
        return RemoteLink(conn, self.cfg.transport.compression, meta.hidden, act_step=act_step, grad_step=grad_step)

    def _conclude(self, link: RemoteLink, summary: dict, rnd: int, done: bool) -> None:
        """The end of the run: held-out perplexity against the base model, the export, the privacy statement."""
        if self.eval_set:
            summary["ppl_after"] = self.evaluate(link)
            self.metrics.write("eval", round=rnd, model="fine-tuned", perplexity=summary["ppl_after"])
            utility = utility_from_summary(summary)
            if utility is not None:  # the public base model: the floor a fine-tuned model must beat
                summary["utility"] = utility.to_json()
        if done:
            summary["adapter"] = str(self.export())
            summary["trunk_adapter"] = self.trunk_adapter is not None
        if self.privacy is not None:
            summary["privacy"] = describe(self.privacy.statements(), self.cfg.privacy.delta)

    def evaluate(self, link: RemoteLink, *, base: bool = False) -> float:
        """Held-out perplexity of the whole split model; `base`: of the public base model."""
        return held_out_perplexity(
            self.bottom,
            self.top,
            link,
            self.eval_set,
            pad_token_id=self.pad,
            padding_side=self.cfg.data.padding_side,
            device=self.device,
            base=base,
        )
