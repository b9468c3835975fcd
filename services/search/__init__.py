"""Production search on the benchmarked services: a catalog indexed with the model (and threshold)
a benchmark chose, answered over gRPC (docs/search.md)."""
