"""`python -m services.evaluator.cli`: the same as the `vsbench` console script."""

from services.evaluator.cli import main

main()
