"""One Ray Tune searcher per NAS method."""
