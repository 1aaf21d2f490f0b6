"""The errors raynas raises on purpose.

``UsageError``: bad input from the user (a setting, a path, a name). The CLI prints its message on
one line and exits 2; it is raised before any expensive start-up (Ray, actors, data on a cluster).
``SearchFailed``: a search that ran but could not finish (a unit failed for good, the supernet
diverged); the run is left marked ``failed`` and the CLI exits 1.
"""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """An error's message as one line (its first), or its type's name if it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class UsageError(ValueError):
    """Bad input from the user: the CLI prints it on one line and exits 2."""


class SearchFailed(RuntimeError):
    """A search that ran but cannot finish; its run directory is marked ``failed``."""
