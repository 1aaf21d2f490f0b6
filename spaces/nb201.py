"""The NAS-Bench-201 cell space (Dong & Yang, ICLR 2020).

A cell has 4 nodes; node ``i`` sums ``op_ij(node j)`` over ``j < i`` and node 3 is the output.
Its 6 edges, in the benchmark's row order, are ``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``; each picks
one of 5 ops in the benchmark's index order (``none, skip_connect, nor_conv_1x1, nor_conv_3x3,
avg_pool_3x3``), so the space holds 5**6 = 15,625 archs.

Two integer forms of an arch:

- the **benchmark index** (:meth:`NB201Space.benchmark_index`, the tables' ``arch_index``): the
  arch's position in NAS-Bench-201 / NATS-Bench (``api.query_index_by_arch``, the files'
  ``meta_archs``). The official build enumerates all cells with ``CellStructure.gen_all`` (the
  order of the code below) and then shuffles them with ``random.seed(88); random.shuffle``;
  :func:`benchmark_order` repeats that with its own ``random.Random(88)``, so no benchmark file is
  needed (the test suite checks it against the official script's asserts).
- raynas's **arch code** (``NB201Arch.index``, :meth:`NB201Space.index_of`, ``parse(int)``, the
  tables' ``arch_code``): ``sum(ops[e] * 5 ** (5 - e))``, the 6 op indices read as a base-5
  number with edge ``1<-0`` as the most significant digit (0 is the all-``none`` arch, 15,624
  all-``avg_pool``). It is also ``gen_all``'s order before the shuffle.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Hashable, Iterator, Sequence

import numpy as np

from raynas.spaces.base import Space, short_repr

OP_NAMES: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: (target node, source node) per edge, in the benchmark's row order
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
EDGE_NAMES: tuple[str, ...] = tuple(f"{i}<-{j}" for i, j in EDGES)
NUM_EDGES, NUM_OPS = len(EDGES), len(OP_NAMES)
NUM_ARCHS = NUM_OPS**NUM_EDGES

_OP_INDEX = {name: i for i, name in enumerate(OP_NAMES)}
_EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
# ASCII digits only: \d would take any script's digits ('~\u0663' read as ~3)
_TOKEN = re.compile(r"^([a-z0-9_]+)~([0-9]+)$")


@dataclass(frozen=True, slots=True)
class NB201Arch:
    """One NAS-Bench-201 cell: the op index of each of the 6 edges (benchmark row order)."""

    ops: tuple[int, ...]

    def __post_init__(self) -> None:
        ops = self.ops
        if (
            not isinstance(ops, tuple)
            or len(ops) != NUM_EDGES
            or not all(isinstance(o, int) and 0 <= o < NUM_OPS for o in ops)
        ):
            raise ValueError(
                f"NB201 arch ops={ops!r}; expected a tuple of {NUM_EDGES} ints in 0..{NUM_OPS - 1}"
            )

    @classmethod
    def from_string(cls, text: str) -> "NB201Arch":
        """Parse the benchmark string ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``."""
        expected = f"expected the benchmark form, e.g. '{_EXAMPLE}'"
        if not isinstance(text, str):
            raise ValueError(f"NB201 arch string {short_repr(text, 120)} is not a string; {expected}")
        if not text.strip():
            raise ValueError(f"NB201 arch string {text!r} is empty; {expected}")
        quoted = short_repr(text, 120)  # whole for any real arch string (<= ~110 chars)
        nodes = text.strip().split("+")
        if len(nodes) != 3:
            raise ValueError(f"NB201 arch string {quoted} has {len(nodes)} nodes; {expected}")
        ops: list[int] = []
        for node, part in enumerate(nodes, start=1):
            if not (part.startswith("|") and part.endswith("|")):
                raise ValueError(f"NB201 arch string {quoted}: node {node} {short_repr(part)} is not '|...|'; {expected}")
            tokens = part[1:-1].split("|")
            if len(tokens) != node:
                raise ValueError(
                    f"NB201 arch string {quoted}: node {node} has {len(tokens)} inputs, expected {node}"
                )
            for source, token in enumerate(tokens):
                match = _TOKEN.match(token)
                if not match or match.group(1) not in _OP_INDEX or int(match.group(2)) != source:
                    raise ValueError(
                        f"NB201 arch string {quoted}: bad input {short_repr(token)} of node {node}; expected "
                        f"'<op>~{source}' with <op> one of {', '.join(OP_NAMES)}"
                    )
                ops.append(_OP_INDEX[match.group(1)])
        return cls(tuple(ops))

    @classmethod
    def from_index(cls, index: int) -> "NB201Arch":
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < NUM_ARCHS:
            raise ValueError(f"NB201 arch index {index!r}; expected an int in 0..{NUM_ARCHS - 1}")
        index = int(index)
        digits = []
        for _ in range(NUM_EDGES):
            index, digit = divmod(index, NUM_OPS)
            digits.append(digit)
        return cls(tuple(reversed(digits)))

    @property
    def index(self) -> int:
        """raynas's arch code (base 5); the benchmark's index is :attr:`benchmark_index`."""
        value = 0
        for o in self.ops:
            value = value * NUM_OPS + o
        return value

    @property
    def benchmark_index(self) -> int:
        """The arch's index in NAS-Bench-201 / NATS-Bench (see :func:`benchmark_order`)."""
        return benchmark_order()[1][self.index]

    @classmethod
    def from_benchmark_index(cls, index: int) -> "NB201Arch":
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < NUM_ARCHS:
            raise ValueError(f"NB201 arch index {index!r}; expected an int in 0..{NUM_ARCHS - 1} (the NAS-Bench-201 index)")
        return cls.from_index(benchmark_order()[0][int(index)])

    def __str__(self) -> str:
        names = [f"{OP_NAMES[o]}~{j}" for o, (_, j) in zip(self.ops, EDGES)]
        return "|" + "|+|".join(["|".join(names[0:1]), "|".join(names[1:3]), "|".join(names[3:6])]) + "|"

    def __repr__(self) -> str:
        return f"NB201Arch('{self}')"

    def __reduce__(self):
        # compact and version-proof pickles (archs travel through Ray and searcher checkpoints)
        return (NB201Arch, (self.ops,))


