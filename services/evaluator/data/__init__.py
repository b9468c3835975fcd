"""Data shipped with the evaluator (published_table3.csv: the report's public Table 3 values)."""
