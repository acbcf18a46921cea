# tierlink: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=
FAULT_PROFILES ?= broadband
FUZZ_RUNS ?= 100000

.PHONY: demo test bench fuzz lab lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test,lab]"
	touch $(STAMP)

demo: $(STAMP)
	scripts/system-deps.sh demo
	$(BIN)/tierlink demo

test: $(STAMP)
	scripts/system-deps.sh test
	$(BIN)/ruff check src tests fuzz
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	scripts/system-deps.sh demo
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python -m tierlink.bench.packet_cost --json bench/packet-cost.json
	$(BIN)/tierlink bench $(BENCH_ARGS)
	$(BIN)/tierlink bench --mtu 1500 $(BENCH_ARGS)
	@if [ "$$(id -u)" = 0 ]; then $(BIN)/tierlink bench --dht-many 100 $(BENCH_ARGS); \
	else echo "make bench: --dht-many skipped (it needs root for network namespaces)"; fi

# Every parser of untrusted bytes, FUZZ_RUNS inputs each (coverage-guided with atheris).
fuzz: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[fuzz]"
	$(BIN)/python -m fuzz --runs $(FUZZ_RUNS)

# The connectivity matrix, then the full fault matrix on each of FAULT_PROFILES.
lab: $(STAMP)
	scripts/system-deps.sh test
	$(BIN)/tierlink lab --report lab-report
	$(BIN)/tierlink lab --faults $(addprefix --profile ,$(FAULT_PROFILES)) --report lab-report/faults

lint: $(STAMP)
	$(BIN)/ruff check src tests fuzz
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
