"""The package's ops, one module per op (the same name as in csrc/, tests/ and benchmarks/)."""
