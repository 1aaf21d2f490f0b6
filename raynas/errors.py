"""The errors raynas raises on purpose.

``UsageError``: bad input from the user (a setting, a path, a name). The CLI prints its message on
one line and exits 2; it is raised before any expensive start-up (Ray, actors, data on a cluster).
``SearchFailed``: a search that ran but could not finish (a unit failed for good, the supernet
diverged); the run is left marked ``failed`` and the CLI exits 1.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user: the CLI prints it on one line and exits 2."""


class SearchFailed(RuntimeError):
    """A search that ran but cannot finish; its run directory is marked ``failed``."""
