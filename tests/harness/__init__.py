"""Test harness: the Docker test fleet and the benchmark (not part of the installed package)."""
