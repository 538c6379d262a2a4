"""[server], [server.limits], [server.inference], [client] and [transport]: where each party runs, what the
server accepts from a peer, and the ZeroMQ link between them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from splitfed.config.fields import Section, key_error, opt, sub

ServerMode = Literal["shared", "per_client"]
#: What crosses a cut on the wire (`splitfed.wire.compression`); the one definition, also used by eval.
Compression = Literal["fp32", "fp16", "bf16", "int8"]
DTypeName = Literal["float32", "bfloat16", "float16"]
#: A roster fingerprint as `splitfed keys show` prints it (spaces removed), or nothing.
FINGERPRINT = re.compile(r"([0-9a-fA-F]{16}|[0-9a-fA-F]{64})?")
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
DEVICE_EXPECTED = "'auto', 'cpu', 'cuda' or 'cuda:N'"


def valid_device(spec: str) -> bool:
    """Whether `spec` names a device the config accepts (availability is checked where it is used)."""
    return isinstance(spec, str) and bool(DEVICE_PATTERN.fullmatch(spec))


#: Checks of a device field (``opt("auto", help, **DEVICE)``); availability is checked where it is used.
DEVICE: Mapping[str, Any] = {"expected": DEVICE_EXPECTED, "check": valid_device}

#: Checks of a ZeroMQ endpoint field (``opt(default, help, **ENDPOINT)``).
ENDPOINT: Mapping[str, Any] = {
    "expected": "a string starting with 'tcp://' or 'ipc://'",
    "check": lambda s: s.startswith(("tcp://", "ipc://")) and len(s) > len("tcp://"),
}


@dataclass(frozen=True)
class PeerLimitsSection(Section):
    """[server.limits]: what one peer (one CURVE key) may send before it is ignored for a cool-down."""

    _key: ClassVar[str] = "server.limits"

    max_rate: float = opt(200.0, "Messages per second a peer may send, sustained (0 = no limit).", ge=0)
    burst: int = opt(400, "... plus this many at once.", ge=1)
    max_errors: int = opt(100, "Rejected messages allowed within error_window_s (0 = no limit).", ge=0)
    error_window_s: float = opt(10.0, "Window of the error budget, in seconds.", gt=0)
    cooldown_s: float = opt(30.0, "Seconds a peer over a limit is ignored (its messages dropped unread).", gt=0)


@dataclass(frozen=True)
class InferenceSection(Section):
    """[server.inference]: split generation streams (`splitfed generate`): how many, how long, batched or not.

    A stream's KV cache holds rows x positions x 2 x (trunk layers) x (key/value width) floats;
    a stream reserves rows x positions when it opens, so ``max_cache`` bounds the caches' memory
    and ``max_client_cache`` what one client can take of it."""

    _key: ClassVar[str] = "server.inference"

    serve: bool = opt(False, "After the last round keep serving generation streams until stopped (Ctrl-C).")
    batch: bool = opt(True, "Run the decode steps of concurrent streams as one trunk forward.")
    max_batch_rows: int = opt(64, "Most rows (prompts) in one batched decode forward.", ge=1)
    max_streams: int = opt(64, "Generation streams open at once on this server; more are refused.", ge=1)
    max_streams_per_client: int = opt(4, "Generation streams one client may hold open at once.", ge=1)
    max_positions: int = opt(2048, "Most positions (prompt + generated tokens) one stream may hold.", ge=1)
    max_client_cache: int = opt(
        8192, "Most cached positions (rows x positions, as opened) of one client's streams together.", ge=1
    )
    max_cache: int = opt(
        32768, "Most cached positions (rows x positions, as opened) of all streams: the caches' memory bound.", ge=1
    )
    idle_timeout_s: float = opt(60.0, "A stream idle this long is closed and its cache freed.", gt=0)


@dataclass(frozen=True)
class ServerSection(Section):
    """[server]: how the server runs the trunk for its clients."""

    _key: ClassVar[str] = "server"

    mode: ServerMode = opt(
        "shared",
        "shared: one trunk adapter for all clients (SFL-V2); per_client: one per client, averaged each round (SFL-V1).",
    )
    batch_clients: bool = opt(False, "Run waiting clients' activations through the trunk as one batch.")
    round_deadline_s: float = opt(300.0, "Seconds per round; clients that miss it are left out of that round.", gt=0)
    max_batch: int = opt(64, "Largest batch a client may send.", ge=1)
    max_seq: int = opt(2048, "Longest sequence a client may send.", ge=1)
    step_timeout_s: float = opt(
        120.0, "A client holding a trunk step (forward sent, no backward) longer than this loses it.", gt=0
    )
    max_abs_value: float = opt(
        1e5, "Largest |value| accepted in activations and gradients (finite but huge values are refused).", gt=0
    )
    max_samples: int = opt(10_000_000, "Largest sample count (FedAvg weight) a client may declare.", ge=1)
    share_trunk_adapter: bool = opt(
        True, "Send the final trunk adapter to every client, so each leaves with the whole fine-tuned model."
    )
    device: str = opt("auto", "Where the trunk runs: auto (CUDA when present), cpu, cuda or cuda:N.", **DEVICE)
    dtype: DTypeName = opt(
        "float32",
        "Frozen trunk weights: float32, bfloat16 or float16 (autocast; LoRA and optimizer stay float32).",
    )
    limits: PeerLimitsSection = sub(PeerLimitsSection, "[server.limits]: per-peer message rate and error budget.")
    inference: InferenceSection = sub(InferenceSection, "[server.inference]: generation streams and their limits.")


@dataclass(frozen=True)
class ClientSection(Section):
    """[client]: where a client runs its Bottom and Top."""

    _key: ClassVar[str] = "client"

    device: str = opt("auto", "Where Bottom and Top run: auto (CUDA when present), cpu, cuda or cuda:N.", **DEVICE)
    adapter_dir: str = opt(
        "", 'Where this client writes its fine-tuned PEFT adapter ("" = run.dir/clients/client-K/adapter).', path=True
    )


@dataclass(frozen=True)
class TransportSection(Section):
    """[transport]: the ZeroMQ link between clients and server."""

    _key: ClassVar[str] = "transport"

    endpoint: str = opt("tcp://127.0.0.1:5555", "Server address (tcp://host:port or ipc://path).", **ENDPOINT)
    keys_dir: str = opt("keys", "Directory of CURVE key files (see `splitfed keys generate`).", nonempty=True)
    insecure: bool = opt(False, "Plaintext transport, no CURVE encryption; only honoured with an explicit flag.")
    compression: Compression = opt(
        "fp32",
        "Encoding of activations and gradients: fp32, fp16, bf16 or int8.  Not applied to a channel whose "
        "privacy mechanism is discrete: its training release goes as the mechanism's integers (int16/int32).",
    )
    heartbeat_s: float = opt(2.0, "Seconds between heartbeats.", gt=0)
    timeout_s: float = opt(60.0, "Seconds of silence after which a peer is considered gone.", gt=0)
    connect_timeout_s: float = opt(
        30.0,
        "Seconds a client waits for its first connection to the server (TCP and CURVE handshake) before it gives "
        "up; once welcomed, a client that loses the server keeps reconnecting for 10 x timeout_s.",
        gt=0,
    )
    max_message_mb: float = opt(256.0, "Largest message accepted, in MB.", gt=0)

    def _check(self) -> None:
        if not self.timeout_s > self.heartbeat_s:
            raise key_error(
                "transport.timeout_s",
                f"expected a number > transport.heartbeat_s ({self.heartbeat_s!r}), got {self.timeout_s!r}",
            )
