"""A client's privacy at inference: local DP on what its Bottom sends while generating, and its ledger.

The privacy unit is one **prompt** (one row of a generation session, with the text generated
from it: both stay on the client).  What the server receives per prompt is the prompt's
activations at the first cut (the prefill) and one position per new token after the first:
``max_new_tokens - 1`` decode positions, always (``fixed_steps``: the rows are stepped to the
end even after EOS, so the number of releases does not tell when the text stopped).  Each of
them goes through ``[privacy.activations]``, the training mechanism with the same clip and
noise multiplier:

- ``unit = "sequence"``: the prefill is one release (the prompt's positions clipped together),
  each decode position another: ``1 + max_new_tokens - 1`` releases at the channel's multiplier;
- ``unit = "token"``: every position is a release: ``T + max_new_tokens - 1`` of them, i.e. one
  release at ``nm / sqrt(T + max_new_tokens - 1)`` for the prompt.

Without ``[privacy.activations]`` the positions go as they are and the ledger records them as
non-private (epsilon infinite); with ``privacy.secure_noise = false`` likewise (the server can
replay the noise).  The session's entries are appended to
``<run.dir>/privacy/inference/<client>.jsonl`` **before** the first release (a session cut
short still counts in full); in that ledger ``round`` numbers the session.  Stated:

- per session: epsilon for one prompt of that session, against the server;
- per client: every session composed, the bound for a text that is in every prompt the
  client sent (a patient's note quoted in each question).

``privacy.max_epsilon`` caps the per-client figure: a session that would take it over is
refused before anything is sent.  Not covered by any epsilon: the number of prompts and their
lengths (the attention mask travels in the clear) and ``max_new_tokens``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch

from splitfed.client.privacy import mechanism_of
from splitfed.config import RunConfig
from splitfed.errors import UsageError
from splitfed.privacy.events import NonPrivateEvent, Party
from splitfed.privacy.ledger import REPRODUCIBLE_NOISE, Disclosure, Ledger, LedgerEntry, Statement, statements
from splitfed.privacy.mechanisms import DiscreteGaussianLDP, NoiseSource, SecureNoise, TorchNoise
from splitfed.privacy.report import write_settings

UNIT = "prompt"
SHAPE = (
    "the attention mask travels in the clear: the number of prompts, each prompt's length, and "
    "max_new_tokens (the session's steps)"
)
RAW = "privacy.activations is off: the Bottom's activations are sent as they are"


def inference_ledger_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / "privacy" / "inference" / f"{name}.jsonl"


@dataclasses.dataclass(frozen=True)
class InferenceSession:
    """One generation session's releases: `release(h, mask)` for the generator, and its statements."""

    number: int
    release: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # applied to each tensor before it is sent
    entries: tuple[LedgerEntry, ...]
    session: tuple[Statement, ...]  # this session alone (one prompt)
    client: tuple[Statement, ...]  # every session of this client so far, this one included
    delta: float
    ledger: Path

    def epsilon(self, which: str = "session") -> float:
        """Against the server: for one prompt of this session (``"session"``), or every session composed."""
        return _against_server(self.session if which == "session" else self.client)


class InferencePrivacy:
    def __init__(self, cfg: RunConfig, name: str, *, noise: NoiseSource | None = None, seed: int | None = None):
        """`noise` (tests only): injected noise, taken as secret.  With ``privacy.secure_noise = false``
        the noise is seeded from `seed` (from the shared config) and recorded as non-private."""
        self.cfg, self.name = cfg, name
        p = cfg.privacy
        self.reproducible = not p.secure_noise
        if noise is None:
            noise = TorchNoise(torch.Generator().manual_seed(seed or 0)) if self.reproducible else SecureNoise()
        self.noise = noise
        self.ledger = Ledger(inference_ledger_path(cfg.run.dir, name))
        self.ledger.entries()  # a damaged ledger (LedgerError, file:line) stops generation before it releases
        root = self.ledger.path.parent.parent
        write_settings(root, delta=p.delta, accountant=p.accountant, max_epsilon=p.max_epsilon)

    def open(self, *, rows: int, prompt_positions: int, max_new_tokens: int, hidden: int) -> InferenceSession:
        """Plan, check against the budget and record one session of `rows` prompts padded to
        `prompt_positions`, then return its release function.  `UsageError` over budget."""
        p = self.cfg.privacy
        past = self.ledger.entries()
        number = 1 + max((e.round for e in past), default=0)
        positions = prompt_positions + max_new_tokens - 1  # positions sent per prompt
        # the discrete noise table depends on the sequence unit's size: sized for a power of two of
        # positions (a little more noise), so sessions of nearby lengths share one table (seconds to build)
        bucket = 1 << (positions - 1).bit_length()
        mech = mechanism_of(p.activations, p.delta, max_positions=bucket)
        entries = [LedgerEntry(number, "prompt_shape", Party.SERVER, Disclosure(1), unit=UNIT, reason=SHAPE)]
        if mech is None:
            raw = NonPrivateEvent(positions)
            entries.append(LedgerEntry(number, "raw_inference_activations", Party.SERVER, raw, UNIT, reason=RAW))
        else:
            discrete = isinstance(mech, DiscreteGaussianLDP)
            if discrete:
                mech.prepare(hidden)  # the noise table now, not at the first release
            kw = {"hidden": hidden} if discrete else {}  # the table's own sampler slack
            if mech.unit == "sequence":  # the prefill, then each decode position
                event = mech.event(max_new_tokens, max_positions=bucket, **kw)
            else:  # every position on its own: one release at nm / sqrt(positions)
                event = mech.event(1, max_positions=positions, **kw)
            entry = LedgerEntry(number, "inference_activation_ldp", Party.SERVER, event, UNIT, mech.clip)
            if self.reproducible:
                entry = dataclasses.replace(entry, event=NonPrivateEvent(event.count), reason=REPRODUCIBLE_NOISE)
            entries.append(entry)
        client = statements([*past, *entries], p.delta, accountant=p.accountant)
        total = _against_server(client)
        if p.max_epsilon > 0 and total > p.max_epsilon:
            spent = _against_server(statements(past, p.delta, accountant=p.accountant))
            raise UsageError(
                f"privacy budget: this session would take {self.name}'s inference epsilon against the server to "
                f"{_fmt(total)}, above privacy.max_epsilon = {p.max_epsilon:g} (spent so far: {_fmt(spent)}); "
                "nothing was sent"
            )
        self.ledger.append(entries)
        release = _identity if mech is None else _Release(mech, self.noise)
        session = statements(entries, p.delta, accountant=p.accountant)
        return InferenceSession(
            number, release, tuple(entries), tuple(session), tuple(client), p.delta, self.ledger.path
        )


def _against_server(stated) -> float:
    return next((s.epsilon for s in stated if s.party == Party.SERVER.value), 0.0)


def _identity(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return h


class _Release:
    def __init__(self, mech, noise: NoiseSource):
        self.mech, self.noise = mech, noise

    def __call__(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mech.apply(h, mask, self.noise).detach()


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else "inf"
