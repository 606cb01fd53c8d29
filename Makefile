# `make demo` and `make test` each work on a fresh machine that has only python3.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?=
PIP_FLAGS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
DEMO_REPO ?= models
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install when the project's metadata changes.
$(VENV)/.installed: pyproject.toml $(wildcard examples/*/pyproject.toml) | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(PIP_FLAGS) -e '.[test]'
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

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
