# integration_hub: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
AZURITE := .tools/node_modules/.bin/azurite-blob

.PHONY: install tools test demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Azurite (the Azure Blob emulator) for the export tests, from the npm registry.
tools: $(AZURITE)

$(AZURITE):
	npm install --no-audit --no-fund --loglevel=error --prefix .tools azurite@3

# The tests spend much of their time waiting on subprocesses and servers, so two workers
# share two cores well; TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2

test: $(STAMP) tools
	$(BIN)/ruff check integration_hub integration_hub_tests benchmarks
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal --durations=25

# The Dagster UI on PORT, the End User Update API on API_PORT.
PORT     ?= 3000
API_PORT ?= 8080

demo: $(STAMP)
	$(BIN)/integration-hub demo --port $(PORT) --api-port $(API_PORT)

bench: $(STAMP) tools
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check integration_hub integration_hub_tests benchmarks

clean:
	rm -rf $(VENV) .tools demo .pytest_cache
