"""[generate]: how split generation picks and stops its tokens.

The section is declared in `splitfed.config.generate` (the run config holds it as
``RunConfig.generate`` and the config package never imports torch); it is re-exported here so
that ``from splitfed.inference.settings import GenerationSettings`` keeps working.
"""

from __future__ import annotations

from splitfed.config.generate import GenerationSettings

__all__ = ["GenerationSettings"]
