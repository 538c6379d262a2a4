"""Type checks that read the same everywhere: `is_int` and `is_number` (a bool is neither).

Python's ``bool`` is a subclass of ``int``, so ``isinstance(True, int)`` holds; a config key,
a ledger count or a CLI value that must be a number refuses ``true`` with these.  Leaf module:
stdlib only, importable from anywhere in splitfed.
"""

from __future__ import annotations

from typing import Any


def is_int(x: Any) -> bool:
    """``x`` is an ``int`` and not a ``bool``."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    """``x`` is an ``int`` or a ``float`` and not a ``bool`` (NaN and infinities included)."""
    return isinstance(x, int | float) and not isinstance(x, bool)
