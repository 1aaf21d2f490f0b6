"""Search spaces: encodings, sampling, networks and supernets. Never imports Ray.

Spaces come from a registry by name (``get_space("nb201")``); the CLI's choices, its error
listing valid names and the parametrised tests all read :data:`SPACES`.
"""

from __future__ import annotations

from typing import Callable

from raynas.spaces.base import Arch, Space
from raynas.spaces.nb201 import NB201Arch, NB201Space

#: registry name -> zero-argument factory of the full space
SPACES: dict[str, Callable[[], Space]] = {"nb201": NB201Space}


def space_names() -> list[str]:
    return sorted(SPACES)


def get_space(name: str | Space) -> Space:
    """The space registered under ``name`` (a :class:`Space` passes through)."""
    if isinstance(name, Space):
        return name
    try:
        return SPACES[name]()
    except KeyError:
        raise ValueError(f"unknown space {name!r}; expected one of: {', '.join(space_names())}") from None


__all__ = ["Arch", "Space", "NB201Arch", "NB201Space", "SPACES", "get_space", "space_names"]
