"""The labelled set of benchmarks/pii_bench.py and tests/test_pii.py: secrets real repositories leak, and look-alikes."""
