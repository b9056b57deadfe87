"""Benchmarks that `moa-search bench` runs: one module per benchmark (ffn: a single FFN block)."""
