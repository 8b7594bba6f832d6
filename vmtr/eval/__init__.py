"""Benchmarks: datasets, the synthetic generator, scoring and the batch runner."""
