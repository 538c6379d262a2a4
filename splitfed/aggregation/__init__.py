"""Aggregation of client adapters each round (plain FedAvg now; secure aggregation plugs in here)."""

from splitfed.aggregation.fedavg import Aggregator, FedAvg, weighted_mean

__all__ = ["Aggregator", "FedAvg", "weighted_mean"]