#: the seed of the official shuffle (NAS-Bench-201's ``exps/NAS-Bench-201/main.py``)
BENCHMARK_SHUFFLE_SEED = 88


@lru_cache(maxsize=1)
def benchmark_order() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(code_of, index_of)``: the arch code of each benchmark index, and the inverse.

    ``CellStructure.gen_all(OP_NAMES, 4, False)`` enumerates node 1's input op slowest, then
    node 2's (input 0 before input 1), then node 3's: the base-5 code order. The official script
    then calls ``random.seed(88); random.shuffle(archs)``; a private ``random.Random(88)`` draws
    the same permutation (the global RNG is left alone).
    """
    import random

    codes = list(range(NUM_ARCHS))
    random.Random(BENCHMARK_SHUFFLE_SEED).shuffle(codes)
    inverse = [0] * NUM_ARCHS
    for position, code in enumerate(codes):
        inverse[code] = position
    return tuple(codes), tuple(inverse)


@lru_cache(maxsize=None)
def _benchmark_unique_str(ops: tuple[int, ...]) -> str:
    """The benchmark's own isomorphism key (``CellStructure.to_unique_str(consider_zero=True)``).

    Kept literally, quirks included: a node whose inputs are all zero becomes ``'#+#'`` rather
    than ``'#'``, so zeros propagate only one hop. This rule is what yields the published 6,466.
    """
    nodes = {0: "0"}
    for target in (1, 2, 3):
        terms = []
        for (i, j), o in zip(EDGES, ops):
            if i != target:
                continue
            if o == 0 or nodes[j] == "#":
                terms.append("#")
            elif o == 1:
                terms.append(nodes[j])
            else:
                terms.append(f"({nodes[j]})@{OP_NAMES[o]}")
        nodes[target] = "+".join(sorted(terms))
    return nodes[3]


@lru_cache(maxsize=None)
def _algebraic_key(ops: tuple[int, ...]) -> Hashable:
    """The function a cell computes, as a canonical expression.

    A node is a multiset (sorted tuple) of terms ``(op, input node)``; ``none`` and anything fed
    by a zero node contribute nothing, ``skip_connect`` splices its input's terms in (sums are
    associative) and the raw cell input is the term ``"x"``. Two archs with equal keys compute
    the same function for any weights (treating ReLU-conv-BN of a zero map as zero, as the
    benchmark does).
    """
    nodes: dict[int, tuple] = {0: ("x",)}
    for target in (1, 2, 3):
        terms: list = []
        for (i, j), o in zip(EDGES, ops):
            if i != target or o == 0 or not nodes[j]:
                continue
            if o == 1:
                terms.extend(nodes[j])
            else:
                terms.append((OP_NAMES[o], nodes[j]))
        nodes[target] = tuple(sorted(terms, key=repr))
    return nodes[3]


class NB201Space(Space):
    """NAS-Bench-201 as a :class:`~raynas.spaces.base.Space`, optionally restricted per edge.

    Network settings (``C``, ``N``, ``num_classes``, ``in_channels``, ``input_size``) are keyword
    arguments of the size and builder methods; defaults are the benchmark's (C=16, N=5).
    """

    name = "nb201"
    op_names = OP_NAMES
    edge_names = EDGE_NAMES

    def __init__(self, allowed_ops: Sequence[Sequence[int]] | None = None) -> None:
        if allowed_ops is None:
            allowed_ops = [range(NUM_OPS)] * NUM_EDGES
        allowed = tuple(tuple(sorted(set(int(o) for o in ops))) for ops in allowed_ops)
        if len(allowed) != NUM_EDGES or any(
            not ops or not all(0 <= o < NUM_OPS for o in ops) for ops in allowed
        ):
            raise ValueError(
                f"allowed_ops={allowed_ops!r}; expected {NUM_EDGES} non-empty lists of op indices in 0..{NUM_OPS - 1}"
            )
        self.allowed_ops = allowed

    def __repr__(self) -> str:
        if self.is_full:
            return "NB201Space()"
        return f"NB201Space(allowed_ops={self.allowed_ops!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NB201Space) and other.allowed_ops == self.allowed_ops

    def __hash__(self) -> int:
        return hash(("nb201", self.allowed_ops))

    @property
    def is_full(self) -> bool:
        return all(len(ops) == NUM_OPS for ops in self.allowed_ops)

    # --- encoding -------------------------------------------------------------------------
    def _inside(self, arch: NB201Arch) -> NB201Arch:
        if not self.is_full and arch not in self:
            raise ValueError(f"arch '{arch}' is outside this sub-space {self!r}")
        return arch

    def arch(self, ops: Sequence[int]) -> NB201Arch:
        try:
            ops = tuple(int(o) for o in ops)
        except (TypeError, ValueError):
            raise ValueError(f"NB201 arch ops={short_repr(ops)}; expected {NUM_EDGES} ints in 0..{NUM_OPS - 1}") from None
        return self._inside(NB201Arch(ops))

    def arch_from_string(self, text: str) -> NB201Arch:
        return self._inside(NB201Arch.from_string(text))

    def arch_from_index(self, index: int) -> NB201Arch:
        return self._inside(NB201Arch.from_index(index))

    def index_of(self, arch: NB201Arch) -> int:
        """raynas's arch code (the tables' ``arch_code``)."""
        return arch.index

    def benchmark_index(self, arch: NB201Arch) -> int:
        """The benchmark's index of ``arch`` (the tables' ``arch_index``)."""
        return arch.benchmark_index

    def arch_from_benchmark_index(self, index: int) -> NB201Arch:
        return self._inside(NB201Arch.from_benchmark_index(index))

    # --- sets and variation ---------------------------------------------------------------
    def enumerate(self) -> Iterator[NB201Arch]:
        """All archs of this (sub-)space in index order."""
        for ops in itertools.product(*self.allowed_ops):
            yield NB201Arch(tuple(ops))

    def sample(self, rng: np.random.Generator, n: int | None = None):
        """One uniform arch (``n=None``) or a list of ``n`` (with replacement)."""
        count = 1 if n is None else int(n)
        picks = np.stack([rng.integers(0, len(ops), size=count) for ops in self.allowed_ops], axis=1)
        archs = [NB201Arch(tuple(self.allowed_ops[e][k] for e, k in enumerate(row))) for row in picks]
        return archs[0] if n is None else archs

    def mutate(self, arch: NB201Arch, rng: np.random.Generator) -> NB201Arch:
        """Redraw one edge that has a choice, to a different allowed op (the benchmark's REA)."""
        edges = [e for e, ops in enumerate(self.allowed_ops) if len(ops) > 1]
        if not edges:
            return arch
        e = edges[int(rng.integers(len(edges)))]
        others = [o for o in self.allowed_ops[e] if o != arch.ops[e]]
        ops = list(arch.ops)
        ops[e] = others[int(rng.integers(len(others)))]
        return NB201Arch(tuple(ops))

    def crossover(self, a: NB201Arch, b: NB201Arch, rng: np.random.Generator) -> NB201Arch:
        """Uniform crossover: each edge's op from ``a`` or ``b`` with probability 1/2."""
        take_a = rng.random(NUM_EDGES) < 0.5
        return NB201Arch(tuple(x if t else y for x, y, t in zip(a.ops, b.ops, take_a)))

    def neighbours(self, arch: NB201Arch) -> list[NB201Arch]:
        """All archs of this space that differ from ``arch`` on exactly one edge."""
        out = []
        for e, allowed in enumerate(self.allowed_ops):
            for o in allowed:
                if o != arch.ops[e]:
                    ops = list(arch.ops)
                    ops[e] = o
                    out.append(NB201Arch(tuple(ops)))
        return out

    def canonical_key(self, arch: NB201Arch, rule: str = "benchmark") -> Hashable:
        """Isomorphism key. ``rule="benchmark"``: the benchmark's own string (6,466 classes over
        the full space); ``rule="algebraic"``: the exact expression the cell computes (fewer
        classes, because it also removes nodes that are zero after more than one hop and
        flattens skip-connected sums; see ``_algebraic_key``)."""
        if rule == "benchmark":
            return _benchmark_unique_str(arch.ops)
        if rule == "algebraic":
            return _algebraic_key(arch.ops)
        raise ValueError(f"canonical_key rule={rule!r}; expected 'benchmark' or 'algebraic'")

    def restrict(self, allowed_ops: dict[int, Sequence[int]]) -> "NB201Space":
        """Sub-space: ``{edge: ops}`` narrows those edges (edge by index or name like ``"1<-0"``)."""
        allowed = list(self.allowed_ops)
        for edge, ops in allowed_ops.items():
            e = EDGE_NAMES.index(edge) if edge in EDGE_NAMES else edge
            if not isinstance(e, int) or not 0 <= e < NUM_EDGES:
                raise ValueError(f"restrict: edge {edge!r}; expected 0..{NUM_EDGES - 1} or one of {EDGE_NAMES}")
            ops = tuple(_OP_INDEX[o] if isinstance(o, str) and o in _OP_INDEX else o for o in ops)
            outside = [o for o in ops if o not in self.allowed_ops[e]]
            if outside:
                raise ValueError(f"restrict: ops {outside} on edge {EDGE_NAMES[e]} are not allowed in {self!r}")
            allowed[e] = ops
        return NB201Space(allowed)

    # --- size and networks ----------------------------------------------------------------
    def count_parameters(self, arch: NB201Arch, **net: Any) -> int:
        """Parameters of ``arch``'s standalone network (see :meth:`size_table`)."""
        base, deltas = self.size_table("parameters", **net)
        return base + sum(deltas[e][o] for e, o in enumerate(arch.ops))

    def count_flops(self, arch: NB201Arch, **net: Any) -> int:
        """FLOPs of one forward of one image (``input_size=32`` by default; see :meth:`size_table`)."""
        base, deltas = self.size_table("flops", **net)
        return base + sum(deltas[e][o] for e, o in enumerate(arch.ops))

    @staticmethod
    @lru_cache(maxsize=64)
    def _size_table(what: str, net: tuple) -> tuple[int, tuple[tuple[int, ...], ...]]:
        cached = _read_size_table(what, net)
        if cached is not None:
            return cached
        import torch

        from raynas.spaces import nb201_nets

        count = nb201_nets.count_parameters if what == "parameters" else nb201_nets.count_flops
        kwargs = dict(net)
        # 25 small networks: one thread is fastest (more fight the machine's other work), and
        # the process's setting is put back after
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            base = count((0,) * NUM_EDGES, **kwargs)
            deltas = tuple(
                tuple(count(tuple(o if i == e else 0 for i in range(NUM_EDGES)), **kwargs) - base for o in range(NUM_OPS))
                for e in range(NUM_EDGES)
            )
        finally:
            torch.set_num_threads(threads)
        _write_size_table(what, net, (base, deltas))
        return base, deltas

    def size_table(self, what: str = "parameters", **net: Any) -> tuple[int, tuple[tuple[int, ...], ...]]:
        """``(base, deltas)`` with ``size(arch) = base + sum(deltas[e][arch.ops[e]])``.

        Every edge's op is a module of its own and every node's feature map has a fixed shape,
        so parameter and FLOP counts of NB201 networks add up edge by edge: 25 networks built
        once per setting give the size of all 15,625 (building one takes ~40-80 ms). A counted
        table is kept on disk (``$RAYNAS_CACHE/sizes``, default ``~/.cache/raynas/sizes``), so a
        machine counts each setting once. The test suite checks the table against networks built
        whole.
        """
        if what not in ("parameters", "flops"):
            raise ValueError(f"size_table what={what!r}; expected 'parameters' or 'flops'")
        if what == "parameters":
            net.pop("input_size", None)  # parameters do not depend on the input size
        return self._size_table(what, tuple(sorted(net.items())))

    def build_network(self, arch: NB201Arch, **net: Any):
        from raynas.spaces.nb201_nets import build_network

        return build_network(arch, **net)

    def build_supernet(self, **net: Any):
        from raynas.spaces.nb201_nets import NB201Supernet

        if not self.is_full:
            net.setdefault("allowed_ops", self.allowed_ops)
        return NB201Supernet(**net)


# --- the size tables' cache ---------------------------------------------------------------------------
#: bump when the networks' layers or the counting convention change (cached tables then recount)
SIZE_TABLE_VERSION = 1


def _size_table_file(what: str, net: tuple):
    import hashlib
    import os
    from pathlib import Path

    key = hashlib.sha1(repr((SIZE_TABLE_VERSION, what, net)).encode()).hexdigest()[:16]
    return Path(os.environ.get("RAYNAS_CACHE") or "~/.cache/raynas").expanduser() / "sizes" / f"nb201-{what}-{key}.json"


def _read_size_table(what: str, net: tuple):
    """A size table counted before (by any process of this machine), or None."""
    import json

    try:
        saved = json.loads(_size_table_file(what, net).read_text())
        base, deltas = int(saved["base"]), tuple(tuple(int(x) for x in row) for row in saved["deltas"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(deltas) != NUM_EDGES or any(len(row) != NUM_OPS for row in deltas):
        return None
    return base, deltas


def _write_size_table(what: str, net: tuple, table) -> None:
    """Keep a counted table for the next process (25 networks built: ~2 s, much more under load);
    a cache that cannot be written is no error."""
    import json
    import os

    path = _size_table_file(what, net)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"what": what, "net": [list(kv) for kv in net], "base": table[0],
                                   "deltas": [list(row) for row in table[1]]}))
        os.replace(tmp, path)
    except OSError:
        pass

