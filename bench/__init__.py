"""Benchmarks behind `make bench`: training recipe, export parity and size, serving throughput."""
