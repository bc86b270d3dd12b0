# Two commands on a fresh machine: `make demo` and `make test`. Everything else is a step they share.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# uv from PATH when present, else bootstrapped with pip into .tools/
UV     := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
STAMP  := $(VENV)/.notebench-installed
export UV_PYTHON_DOWNLOADS := never
export UV_COMPILE_BYTECODE := 1

.PHONY: help install demo test check unit chromium smoke build deploy clean team-up team-down team-demo team-test

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

# the venv, installed from the lock with compiled bytecode, and the notebench kernelspec inside it
$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	$(BIN)/python -m ipykernel install --sys-prefix --name notebench --display-name "Python (notebench)" >/dev/null
	@touch $@

install: $(STAMP)  ## create .venv from uv.lock (skipped when up to date)

demo: $(STAMP)  ## generate the demo data and run the main job on the embedded defaults
	$(BIN)/notebench demo

check: $(STAMP)  ## ci/check: library in sync with the notebooks, notebooks clean, lint
	PATH="$(CURDIR)/$(BIN):$$PATH" ci/check

unit: $(STAMP) chromium  ## ci/test: notebook lessons (nbdev-test) and pytest (2 workers, browser tests included)
	PATH="$(CURDIR)/$(BIN):$$PATH" ci/test

chromium:  ## ci/chromium: Debian's Chromium for the browser tests, installed with apt when missing
	ci/chromium

smoke: $(STAMP)  ## ci/smoke: every pipeline on a small sample in a temporary workspace
	PATH="$(CURDIR)/$(BIN):$$PATH" ci/smoke

build: $(STAMP)  ## ci/build: both wheels and the release (with the stages' results) under dist/
	PATH="$(CURDIR)/$(BIN):$$PATH" UV="$(UV)" ci/build

.PHONY: bench-quick
bench-quick: $(STAMP)  ## ci/bench-quick: every benchmark in --quick mode (small data, same code paths)
	PATH="$(CURDIR)/$(BIN):$$PATH" ci/bench-quick

deploy: $(STAMP)  ## ci/deploy: the release ci/build made into ENV (make deploy ENV=dev [ARGS="--approve --by me"])
	PATH="$(CURDIR)/$(BIN):$$PATH" ci/deploy $(ENV) $(ARGS)

test: check unit smoke build bench-quick  ## everything CI runs: check, unit tests, smoke, build, benchmarks --quick

team-up: $(STAMP)  ## ci/team-up: PostgreSQL, mlflow server, Dask scheduler + 2 workers; profile in .team/team.env
	PATH="$(CURDIR)/$(BIN):$$PATH" ci/team-up

team-down:  ## ci/team-down: stop exactly what team-up started, remove its state
	PATH="$(CURDIR)/$(BIN):$$PATH" ci/team-down

team-demo: team-up  ## the whole demo loop in team mode: steps and trials on Dask workers, state in PostgreSQL
	set -a && source .team/team.env && set +a && $(BIN)/notebench demo

team-test: team-up  ## the team-mode tests (pytest -m team) and benchmarks/team.py --quick on the team stack, then team-down
	export PATH="$(CURDIR)/$(BIN):$$PATH" NOTEBENCH_TEAM_PROFILE=$(CURDIR)/.team/team.env \
	  NOTEBENCH_TEST_POSTGRES=$$(sed -n 's/^TEAM_POSTGRES=//p' .team/team.env); \
	  $(BIN)/python -m pytest -m team --durations=10 tests/test_team.py tests/test_state.py; rc=$$?; \
	  ci/bench-quick team || rc=1; \
	  ci/team-down; exit $$rc

clean:  ## remove the venv and the workspace (all runtime state)
	rm -rf $(VENV) .tools .notebench dist build
