"""Fixtures of the ServerCore tests (helpers in core_harness.py)."""

from __future__ import annotations

import pytest
from core_harness import Harness, make_config

from splitfed.aggregation import AdapterLayout
from splitfed.models.client_adapter import client_adapter_shapes
from splitfed.models.fingerprint import model_fingerprint


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama on disk, its fingerprint and the client adapter layout (default LoRA)."""
    from splitfed_testing import make_model_dir

    d = make_model_dir(tmp_path_factory.mktemp("core-model") / "tiny", "llama", tokenizer=False)
    cfg = make_config(d, tmp_path_factory.mktemp("core-run"))
    layout = AdapterLayout(client_adapter_shapes(d, cfg.model.cut, cfg.lora.to_split_lora()))
    return d, model_fingerprint(d), layout


@pytest.fixture
def make_core(tiny_model_dir, tmp_path):
    n = iter(range(100))

    def make(**kwargs) -> Harness:
        return Harness(tiny_model_dir, tmp_path / f"run{next(n)}", **kwargs)

    return make
