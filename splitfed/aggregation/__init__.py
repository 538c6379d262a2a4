"""Combining the clients' adapters each round: plain FedAvg or SecAgg+ secure aggregation.

Both sit behind one interface per side (`Aggregator` on the server, `Uploader` on the
client); `server_aggregator` and `client_uploader` pick the one the run configures.
"""

from __future__ import annotations

from splitfed.aggregation.base import Aggregator, ClientUpdate, Outbox, Request, RoundOutcome, Uploader
from splitfed.aggregation.fedavg import FedAvg, PlainUpload, weighted_mean
from splitfed.aggregation.layout import AdapterLayout
from splitfed.config import RunConfig


def run_roster(cfg: RunConfig):
    """The secure-aggregation roster this party uses (``aggregation.roster``, or ``roster.toml`` in the
    keys directory), checked to list every client of the run and against a pinned fingerprint."""
    from pathlib import Path

    from splitfed.transport.keys import KeyFileError
    from splitfed.transport.roster import ROSTER_FILE, load_roster

    roster = load_roster(cfg.aggregation.roster or Path(cfg.transport.keys_dir) / ROSTER_FILE)
    roster.require(cfg.data.clients)
    pinned = cfg.aggregation.roster_fingerprint
    if pinned and not roster.matches(pinned):
        raise KeyFileError(
            f"roster {roster.path} has fingerprint {roster.fingerprint}, but aggregation.roster_fingerprint pins "
            f"{pinned}: this is not the roster the parties agreed on"
        )
    return roster


def server_aggregator(cfg: RunConfig, layout: AdapterLayout, *, metrics) -> Aggregator:
    """FedAvg of plaintext adapters, or SecAgg+ when ``aggregation.secure``."""
    if not cfg.aggregation.secure:
        return FedAvg(layout)
    from splitfed.aggregation.secure import SecureAggregator

    return SecureAggregator(
        cfg.aggregation,
        layout,
        identity_keys=run_roster(cfg).identity_keys,
        n_clients=cfg.data.clients,
        metrics=metrics,
    )


def client_uploader(cfg: RunConfig, client_id: int, *, metrics) -> Uploader:
    """The client counterpart of `server_aggregator`."""
    if not cfg.aggregation.secure:
        return PlainUpload()
    from splitfed.aggregation.secure import SecureUpload
    from splitfed.transport import client_name, load_signing_key

    return SecureUpload(
        client_id,
        cfg.aggregation,
        signing_key=load_signing_key(cfg.transport.keys_dir, client_name(client_id)),
        identity_keys=run_roster(cfg).identity_keys,
        metrics=metrics,
    )


__all__ = [
    "AdapterLayout",
    "Aggregator",
    "ClientUpdate",
    "FedAvg",
    "Outbox",
    "PlainUpload",
    "Request",
    "RoundOutcome",
    "Uploader",
    "client_uploader",
    "run_roster",
    "server_aggregator",
    "weighted_mean",
]
