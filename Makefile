# `make run` / `make test` create .venv and install on first use (and again when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=
XDIST  ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: install run test test-fast utility clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

## run the hospitals federation (4 hospitals, DP-SGD) and print the per-site table
run: $(STAMP)
	$(BIN)/fedfusion simulate --scenario hospitals $(ARGS)

## the whole test suite, slow end-to-end tests included, on XDIST workers (one test file per worker at a time;
## tests/conftest.py hands out the files with slow tests first; XDIST= runs it in one process), and the 25 slowest
## tests (CI must stay well under 20 minutes)
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=25 $(XDIST) $(ARGS)

## unit tests only
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

## issue 14's privacy-utility table, every row, 5 seeds (benchmarks/utility_all.py; about 4 minutes on 2 quiet cores)
utility: $(STAMP)
	$(BIN)/python benchmarks/utility_all.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
