"""[generate]: how split generation picks and stops its tokens (validated, frozen).

Each client chooses its own sampling, so the table is local: it is left out of the config
hash (`splitfed.config.schema.HASH_EXCLUDED`).  It lives here, with the other tables, so that
`RunConfig` can hold it without importing `splitfed.inference` (torch); that package
re-exports it as ``splitfed.inference.GenerationSettings``.  Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from splitfed.config.fields import Section, opt, plain
from splitfed.config.tables import parse_table


@dataclass(frozen=True)
class GenerationSettings(Section):
    """[generate]: the token budget, greedy or sampled choice, and stop conditions.

    The sampling keys mean what they mean in Hugging Face ``generate``: ``temperature``,
    ``top_k`` and ``top_p`` apply only with ``do_sample``; ``repetition_penalty`` applies to
    greedy and sampled choice alike (prompt tokens included, padding excluded).
    """

    _key: ClassVar[str] = "generate"

    max_new_tokens: int = opt(64, "Most tokens generated per row.", ge=1)
    do_sample: bool = opt(False, "Sample the next token (true) or take the most likely one (false).")
    temperature: float = opt(1.0, "Divide the logits by this before sampling (do_sample only).", gt=0)
    top_k: int = opt(0, "Sample among the k most likely tokens; 0 = no limit (do_sample only).", ge=0)
    top_p: float = opt(1.0, "Sample within the smallest set of probability >= top_p (do_sample only).", gt=0, le=1)
    repetition_penalty: float = opt(1.0, "Penalise tokens already in the row (CTRL style); 1.0 = off.", gt=0)
    stop: tuple[str, ...] = opt((), "Stop a row once its generated text contains one of these strings.")
    seed: int | None = opt(None, "Seed of the sampling generator; unset = seeded from the global torch RNG.", ge=0)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> GenerationSettings:
        """Build from a TOML ``[generate]`` table (unknown keys and bad values are errors)."""
        return parse_table(cls, table, cls._key)

    def with_overrides(self, dotted: Mapping[str, Any]) -> GenerationSettings:
        """A copy with CLI overrides applied: keys ``max_new_tokens`` or ``generate.max_new_tokens``."""
        prefix = self._key + "."
        return self.from_table({**plain(self), **{k.removeprefix(prefix): v for k, v in dotted.items()}})
