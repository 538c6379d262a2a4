"""`SplitfedError`: the base of every error that is the user's to fix.

A bad config key, a missing model directory, a damaged ledger, a server that is not there:
each is raised as a subclass of `SplitfedError` whose message names what was expected and
what came.  The command line prints such an error as one line and exits 2; any other
exception is a bug and keeps its traceback.

Subclasses keep their historical standard base too (``class ConfigError(SplitfedError,
ValueError)``), so code that catches ``ValueError`` or ``FileNotFoundError`` still works.
`UsageError` is for the few user mistakes that have no more specific class (a CLI option
out of range, a missing file named on the command line).

Leaf module: stdlib only.  ``crypto/`` does not import splitfed, so its errors are caught
where splitfed calls it and re-raised as a `SplitfedError` when they are the user's to fix.
"""

from __future__ import annotations


class SplitfedError(Exception):
    """An error the user can fix: the message says what was expected and what came."""


class UsageError(SplitfedError, ValueError):
    """A command-line argument or option that cannot be used as given."""


class MissingFileError(SplitfedError, FileNotFoundError):
    """A file or directory the user named (or a run should hold) is not there."""


class AlreadyExistsError(SplitfedError, FileExistsError):
    """A file or directory a command would write is already there (the message names the flag that replaces it)."""


class MissingPackageError(SplitfedError, ImportError):
    """An optional package a feature needs is not installed; the message gives the install command."""
