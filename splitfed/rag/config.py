"""TOML configuration of a RAG party and of the querier's list of parties.

Both are config classes of `splitfed.config` (typed, validated, errors name the key); the
files ``splitfed rag index`` writes are ``dump_toml`` of them.

party.toml::

    name = "hospital-a"
    index = "rag/index"            # built by `splitfed rag index`
    endpoint = "tcp://0.0.0.0:6000"
    keys_dir = "rag/keys"          # CURVE: NAME.key* is the party's own pair, allowed/ the queriers' public keys
    noise_std = 0.0                # score noise, cosine units: discrete Gaussian, noise multiplier noise_std / 2
    k_max = 10                     # most documents one fetch may ask for
    delta = 1e-5                   # per-querier (epsilon, delta) statements
    max_epsilon = 0.0              # refuse a querier past this epsilon (0 = no budget; needs noise)
    ledger_dir = ""                # per-querier ledgers; "" = <index>-ledger

parties.toml (querier)::

    keys_dir = "querier-keys"      # the querier's own pair: NAME.key_secret (never leaves its machine)
    name = "querier"
    timeout_s = 30.0
    [[party]]
    name = "hospital-a"
    endpoint = "tcp://hospital-a.example:6000"
    public_key = "querier-keys/parties/hospital-a.key"  # the party's public key file (NAME.key)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from splitfed.config.fields import Section, key_error, opt, req
from splitfed.config.parties import ENDPOINT
from splitfed.config.toml import load_toml


@dataclass(frozen=True)
class PartyConfig(Section):
    """One data party: its vector store, where it listens, and its mitigations."""

    name: str = req("Party name, as the querier lists it.", nonempty=True)
    index: str = req("Vector store directory (built by `splitfed rag index`).", nonempty=True, path=True)
    endpoint: str = req("Address to listen on (tcp://host:port or ipc://path).", **ENDPOINT)
    keys_dir: str = opt(
        "", "CURVE keys: NAME.key* is the party's own pair, allowed/ the queriers' keys; \"\" for none.", path=True
    )
    noise_std: float = opt(
        0.0,
        "Score noise in cosine units: integer discrete Gaussian noise with noise multiplier noise_std / 2 "
        "(a DP mechanism, per querier; see docs/rag.md).",
        ge=0,
    )
    k_max: int = opt(10, "Most documents one fetch may ask for.", ge=1)
    delta: float = opt(1e-5, "delta of the per-querier epsilon statements.", gt=0, lt=1)
    max_epsilon: float = opt(0.0, "Refuse a querier whose next answer would exceed this epsilon (0 = no budget).", ge=0)
    ledger_dir: str = opt("", 'Per-querier privacy ledgers; "" = <index>-ledger next to the index.', path=True)

    def _check(self) -> None:
        if self.max_epsilon > 0 and self.noise_std == 0:
            raise key_error("max_epsilon", "a budget needs noise_std > 0 (noiseless scores have an infinite epsilon)")


@dataclass(frozen=True)
class PartyAddress(Section):
    """Where the querier reaches one party."""

    _key: ClassVar[str] = "party"

    name: str = req("Party name.", nonempty=True)
    endpoint: str = req("The party's address (tcp://host:port or ipc://path).", **ENDPOINT)
    public_key: str | None = opt(
        None,
        "The party's public key file (NAME.key, as the party sent it); needed for CURVE.",
        path=True,
        expected="a file path (string)",
    )


@dataclass(frozen=True)
class QuerierConfig(Section):
    """The querier: its own key pair, the parties it asks and how long it waits for each."""

    parties: tuple[PartyAddress, ...] = req(
        "[[party]]: one table per party.", toml="party", expected="at least one [[party]] table", check=bool
    )
    keys_dir: str = opt("", 'The querier\'s own key pair (NAME.key_secret); "" for none (--insecure).', path=True)
    name: str = opt("querier", "Name of the querier's key pair in keys_dir.", nonempty=True)
    timeout_s: float = opt(30.0, "Seconds to wait for a party before leaving it out.", gt=0)

    def _check(self) -> None:
        names = [p.name for p in self.parties]
        if len(set(names)) != len(names):
            raise key_error("party", f"expected distinct party names, got {names}")


def load_party_config(path: str | os.PathLike) -> PartyConfig:
    """Read and validate a party's TOML file; errors are `ConfigError` naming the file and key."""
    return load_toml(PartyConfig, path)


def load_querier_config(path: str | os.PathLike) -> QuerierConfig:
    """Read and validate the querier's TOML file; errors are `ConfigError` naming the file and key."""
    return load_toml(QuerierConfig, path)
