# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# torch first, pinned: a looser requirement would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## a local swarm on 127.0.0.1: start, discover, print status, stop
	$(BIN)/potluck demo

test: $(STAMP)  ## the whole suite, multi-process tests included
	$(BIN)/pytest

test-fast: $(STAMP)  ## pure and in-process tests only (seconds)
	$(BIN)/pytest -m "not multiprocess"

lint: $(STAMP)
	$(BIN)/ruff check daemon tests bench scripts
	$(BIN)/ruff format --check daemon tests bench scripts

proto: $(STAMP)  ## regenerate daemon/potluck/v1 from proto/
	$(BIN)/python scripts/gen_proto.py

bench: $(STAMP)  ## every benchmark, one JSON object each (bench/README.md); minutes each on 2 cores
	$(BIN)/pip install --quiet -e '.[bench]'
	mkdir -p bench/out
	for b in discovery update_codec rounds sliced federated robust retention idle; do $(BIN)/python bench/$$b.py > bench/out/$$b.json || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
