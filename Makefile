# Two commands do all setup on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A CPU build of this torch lies on the build machines' disk; users may bring any torch 2.x.
TORCH  ?= torch==2.13.0
CONFIG ?= config.yaml
STORE  ?= model_store

.PHONY: serve test install install-dev examples lint bench clean protos

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[examples]'
	touch $@

# promtool (tests/test_deployment.py checks docker/prometheus with it) comes from Debian's
# prometheus package; installed once, only where it is missing and apt-get exists.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	@command -v promtool >/dev/null || ! command -v apt-get >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus >/dev/null)
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Builds the example archives (digits, digits_onnx, resnet, resnet_onnx) from code; no downloads.
$(STORE)/.built: $(VENV)/.installed $(wildcard modelserve/examples/*.py)
	$(BIN)/modelserve examples --model-store $(STORE)
	touch $@

examples: $(STORE)/.built

serve: examples
	$(BIN)/modelserve start --config $(CONFIG)

test: install-dev
	$(BIN)/ruff check modelserve tests bench docker
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check modelserve tests bench docker

bench: examples
	$(BIN)/python bench/serve_bench.py --model-store $(STORE)

clean:
	rm -rf $(VENV) .modelserve $(STORE)/*.mar $(STORE)/.built .pytest_cache

# The gRPC stubs are committed (no protoc at install time); regenerate after editing the .proto.
protos: $(VENV)/.installed-dev
	$(BIN)/python -m modelserve.server.protos.generate
