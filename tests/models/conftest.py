"""tests/models runs only in the model-test environment (`make test-models`, .venv-models), where
torch, torchvision, open_clip, colpali-engine, timm and transformers coexist. Anywhere else it is a
collection error, never a silent skip."""

from __future__ import annotations

import importlib.util

import pytest

from tests.models import parity

REQUIRED = ("torch", "torchvision", "open_clip", "colpali_engine", "timm", "transformers")
_missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
if _missing:
    raise pytest.UsageError(
        f"tests/models needs {', '.join(_missing)}: run it with `make test-models` (its own venv)"
    )


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    import torch

    torch.set_num_threads(2)  # the machines are shared; numbers do not depend on it


def pytest_terminal_summary(terminalreporter) -> None:
    if parity.MEASURED:
        terminalreporter.section("model parity (min cosine over the photos)")
        for line in parity.summary_lines():
            terminalreporter.write_line(line)
