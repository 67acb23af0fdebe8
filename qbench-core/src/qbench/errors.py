"""The QBench error hierarchy.

Every error a user can cause is a :class:`QBenchError`; the CLI prints its message on one
line and exits with status 2. Messages name what was asked, where it was looked for, what
was found and what is allowed.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class QBenchError(Exception):
    """Base class of every error QBench raises for bad input or a missing component."""


class ConfigError(QBenchError):
    """A config file is malformed or invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UnknownComponentError(QBenchError, KeyError):
    """A format, op, adapter, dataset, metric or reporter name that no plugin registered."""

    def __init__(self, kind: str, name: str, available: Iterable[str]):
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        super().__init__(unknown_message(kind, name, self.available))

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return self.args[0]


class DuplicateComponentError(QBenchError):
    """Two plugins registered a component of the same kind under the same name."""


class PluginError(QBenchError):
    """A plugin could not be loaded or registered."""


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``name`` (for "did you mean ...?"), or None."""
    matches = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown_message(kind: str, name: str, available: Iterable[str]) -> str:
    available = sorted(available)
    guess = closest(name, available)
    hint = f"; did you mean {guess!r}?" if guess else ""
    listing = ", ".join(available) if available else "(none installed)"
    return f"unknown {kind} {name!r}{hint} installed {kind}s: {listing}"
