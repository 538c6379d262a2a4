"""What the server checks in activations and gradients before they reach the trunk."""

from __future__ import annotations

import torch

from splitfed.config import RunConfig
from splitfed.config.schema import flat_items
from splitfed.models.source import short_fingerprint
from splitfed.transport import client_name
from splitfed.transport.keys import key_fingerprint
from splitfed.transport.roster import format_fingerprint
from splitfed.wire import INTEGERS, ErrorCode, Message, WireError, decompress
from splitfed.wire.messages import short
from splitfed.wire.meta import Hello


def activations_encoding(cfg: RunConfig, *, train: bool) -> str:
    """How a FORWARD's activations travel: a training forward under the discrete mechanism carries
    its integers; any other (evaluation, non-private, float mechanism) ``transport.compression``."""
    return INTEGERS if train and cfg.privacy.releases_integers(cfg.privacy.activations) else cfg.transport.compression


def gradient_encoding(cfg: RunConfig) -> str:
    """How a BACKWARD's gradient travels: the discrete mechanism's integers, else ``transport.compression``."""
    return INTEGERS if cfg.privacy.releases_integers(cfg.privacy.gradients) else cfg.transport.compression


def check_activations(
    msg: Message, cfg: RunConfig, *, hidden: int, train: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A FORWARD's (B, T, D) float32 activations and (B, T) long mask, within the server's limits
    (``train`` picks the encoding)."""
    mask = msg.tensors.get("mask")
    if mask is None or mask.dtype != torch.uint8 or mask.dim() != 2:
        raise WireError(ErrorCode.BAD_TENSOR, f"{msg.type.value} needs 'mask': uint8 (batch, tokens)")
    b, t = mask.shape
    max_b, max_t = cfg.server.max_batch, cfg.server.max_seq
    if not (1 <= b <= max_b and 1 <= t <= max_t):
        raise WireError(ErrorCode.BAD_TENSOR, f"batch x tokens {b} x {t} outside limits 1..{max_b} x 1..{max_t}")
    if bool((mask > 1).any()) or bool((mask.sum(-1) == 0).any()):
        raise WireError(ErrorCode.BAD_TENSOR, "mask must be 0/1 with at least one token per row")
    act = decompress("act", msg.tensors, activations_encoding(cfg, train=msg.meta.train if train is None else train))
    if tuple(act.shape) != (b, t, hidden):
        raise WireError(ErrorCode.BAD_TENSOR, f"act: expected shape {[b, t, hidden]}, got {list(act.shape)}")
    check_bound("act", act, cfg.server.max_abs_value)
    return act, mask.long()


def check_bound(name: str, x: torch.Tensor, bound: float) -> None:
    """Finite but huge values (3e38) would make the shared trunk non-finite: refuse them."""
    peak = float(x.abs().max()) if x.numel() else 0.0
    if not peak <= bound:
        raise WireError(
            ErrorCode.BAD_TENSOR, f"{name}: |value| up to {peak:.3g} exceeds server.max_abs_value {bound:g}"
        )


MAX_NAMED_KEYS = 8  # differing keys named in one config-mismatch error


def check_identity(hello: Hello, clients: int, user: str | None, key_owner: str | None) -> str:
    """The client a HELLO names, if it exists and the CURVE key (`user`, owned by `key_owner`
    per the allow-list; None in insecure mode) is that client's."""
    if hello.client_id >= clients:
        raise WireError(ErrorCode.UNKNOWN_CLIENT, f"client_id must be in [0, {clients}), got {hello.client_id}")
    name = client_name(hello.client_id)
    if user is not None and key_owner != name:
        raise WireError(
            ErrorCode.WRONG_IDENTITY,
            f"this key (fingerprint {key_fingerprint(user)}) belongs to {key_owner}, not {name}",
        )
    return name


def check_agreement(
    hello: Hello,
    client: str,
    cfg: RunConfig,
    *,
    config_hash: str,
    digests: dict[str, str],
    roster,
    model_fingerprint: str,
) -> None:
    """The same configuration, roster and base model as the server's, or a CONFIG_MISMATCH
    `WireError` naming the difference."""
    if hello.config_hash != config_hash:
        raise WireError(ErrorCode.CONFIG_MISMATCH, config_difference(cfg, digests, hello.config_keys, client))
    if roster is not None and hello.roster != roster.digest:
        theirs = format_fingerprint(hello.roster) if hello.roster is not None else "none"
        raise WireError(
            ErrorCode.CONFIG_MISMATCH,
            f"different secure-aggregation roster: the server's has fingerprint {roster.fingerprint}, "
            f"{client}'s {theirs} (every party needs the same roster.toml)",
        )
    if hello.model != model_fingerprint:
        raise WireError(
            ErrorCode.CONFIG_MISMATCH,
            f"different base model: the server's is {short_fingerprint(model_fingerprint)}, "
            f"{client}'s is {short_fingerprint(hello.model)} (every party needs a copy of the same weights)",
        )


def config_difference(cfg: RunConfig, digests: dict[str, str], theirs: dict[str, str] | None, client: str) -> str:
    """Why a client's config hash differs from the server's, naming the differing keys (and the
    server's values) from the per-key digests the client sent at HELLO (`theirs`)."""
    generic = f"{client} was started with a different configuration than the server"
    if (
        not isinstance(theirs, dict)
        or len(theirs) > 4 * len(digests) + 64
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in theirs.items())
    ):
        return generic + " (it sent no per-key digests: an older splitfed?)"
    differ = sorted(k for k in digests.keys() & theirs.keys() if digests[k] != theirs[k])
    only_server = sorted(digests.keys() - theirs.keys())
    only_client = sorted(theirs.keys() - digests.keys())
    values = dict(flat_items(cfg.agreed()))
    parts = [f"{key} (server: {short(values[key], 40)})" for key in differ[:MAX_NAMED_KEYS]]
    if len(differ) > MAX_NAMED_KEYS:
        parts.append(f"and {len(differ) - MAX_NAMED_KEYS} more")
    if only_server:
        parts.append(f"keys only the server knows: {', '.join(short(k, 40) for k in only_server[:MAX_NAMED_KEYS])}")
    if only_client:
        parts.append(f"keys only {client} knows: {', '.join(short(k, 40) for k in only_client[:MAX_NAMED_KEYS])}")
    if not parts:
        return generic
    return (
        f"{client}'s configuration differs from the server's in {', '.join(parts)}; every party must use the same "
        "values for these (only local keys such as paths and devices may differ)"
    )
