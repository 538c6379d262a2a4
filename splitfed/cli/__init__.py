"""The `splitfed` command."""
