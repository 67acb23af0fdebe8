"""QBench's version: one home, imported by the package and by what reports it."""

__version__ = "0.1.0"
