"""The interface searchers code against, so a second space can be added without touching them.

A space is a finite set of architectures ("archs") laid out as ``num_edges`` decisions, each
choosing one of ``num_ops`` operations. Every arch is an immutable, hashable value with a string
form (the key of every result table) and, for spaces small enough, an integer index.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from typing import Any, Hashable, Iterator, Protocol, Sequence

import numpy as np


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters with an ellipsis (error messages quote
    user input, which may be kilobytes long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 4]}...{text[-1]}"


def is_index_text(text: str) -> bool:
    """Whether ``text`` spells an integer in ASCII digits (``str.isdigit`` also accepts other
    scripts' digits, e.g. '\u0663', which ``int`` would read as 3)."""
    body = text[1:] if text[:1] == "-" else text
    return body.isascii() and body.isdigit()


class Arch(Protocol):
    """What every space's arch value offers: per-edge op indices and a canonical string."""

    ops: tuple[int, ...]

    def __str__(self) -> str: ...

    def __hash__(self) -> int: ...


class Space(ABC):
    """A cell search space: encoding, sampling, variation, size, networks, sub-spaces."""

    #: registry name, e.g. ``"nb201"``
    name: str
    op_names: tuple[str, ...]
    edge_names: tuple[str, ...]
    #: per-edge tuple of the op indices this (sub-)space allows
    allowed_ops: tuple[tuple[int, ...], ...]

    @property
    def num_edges(self) -> int:
        return len(self.edge_names)

    @property
    def num_ops(self) -> int:
        return len(self.op_names)

    # --- encoding -------------------------------------------------------------------------
    @abstractmethod
    def arch(self, ops: Sequence[int]) -> Arch:
        """The arch with these per-edge op indices (validated, and inside this sub-space)."""

    @abstractmethod
    def arch_from_string(self, text: str) -> Arch: ...

    @abstractmethod
    def arch_from_index(self, index: int) -> Arch: ...

    @abstractmethod
    def index_of(self, arch: Arch) -> int:
        """The space's own integer code of ``arch`` (``parse(int)`` reads it back)."""

    def benchmark_index(self, arch: Arch) -> int:
        """The arch's index in the space's tabular benchmark (the tables' ``arch_index``); a
        space without a benchmark numbers its archs by :meth:`index_of`."""
        return self.index_of(arch)

    def arch_from_benchmark_index(self, index: int) -> Arch:
        return self.arch_from_index(index)

    def parse(self, value: Any) -> Arch:
        """An arch from an arch, a string form, an index, or a sequence of op indices."""
        if isinstance(value, str):
            return self.arch_from_string(value)
        if isinstance(value, (int, np.integer)):
            return self.arch_from_index(int(value))
        if hasattr(value, "ops"):
            return self.arch(value.ops)
        return self.arch(value)

    def encode(self, arch: Arch) -> np.ndarray:
        """One-hot float32 matrix of shape ``(num_edges, num_ops)``."""
        out = np.zeros((self.num_edges, self.num_ops), dtype=np.float32)
        out[np.arange(self.num_edges), arch.ops] = 1.0
        return out

    def decode(self, matrix: np.ndarray) -> Arch:
        """The per-edge argmax over allowed ops of a ``(num_edges, num_ops)`` score matrix."""
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.shape != (self.num_edges, self.num_ops):
            raise ValueError(
                f"decode: matrix of shape {matrix.shape}; expected ({self.num_edges}, {self.num_ops})"
            )
        masked = np.full_like(matrix, -np.inf)
        for e, allowed in enumerate(self.allowed_ops):
            masked[e, list(allowed)] = matrix[e, list(allowed)]
        return self.arch(tuple(int(i) for i in masked.argmax(axis=1)))

    # --- sets -----------------------------------------------------------------------------
    def __len__(self) -> int:
        n = 1
        for allowed in self.allowed_ops:
            n *= len(allowed)
        return n

    def __contains__(self, arch: object) -> bool:
        ops = getattr(arch, "ops", None)
        return (
            ops is not None
            and len(ops) == self.num_edges
            and all(o in allowed for o, allowed in zip(ops, self.allowed_ops))
        )

    @abstractmethod
    def enumerate(self) -> Iterator[Arch]: ...

    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int | None = None) -> Arch | list[Arch]: ...

    @abstractmethod
    def mutate(self, arch: Arch, rng: np.random.Generator) -> Arch: ...

    @abstractmethod
    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch: ...

    @abstractmethod
    def neighbours(self, arch: Arch) -> list[Arch]: ...

    @abstractmethod
    def canonical_key(self, arch: Arch) -> Hashable:
        """Equal for archs that compute the same function up to isomorphism."""

    @abstractmethod
    def restrict(self, allowed_ops: dict[int, Sequence[int]]) -> "Space":
        """The sub-space where edge ``e`` may only use ``allowed_ops[e]`` (few-shot NAS)."""

    def split(self, edges: Sequence[int]) -> list["Space"]:
        """Few-shot NAS: one sub-space per combination of allowed ops on ``edges`` (first edge
        slowest), e.g. 5 for one NB201 edge, 25 for two. :meth:`region_of` finds an arch's one."""
        edges = self._check_edges(edges)
        return [self.restrict(dict(zip(edges, ([o] for o in combo))))
                for combo in itertools.product(*(self.allowed_ops[e] for e in edges))]

    def region_of(self, arch: Arch, edges: Sequence[int]) -> int:
        """Index into :meth:`split` of the sub-space that holds ``arch``."""
        edges = self._check_edges(edges)
        index = 0
        for e in edges:
            allowed = self.allowed_ops[e]
            if arch.ops[e] not in allowed:
                raise ValueError(f"arch '{arch}' is outside {self!r} on edge {self.edge_names[e]}")
            index = index * len(allowed) + allowed.index(arch.ops[e])
        return index

    def parse_edges(self, text: str | Sequence) -> list[int]:
        """``"1<-0,3<-2"`` or ``"0,5"`` or a sequence of those -> edge indices."""
        if not isinstance(text, (str, Sequence)):
            raise ValueError(f"edges {short_repr(text)}; expected e.g. '1<-0,3<-2' or '0,5' (edge names or indices)")
        items = text.split(",") if isinstance(text, str) else list(text)
        edges = []
        for item in items:
            item = item.strip() if isinstance(item, str) else item
            if item in self.edge_names:
                edges.append(self.edge_names.index(item))
            elif (isinstance(item, int) and not isinstance(item, bool)) or (isinstance(item, str) and is_index_text(item)):
                edges.append(int(item))
            else:
                raise ValueError(f"edge {short_repr(item)}; expected an index 0..{self.num_edges - 1} "
                                 f"or one of {', '.join(self.edge_names)}")
        return self._check_edges(edges)

    def _check_edges(self, edges: Sequence[int]) -> list[int]:
        edges = [int(e) for e in edges]
        if not edges or len(set(edges)) != len(edges) or not all(0 <= e < self.num_edges for e in edges):
            raise ValueError(f"edges={edges!r}; expected distinct edge indices in 0..{self.num_edges - 1}")
        return edges

    # --- size and networks ----------------------------------------------------------------
    @abstractmethod
    def count_parameters(self, arch: Arch, **net: Any) -> int: ...

    @abstractmethod
    def count_flops(self, arch: Arch, **net: Any) -> int: ...

    @abstractmethod
    def build_network(self, arch: Arch, **net: Any):
        """The standalone torch network of ``arch``."""

    @abstractmethod
    def build_supernet(self, **net: Any):
        """The weight-sharing torch supernet over this (sub-)space."""
