# batch-embedder: the two commands a newcomer needs are `make demo` and `make test`.
# Needs Python 3.11 or 3.12 (pgserver, the embedded Postgres, has no 3.13 wheels).

PY ?= $(shell for p in python3.12 python3.11 python3; do \
	$$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
export SAM_CLI_TELEMETRY := 0

.PHONY: install tools demo test lint unit integration bench events sam-build clean

$(BIN)/batch-embedder: pyproject.toml
	@test -n "$(PY)" || { echo "Python 3.11 or 3.12 is needed (pgserver, the embedded Postgres, has no wheels for 3.13+): set PY=/path/to/python3.12"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $@

install: $(BIN)/batch-embedder

# SAM CLI and cfn-lint live in their own venv: their pins clash with the project's.
$(TOOLS)/bin/sam:
	$(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "aws-sam-cli==1.170.0" "cfn-lint==1.58.0"

tools: $(TOOLS)/bin/sam

## The main job on the embedded stack, against a real sample (the Python tutorial).
demo: install
	$(BIN)/batch-embedder local ingest samples/python-tutorial
	$(BIN)/batch-embedder local search "How do I handle an exception raised in a try clause?" -k 3

## Lint, type-check and run every test (what CI runs).
test: install tools lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p batch_embedder -p batch_embedder_local
	$(BIN)/mypy benchmarks
	for f in functions/*/app.py; do $(BIN)/mypy "$$f" || exit 1; done
	$(BIN)/python -m batch_embedder_local.asl_check

unit: install
	$(BIN)/python -m pytest -q tests/unit tests/local tests/infra

integration: install
	$(BIN)/python -m pytest -q tests/integration

## Benchmarks over the Python 3.11 docs (downloads python3.11-doc with apt-get).
bench: install
	$(BIN)/python benchmarks/run.py

## Regenerate events/ from a real local run.
events: install
	$(BIN)/python -m batch_embedder_local.events events

sam-build: tools
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(TOOLS)/bin/sam build

clean:
	rm -rf $(VENV) $(TOOLS) .aws-sam .batch-embedder .pytest_cache .mypy_cache .ruff_cache
