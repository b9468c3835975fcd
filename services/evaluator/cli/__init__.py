"""`vsbench`: evaluate embedding models for instance-level product retrieval.

The application lives in core.py; each module below adds its commands to it. Each command imports
what it needs when it runs, so `vsbench --help` stays fast and the scoring commands work without
torch.
"""

from services.evaluator.cli.core import app

# Importing a module registers its commands; the order is the order `vsbench --help` lists them.
from services.evaluator.cli import scoring, results, runs, search, catalogue  # noqa: E402,F401,I001

__all__ = ["app"]
