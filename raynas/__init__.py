"""raynas: weight-sharing neural architecture search on Ray Tune.

    import raynas
    run = raynas.search("rsps", dataset="digits")      # a Run: run_dir, status, candidates, summary, manifest
    run = raynas.resume(run.run_dir)                    # continue an interrupted or crashed run

``import raynas`` imports neither Ray nor torch; :func:`search` and :func:`resume` do when called.
"""

from raynas._version import __version__

__all__ = ["__version__", "search", "resume", "Run"]


def __getattr__(name: str):
    # lazy: the actor side (raynas.worker) must import without Ray
    if name in ("search", "resume", "Run"):
        from raynas import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'raynas' has no attribute {name!r}")
