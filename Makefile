# Two commands on a fresh machine with Python >= 3.11 and the package registries:
#   make quickstart   venv + install + a real evaluation of real models on real photos
#   make test         venv + test extras + the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# setuptools prints a boxed notice about editable installs on every build; it is advice for
# packagers, not for someone running the quickstart.
PIP_INSTALL := PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet
RUNTIME_EXTRAS := evaluator,embedder,proxy
TEST_EXTRAS := $(RUNTIME_EXTRAS),triton,dev

.PHONY: quickstart test install install-dev proto bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP_INSTALL) -e ".[$(RUNTIME_EXTRAS)]"
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(PIP_INSTALL) -e ".[$(TEST_EXTRAS)]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

quickstart: $(VENV)/.installed
	$(BIN)/vsbench quickstart

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

proto: $(VENV)/.installed-dev
	$(BIN)/python proto/generate.py

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/search.py
	$(BIN)/python bench/embedder.py
	$(BIN)/python bench/proxy.py

clean:
	rm -rf $(VENV) .pytest_cache vsbench-quickstart
