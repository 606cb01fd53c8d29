# `make demo` and `make test` each work on a fresh machine that has only python3.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?=
PIP_FLAGS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
DEMO_REPO ?= models
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean proto

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install when the project's metadata changes.
$(VENV)/.installed: pyproject.toml $(wildcard examples/*/pyproject.toml) | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(PIP_FLAGS) -e '.[test,lint]'
	@for ex in examples/*/; do \
	  if [ -f "$$ex/pyproject.toml" ]; then $(BIN)/python -m pip install --quiet $(PIP_FLAGS) -e "$$ex"; fi; \
	done
	touch $@

install: $(VENV)/.installed

# Train the default CNN, export it, quantize it, compare runtimes, and serve one request.
demo: install
	DLKIT_REPO=$(DEMO_REPO) $(BIN)/dlkit train models/cnn.toml
	DLKIT_REPO=$(DEMO_REPO) $(BIN)/dlkit export onnx cnn-digits
	DLKIT_REPO=$(DEMO_REPO) $(BIN)/dlkit evaluate cnn-digits --runtime onnx
	DLKIT_REPO=$(DEMO_REPO) $(BIN)/dlkit quantize cnn-digits
	DLKIT_REPO=$(DEMO_REPO) $(BIN)/dlkit bench cnn-digits --batch-sizes 1,64 --seconds 1
	DLKIT_REPO=$(DEMO_REPO) $(BIN)/python examples/serve_request.py cnn-digits

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# ruff (rules and every ignore in pyproject.toml) and mypy on the core, the store and the tasks.
lint: install
	$(BIN)/python -m ruff check dlkit plugins examples tests benchmarks
	$(BIN)/python -m mypy

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache

# The gRPC messages, generated once and committed (grpcio-tools is a build-time tool, never a
# dependency). grpcio-tools 1.75.1 bundles protoc for protobuf 6.31.1, the floor in pyproject.
proto:
	$(PYTHON) -m venv /tmp/dlkit-protoc && /tmp/dlkit-protoc/bin/pip install --quiet grpcio-tools==1.75.1
	cd dlkit/serve/proto && /tmp/dlkit-protoc/bin/python -m grpc_tools.protoc -I. --python_out=. kserve_v2.proto
