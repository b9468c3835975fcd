# Two commands on a fresh machine with Python >= 3.11 and the package registries:
#   make quickstart   venv + install + a real evaluation of real models on real photos
#   make test         venv + test extras + the whole test suite
#   make test-models  its own venv (.venv-models) + the open models' parity tests (tests/models)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# setuptools prints a boxed notice about editable installs on every build; it is advice for
# packagers, not for someone running the quickstart.
# constraints/dev.txt pins this machine's development torch; users' installs are not pinned.
PIP_INSTALL := PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -c constraints/dev.txt
RUNTIME_EXTRAS := evaluator,embedder,proxy
TEST_EXTRAS := $(RUNTIME_EXTRAS),triton,dev

# The model-test environment: PyPI's torch + the torchvision built for it (constraints/models.txt),
# with open_clip, colpali-engine, timm and transformers. The machine's own pip configuration and
# find-links (a CPU-only torch that PyPI's torchvision cannot import beside) are bypassed.
MODELS_VENV ?= .venv-models
MODELS_BIN := $(MODELS_VENV)/bin
MODELS_PIP := env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null PYTHONWARNINGS=ignore \
	$(MODELS_BIN)/python -m pip install --quiet
MODELS_EXTRAS := embedder,openclip,nomic,timm

.PHONY: quickstart test test-models install install-dev install-models proto bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints/dev.txt
	$(PIP_INSTALL) -e ".[$(RUNTIME_EXTRAS)]"
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml constraints/dev.txt
	$(PIP_INSTALL) -e ".[$(TEST_EXTRAS)]"
	touch $@ $(VENV)/.installed

$(MODELS_BIN)/python:
	$(PYTHON) -m venv $(MODELS_VENV)
	$(MODELS_PIP) --upgrade pip

$(MODELS_VENV)/.installed: $(MODELS_BIN)/python pyproject.toml constraints/models.txt
	$(MODELS_PIP) -c constraints/models.txt -e ".[$(MODELS_EXTRAS)]" "pytest>=8" "pytest-timeout>=2.3"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
install-models: $(MODELS_VENV)/.installed

quickstart: $(VENV)/.installed
	$(BIN)/vsbench quickstart

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

# Real architectures with random weights, each checked against its reference library (docs/models.md).
test-models: $(MODELS_VENV)/.installed
	$(MODELS_BIN)/python -m pytest tests/models

proto: $(VENV)/.installed-dev
	$(BIN)/python proto/generate.py

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/search.py
	$(BIN)/python bench/embedder.py
	$(BIN)/python bench/proxy.py

clean:
	rm -rf $(VENV) $(MODELS_VENV) .pytest_cache vsbench-quickstart
