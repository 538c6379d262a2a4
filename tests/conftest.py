"""Shared fixtures.  Helpers importable by name live in splitfed_testing.py (a conftest
module name is not unique across the test tree)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


_PROCESS_DIRS = ("integration", "docs")  # every test there starts processes


def pytest_collection_modifyitems(config, items):
    """Mark the tests under tests/integration and tests/docs `process` (elsewhere the marker is
    written on the test itself), so `make test-fast` can leave them out."""
    root = config.rootpath / "tests"
    for item in items:
        parts = item.path.relative_to(root).parts if item.path.is_relative_to(root) else ()
        if parts and parts[0] in _PROCESS_DIRS:
            item.add_marker(pytest.mark.process)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"
