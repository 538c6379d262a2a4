"""Shared fixtures.  Helpers importable by name live in splitfed_testing.py (a conftest
module name is not unique across the test tree)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"
