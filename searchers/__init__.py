"""One Ray Tune searcher per NAS method, from a registry by method name.

``get_searcher_class("rsps")`` imports lazily (as Ray Tune's own search registry does), so
listing the methods costs nothing and one broken method does not break the others.
"""

from __future__ import annotations

import importlib

#: method name -> "module:Class" inside raynas.searchers
SEARCHERS: dict[str, str] = {
    "rsps": "rsps:RSPSSearcher",
    "random": "random_search:RandomSearcher",
    "tenas": "tenas:TENASSearcher",
    "evnas": "evnas:EvNASSearcher",
    "setn": "setn:SETNSearcher",
    "nao": "nao:NAOSearcher",
}


def method_names() -> list[str]:
    return sorted(SEARCHERS)


def _module(method: str):
    if method not in SEARCHERS:
        raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(method_names())}")
    return importlib.import_module(f"raynas.searchers.{SEARCHERS[method].split(':')[0]}")


def get_searcher_class(method: str):
    return getattr(_module(method), SEARCHERS[method].split(":")[1])


def get_presets(method: str) -> dict:
    """The method's presets: name -> {"supernet": {...}, "searcher": {...}}."""
    return _module(method).PRESETS


__all__ = ["SEARCHERS", "method_names", "get_searcher_class", "get_presets"]
