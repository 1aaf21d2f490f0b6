"""Argument checks shared by the actor body, the proxies and the searchers (no Ray, no torch)."""

from __future__ import annotations


def require_at_least_one(**values) -> None:
    """Each keyword's number must be >= 1; the error names the argument and its value."""
    for key, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{key}={value!r}; must be >= 1")
