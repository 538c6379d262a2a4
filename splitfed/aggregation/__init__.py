"""Combining the clients' adapters each round: plain FedAvg or SecAgg+ secure aggregation.

Both sit behind one interface per side (`Aggregator` on the server, `Uploader` on the
client); `server_aggregator` and `client_uploader` pick the one the run configures.
"""

from __future__ import annotations

from splitfed.aggregation.base import Aggregator, ClientUpdate, Outbox, Request, RoundOutcome, Uploader
from splitfed.aggregation.fedavg import FedAvg, PlainUpload, weighted_mean
from splitfed.aggregation.layout import AdapterLayout
from splitfed.config import RunConfig


def server_aggregator(cfg: RunConfig, layout: AdapterLayout, *, metrics) -> Aggregator:
    """FedAvg of plaintext adapters, or SecAgg+ when ``aggregation.secure``."""
    if not cfg.aggregation.secure:
        return FedAvg(layout)
    from splitfed.aggregation.secure import SecureAggregator
    from splitfed.transport import identity_keys

    return SecureAggregator(
        cfg.aggregation,
        layout,
        identity_keys=identity_keys(cfg.transport.keys_dir),
        n_clients=cfg.data.clients,
        metrics=metrics,
    )


def client_uploader(cfg: RunConfig, client_id: int, *, metrics) -> Uploader:
    """The client counterpart of `server_aggregator`."""
    if not cfg.aggregation.secure:
        return PlainUpload()
    from splitfed.aggregation.secure import SecureUpload
    from splitfed.transport import client_name, identity_keys, load_signing_key

    keys = cfg.transport.keys_dir
    return SecureUpload(
        client_id,
        cfg.aggregation,
        signing_key=load_signing_key(keys, client_name(client_id)),
        identity_keys=identity_keys(keys),
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
    "server_aggregator",
    "weighted_mean",
]
