"""Scoring ILIAS's official HDF5 features: the official evaluation (`official`) or vsbench's protocol (`vsbench`)."""

PROTOCOLS = ("ilias", "vsbench")
