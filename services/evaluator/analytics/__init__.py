"""Decision analytics from one run's stored vectors and ranking (docs/analytics.md).

Pure functions, each tested against hand-computed cases and an independent computation:

    open_set.open_set_analysis     AUROC, DIR@FAR, a cross-validated threshold, the curves
    scaling.scaling_analysis       metrics vs number of distractors, with spread and a fitted model
    compression.compression_sweep  truncation, float16, int8, binary (with and without rescoring)
    pareto.pareto_front            accuracy vs $/1k images vs images/s vs bytes per vector

`run_analyses` (in analyses.py) is the one entry point the evaluation loop calls.
"""
