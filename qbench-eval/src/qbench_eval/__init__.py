"""Registers this package's components with QBench (entry point in pyproject.toml)."""
