# Hamlet Serve. Every target works on a fresh clone: `make test` installs what it needs first.
PYTHON     ?= python3
VENV       ?= .venv
# The CPU build of torch that lies on this machine's disk; override for CUDA, e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124"
TORCH_SPEC ?= torch==2.13.0
PY         := $(VENV)/bin/python
PIP        := $(PY) -m pip --disable-pip-version-check
STAMP      := $(VENV)/.hamlet-installed
PROTO_SRC  := $(wildcard proto/hamlet/v1/*.proto proto/inference/*.proto)
GEN_DIR    := client/hamlet_client/_generated
GEN_STAMP  := $(GEN_DIR)/.stamp
# buf (from npm, through npx) checks the contract: `make contract PROTO_DIR=...` checks another copy of proto/
BUF        ?= npx --yes @bufbuild/buf@1
PROTO_DIR  ?= proto

.PHONY: help install proto contract test test-fast lint format bench serve view browser-deps node-deps image image-deps clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: MODELS=DIR  SERVE_ARGS=\"--port 50052 ...\" (hamlet-server serve --help)  VIEW_ARGS=\"--target HOST:PORT ...\"  TORCH_SPEC=...  BENCHES=\"...\""

install: $(STAMP)  ## create .venv with torch (TORCH_SPEC) and the project in editable mode

$(STAMP): pyproject.toml client/pyproject.toml Makefile
	@test -x $(PY) || { echo "== [1/4] creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); }
	@echo "== [2/4] torch ($(TORCH_SPEC)): the big one, a minute or two on a first install"
	$(PIP) install "$(TORCH_SPEC)"
	@echo "== [3/4] grpcio-tools, mypy-protobuf (typed gRPC stubs) and the gRPC stubs (make proto)"
	$(PIP) install "grpcio-tools>=1.85.1" "mypy-protobuf>=5.1"
	$(MAKE) --no-print-directory proto
	@echo "== [4/4] the client and the project, editable, with the dev tools"
	$(PIP) install -e ./client -e ".[dev]"
	@touch $@
	@echo "== installed: source $(VENV)/bin/activate (or run .venv/bin/python)"

proto: $(GEN_STAMP)  ## generate the Python gRPC stubs: proto/hamlet -> the client package, proto/inference -> the server

$(GEN_STAMP): $(PROTO_SRC) scripts/gen_proto.py
	@test -x $(PY) || { echo "run 'make install' first"; exit 2; }
	$(PY) scripts/gen_proto.py
	@touch $@

test: install proto browser-deps node-deps image-deps  ## run the whole test suite (with the container image's, when podman installs)
	$(PY) -m pytest -q

test-fast: install proto  ## skip tests marked slow
	$(PY) -m pytest -q -m "not slow"

lint: install proto  ## ruff, mypy, buf lint and buf breaking (make contract)
	$(VENV)/bin/ruff check server client tests examples scripts bench
	$(VENV)/bin/ruff format --check server client tests examples scripts bench
	$(VENV)/bin/mypy server/townlet client/hamlet_client
	$(VENV)/bin/mypy server/hamlet_server
	$(VENV)/bin/mypy server/hamlet_viewer
	$(MAKE) --no-print-directory contract

contract: node-deps  ## buf lint, and buf breaking against the released contract (proto/released/hamlet-v1.binpb)
	$(BUF) lint $(PROTO_DIR)
	$(BUF) breaking $(PROTO_DIR) --against $(PROTO_DIR)/released/hamlet-v1.binpb

format: install  ## apply ruff's formatting and autofixes
	$(VENV)/bin/ruff format server client tests examples scripts bench
	$(VENV)/bin/ruff check --fix server client tests examples scripts bench

BENCHES ?= model onnx env server client workers peers
bench: install proto  ## print the benchmarks (BENCHES="model onnx env server client workers peers"), each beside its baseline
	@for b in $(BENCHES); do echo "== bench/bench_$$b.py"; $(PY) bench/bench_$$b.py || exit 1; echo; done

MODELS     ?= models
SERVE_ARGS ?=
serve: install proto  ## serve MODELS (default: models/, the demo models) on 127.0.0.1:50051; another port or flags: SERVE_ARGS="--port 50052"
	$(PY) -m hamlet_server.cli serve --models $(MODELS) $(SERVE_ARGS)

VIEW_ARGS ?=
view: install proto  ## live viewer on http://127.0.0.1:8765 against make serve's server (VIEW_ARGS="--envs 4 ...")
	$(PY) -m hamlet_viewer.cli $(VIEW_ARGS)

browser-deps:  ## Debian's chromium and chromium-driver, for the viewer's browser test (make test runs it)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  echo "== chromium and chromium-driver (Debian packages) for tests/e2e/test_viewer_browser.py"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; \
	else echo "== no apt-get here: install Chromium and chromedriver, else the browser test is skipped"; fi

IMAGE_TARGET ?= cpu
IMAGE_TAG    ?= hamlet-serve:$(IMAGE_TARGET)
image:  ## build the server image (IMAGE_TARGET=cpu|cuda, IMAGE_TAG=...) with podman or docker: scripts/build_image.sh
	scripts/build_image.sh $(IMAGE_TARGET) $(IMAGE_TAG)

image-deps:  ## Debian's podman, runc and mmdebstrap, for make image and tests/e2e/test_image.py (make test runs it)
	@if command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  echo "== podman, runc, mmdebstrap (Debian packages) for tests/e2e/test_image.py"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q podman runc mmdebstrap uidmap \
	    || echo "== podman could not be installed: tests/e2e/test_image.py will be skipped"; \
	else echo "== no apt-get here: install podman (or docker) to run the image test"; fi
node-deps:  ## Debian's nodejs and npm, for buf (npx) in make contract and its test (make test and make lint run it)
	@if command -v npx >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  echo "== nodejs and npm (Debian packages) for buf: make contract, tests/unit/test_proto_breaking.py"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q nodejs npm; \
	else echo "== no apt-get here: install Node.js (npx), else buf cannot run and its test is skipped"; fi

clean:  ## remove the virtual environment and generated code
	rm -rf $(VENV) $(GEN_DIR) server/hamlet_server/_generated_v2 .pytest_cache .mypy_cache .ruff_cache
