"""Benchmarks of answer quality: the dataset format, converters, needle streams, the runner and the report."""
