"""raynas: weight-sharing neural architecture search on Ray Tune."""

from raynas._version import __version__

__all__ = ["__version__"]
