"""NAS-Bench-201 networks: the benchmark's standalone network, a weight-sharing supernet, sizes.

This file mirrors the benchmark's own networks (xautodl ``TinyNetwork``, ``InferCell``,
``ResNetBasicblock`` and ``cell_operations.py``, Dong & Yang, ICLR 2020), written for raynas. It
imports only torch, numpy and the standard library (never Ray, never other raynas modules).

Ops, in the benchmark's index order (``OP_NAMES``):

    0 ``none``          zeros
    1 ``skip_connect``  identity
    2 ``nor_conv_1x1``  ReLU -> Conv1x1 (no bias) -> BN
    3 ``nor_conv_3x3``  ReLU -> Conv3x3 pad 1 (no bias) -> BN
    4 ``avg_pool_3x3``  AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

Cell: 4 nodes, node ``i`` = sum over ``j < i`` of ``op_ij(node j)``, output = node 3. Edge ``e``
(0..5) is, in the benchmark's row order, ``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``. An arch is
anything with an ``.ops`` attribute (6 op indices in that edge order) or a plain tuple/list of 6
ints.

Macro network (``C=16, N=5`` in the benchmark): stem Conv3x3(in_channels->C, no bias)+BN; N cells
at C; ResNetBasicblock C->2C stride 2; N cells at 2C; ResNetBasicblock 2C->4C stride 2; N cells
at 4C; BN+ReLU; global average pool; Linear(4C, num_classes). Module names follow xautodl
(``stem``, ``cells`` -- the 3N cells *and* the two residual blocks, in order -- ``lastact``,
``global_pooling``, ``classifier``; a standalone cell's ops are ``layers``; ``ReLUConvBN.op``).

Public API:

* :func:`build_network` / :class:`NB201Network`: the benchmark's standalone network for one arch.
* :class:`NB201Supernet`: all 5 ops on every edge; forward modes single path, per-cell paths and
  weighted mixture (see :meth:`NB201Supernet.forward`); per-edge sub-space restriction.
* :func:`extract_network`: a standalone network inheriting a supernet path's weights.
* :func:`count_parameters`, :func:`count_flops`: sizes of the standalone network (cached).

Differences from xautodl, none of which changes a standalone network's parameters or outputs:
forward returns the logits only (xautodl returns ``(features, logits)``); an edge whose op is
``none`` is not instantiated in :class:`NB201Network` (xautodl keeps a ``Zero`` module that returns
``x * 0``; the sums are equal); the supernet's cell convolutions have no bias (recent xautodl uses
``bias=not affine``, i.e. a bias in front of a non-affine BN, where the bias is cancelled by the BN's
mean subtraction).
"""

from __future__ import annotations

import numbers
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "OP_NAMES",
    "EDGES",
    "NUM_EDGES",
    "NUM_OPS",
    "ReLUConvBN",
    "ResNetBasicblock",
    "InferCell",
    "SearchCell",
    "NB201Network",
    "NB201Supernet",
    "build_network",
    "extract_network",
    "count_parameters",
    "count_flops",
]

OP_NAMES: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
#: (target node i, source node j) of edge e, in the benchmark's row order
EDGES: tuple[tuple[int, int], ...] = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
NUM_EDGES: int = len(EDGES)
NUM_OPS: int = len(OP_NAMES)
_EDGE_NAMES = tuple(f"{i}<-{j}" for i, j in EDGES)
_NONE, _SKIP, _CONV1, _CONV3, _POOL = range(NUM_OPS)
_ALL_OPS: tuple[tuple[int, ...], ...] = (tuple(range(NUM_OPS)),) * NUM_EDGES


# --------------------------------------------------------------------------------------------
# archs
# --------------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_arch_like(path: Any) -> bool:
    """True for an object with ``.ops``, or a tuple/list/1-D array of 6 ints."""
    if hasattr(path, "ops") and not isinstance(path, torch.Tensor):
        return True
    if isinstance(path, (tuple, list)):
        return len(path) == NUM_EDGES and all(_is_int(v) for v in path)
    if isinstance(path, (np.ndarray, torch.Tensor)):
        return path.ndim == 1 and path.shape[0] == NUM_EDGES
    return False


def _ops_of(arch: Any) -> tuple[int, ...]:
    """The op tuple of an arch: an object with ``.ops`` or a tuple/list/1-D array of 6 ints."""
    ops = arch.ops if (hasattr(arch, "ops") and not isinstance(arch, torch.Tensor)) else arch
    if isinstance(ops, (np.ndarray, torch.Tensor)):
        ops = ops.tolist()
    try:
        ops = tuple(ops)
    except TypeError:
        ops = None
    if (
        ops is None
        or len(ops) != NUM_EDGES
        or not all(_is_int(o) and 0 <= o < NUM_OPS for o in ops)
    ):
        raise ValueError(
            f"arch {arch!r}: expected an object with .ops or a sequence of {NUM_EDGES} op indices "
            f"in 0..{NUM_OPS - 1} (edge order {', '.join(_EDGE_NAMES)})"
        )
    return tuple(int(o) for o in ops)


def _check_allowed_ops(allowed_ops: Any) -> tuple[tuple[int, ...], ...]:
    """Normalise ``allowed_ops`` (None = all ops everywhere) to 6 sorted tuples; ValueError if bad."""
    if allowed_ops is None:
        return _ALL_OPS
    msg = (
        f"allowed_ops={allowed_ops!r}; expected {NUM_EDGES} non-empty sequences (one per edge "
        f"{', '.join(_EDGE_NAMES)}) of op indices in 0..{NUM_OPS - 1}"
    )
    try:
        rows = [list(r) for r in allowed_ops]
    except TypeError:
        raise ValueError(msg) from None
    if len(rows) != NUM_EDGES:
        raise ValueError(msg)
    out = []
    for row in rows:
        if not row or not all(_is_int(o) and 0 <= o < NUM_OPS for o in row):
            raise ValueError(msg)
        out.append(tuple(sorted({int(o) for o in row})))
    return tuple(out)


def _make_plan(edge_terms: Sequence[tuple], prune: bool) -> tuple:
    """Execution plan of one cell.

    ``edge_terms[e]`` is a tuple of ``(op_key, op, weight)`` for the ops that run on edge ``e``
    (``none`` is never listed; ``weight`` None means "no multiplication"). Returns a tuple of
    ``(node i, ((edge_key, source j, terms), ...))`` for the nodes to compute, in order. With
    ``prune``, nodes whose value cannot reach the output (node 3) are skipped.
    """
    present = [bool(t) for t in edge_terms]
    if prune:
        live2 = present[5]
        live1 = present[4] or (present[2] and live2)
        live = (True, live1, live2, True)
    else:
        live = (True, True, True, True)
    plan = []
    for i in (1, 2, 3):
        if not live[i]:
            continue
        ins = tuple(
            (str(e), j, edge_terms[e]) for e, (t, j) in enumerate(EDGES) if t == i and present[e]
        )
        plan.append((i, ins))
    return tuple(plan)


def _run_plan(x: torch.Tensor, plan: tuple, edge_mods: dict) -> torch.Tensor:
    """Run a cell plan. ``edge_mods[edge_key]`` is a module dict ``{op_key: module}``."""
    nodes = [x, None, None, None]
    for i, ins in plan:
        s = None
        for ek, j, terms in ins:
            inp = nodes[j]
            mods = edge_mods[ek]
            for ok, o, w in terms:
                y = inp if o == _SKIP else mods[ok](inp)
                if w is not None:
                    y = y * w
                s = y if s is None else s + y
        nodes[i] = torch.zeros_like(x) if s is None else s
    return nodes[3]


# --------------------------------------------------------------------------------------------
# modules (xautodl's structure and names)
# --------------------------------------------------------------------------------------------
class ReLUConvBN(nn.Module):
    """ReLU -> Conv2d (no bias) -> BatchNorm2d, as ``self.op`` (xautodl's ``ReLUConvBN``)."""

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` op (only held by the supernet; it is never run: its contribution is 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def _avg_pool() -> nn.Module:
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


def _make_op(op: int, C: int, affine: bool, track_running_stats: bool) -> nn.Module:
    if op == _NONE:
        return Zero()
    if op == _SKIP:
        return Identity()
    if op == _CONV1:
        return ReLUConvBN(C, C, 1, 1, 0, affine, track_running_stats)
    if op == _CONV3:
        return ReLUConvBN(C, C, 3, 1, 1, affine, track_running_stats)
    if op == _POOL:
        return _avg_pool()
    raise ValueError(f"op {op!r}; expected 0..{NUM_OPS - 1}")


class ResNetBasicblock(nn.Module):
    """The benchmark's reduction block (stride 2): ``downsample(x) + conv_b(conv_a(x))``."""

    def __init__(self, inplanes: int, planes: int, stride: int = 2) -> None:
        super().__init__()
        if stride != 2:
            raise ValueError(f"stride={stride!r}; NAS-Bench-201 uses stride 2 residual blocks")
        self.conv_a = ReLUConvBN(inplanes, planes, 3, stride, 1)
        self.conv_b = ReLUConvBN(planes, planes, 3, 1, 1)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(inplanes, planes, kernel_size=1, stride=1, padding=0, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class InferCell(nn.Module):
    """A standalone cell: only the chosen op on each edge; ``none`` edges are absent.

    ``layers`` holds the ops of the present edges, in edge order. Every node is computed (as in
    the benchmark); a node without present inputs is zeros.
    """

    def __init__(self, ops: tuple[int, ...], C: int, bn_track_running_stats: bool = True) -> None:
        super().__init__()
        self.arch_ops = tuple(ops)
        self.layers = nn.ModuleList()
        #: edge index of each entry of ``layers``
        self.layer_edges: tuple[int, ...] = tuple(e for e, o in enumerate(ops) if o != _NONE)
        terms: list[tuple] = []
        for e, o in enumerate(ops):
            if o == _NONE:
                terms.append(())
            else:
                self.layers.append(_make_op(o, C, True, bn_track_running_stats))
                terms.append(((str(len(self.layers) - 1), o, None),))
        # every layer key maps to the layers' module dict
        self._plan = tuple(
            (i, tuple(("L", j, t) for _, j, t in ins)) for i, ins in _make_plan(terms, prune=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_plan(x, self._plan, {"L": self.layers._modules})

    def extra_repr(self) -> str:
        return f"ops={self.arch_ops}"


class SearchCell(nn.Module):
    """A supernet cell: ``edges[e][o]`` is op ``o`` on edge ``e`` (all 5 ops on all 6 edges)."""

    def __init__(self, C: int, affine: bool, track_running_stats: bool) -> None:
        super().__init__()
        self.edges = nn.ModuleList(
            nn.ModuleList(_make_op(o, C, affine, track_running_stats) for o in range(NUM_OPS))
            for _ in range(NUM_EDGES)
        )

    def forward(self, x: torch.Tensor, plan: tuple) -> torch.Tensor:
        em = self.edges._modules
        return _run_plan(x, plan, {k: m._modules for k, m in em.items()})


def _macro(C: int, N: int, make_cell) -> tuple[nn.ModuleList, list[bool], int]:
    cells = nn.ModuleList()
    is_cell = []
    c_prev = C
    for stage, c in enumerate((C, 2 * C, 4 * C)):
        if stage > 0:
            cells.append(ResNetBasicblock(c_prev, c, 2))
            is_cell.append(False)
        for _ in range(N):
            cells.append(make_cell(c))
            is_cell.append(True)
        c_prev = c
    return cells, is_cell, c_prev


def _check_net_args(C: int, N: int, num_classes: int, in_channels: int) -> None:
    for name, v in (("C", C), ("N", N), ("num_classes", num_classes), ("in_channels", in_channels)):
        if not _is_int(v) or v < 1:
            raise ValueError(f"{name}={v!r}; expected a positive int")


class NB201Network(nn.Module):
    """The benchmark's standalone network (xautodl ``TinyNetwork`` with ``InferCell``) for one arch.

    All BNs are ``affine=True``; the cell BNs track running stats unless
    ``cell_bn_track_running_stats=False`` (used by :func:`extract_network` for supernets whose BNs
    do not track them). ``forward(x)`` returns the logits.
    """

    def __init__(
        self,
        arch: Any,
        C: int = 16,
        N: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
        *,
        cell_bn_track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        _check_net_args(C, N, num_classes, in_channels)
        ops = _ops_of(arch)
        self.arch_ops = ops
        self.C, self.N, self.num_classes, self.in_channels = C, N, num_classes, in_channels
        self.cell_bn_track_running_stats = bool(cell_bn_track_running_stats)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(C)
        )
        self.cells, is_cell, c_last = _macro(
            C, N, lambda c: InferCell(ops, c, self.cell_bn_track_running_stats)
        )
        self.cell_indices: tuple[int, ...] = tuple(k for k, v in enumerate(is_cell) if v)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_last), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        x = self.global_pooling(self.lastact(x))
        return self.classifier(x.flatten(1))

    def extra_repr(self) -> str:
        return f"ops={self.arch_ops}, C={self.C}, N={self.N}, num_classes={self.num_classes}"


def build_network(
    arch: Any, C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3
) -> NB201Network:
    """The benchmark's standalone network for ``arch`` (an object with ``.ops`` or 6 op indices)."""
    return NB201Network(arch, C, N, num_classes, in_channels)


# --------------------------------------------------------------------------------------------
# supernet
# --------------------------------------------------------------------------------------------
class NB201Supernet(nn.Module):
    """Weight-sharing supernet of NAS-Bench-201: every cell edge holds all 5 ops.

    The cell ops' BNs use ``affine=bn_affine, track_running_stats=bn_track_running_stats`` (the
    benchmark's search networks use affine=False; whether they track running stats is a setting);
    the stem, the residual blocks and ``lastact`` have ordinary BatchNorm2d, as in xautodl's search
    networks. ``allowed_ops`` (None = all ops on all edges) restricts each edge to some ops, for
    few-shot NAS; all ops stay instantiated either way, so a restricted supernet loads its
    parent's ``state_dict`` (and vice versa). See :meth:`forward` for the path forms.
    """

    num_edges: int = NUM_EDGES
    num_ops: int = NUM_OPS

    def __init__(
        self,
        *,
        C: int = 16,
        N: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
        bn_affine: bool = False,
        bn_track_running_stats: bool = False,
        allowed_ops: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__()
        _check_net_args(C, N, num_classes, in_channels)
        allowed = _check_allowed_ops(allowed_ops)
        self.C, self.N, self.num_classes, self.in_channels = C, N, num_classes, in_channels
        self.bn_affine = bool(bn_affine)
        self.bn_track_running_stats = bool(bn_track_running_stats)
        self.config: dict[str, Any] = dict(
            C=C,
            N=N,
            num_classes=num_classes,
            in_channels=in_channels,
            bn_affine=self.bn_affine,
            bn_track_running_stats=self.bn_track_running_stats,
            allowed_ops=None if allowed_ops is None else allowed,
        )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(C)
        )
        self.cells, is_cell, c_last = _macro(
            C, N, lambda c: SearchCell(c, self.bn_affine, self.bn_track_running_stats)
        )
        self._is_cell: tuple[bool, ...] = tuple(is_cell)
        self.cell_indices: tuple[int, ...] = tuple(k for k, v in enumerate(is_cell) if v)
        self.num_cells: int = len(self.cell_indices)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_last), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_last, num_classes)
        self.register_buffer(
            "_disallowed", torch.zeros(NUM_EDGES, NUM_OPS, dtype=torch.bool), persistent=False
        )
        self._plans: dict[tuple[int, ...], tuple] = {}
        self._set_allowed(allowed)

    # --- sub-space ----------------------------------------------------------------------------
    def _set_allowed(self, allowed: tuple[tuple[int, ...], ...]) -> None:
        self.allowed_ops: tuple[tuple[int, ...], ...] = allowed
        self._allowed_sets = tuple(frozenset(a) for a in allowed)
        self._restricted = allowed != _ALL_OPS
        mask = torch.ones(NUM_EDGES, NUM_OPS, dtype=torch.bool)
        for e, ops in enumerate(allowed):
            mask[e, list(ops)] = False
        self._disallowed.copy_(mask)
        # grad-mode mixture terms: every allowed op but `none`, weight filled in per call
        self._grad_ops = tuple(tuple(o for o in ops if o != _NONE) for ops in allowed)
        self._plans.clear()

    def restrict(self, allowed_ops: Sequence[Sequence[int]] | None) -> None:
        """Change the per-edge op restriction in place (None = the full space)."""
        allowed = _check_allowed_ops(allowed_ops)
        self._set_allowed(allowed)
        self.config["allowed_ops"] = None if allowed_ops is None else allowed

    def contains(self, arch: Any) -> bool:
        """Whether ``arch`` lies in the allowed sub-space."""
        ops = _ops_of(arch)
        return all(o in a for o, a in zip(ops, self._allowed_sets))

    def _disallowed_msg(self, e: int, o: int, what: str) -> str:
        return (
            f"{what}: edge {e} ({_EDGE_NAMES[e]}) uses op {o} ({OP_NAMES[o]}), which is not in "
            f"allowed_ops[{e}]={self.allowed_ops[e]} of this supernet"
        )

    # --- paths --------------------------------------------------------------------------------
    def _plan(self, arch: Any) -> tuple:
        """Cached single-path plan for an arch (validated against ``allowed_ops``)."""
        key = arch.ops if hasattr(arch, "ops") and not isinstance(arch, torch.Tensor) else arch
        if isinstance(key, list):
            key = tuple(key)
        try:
            return self._plans[key]
        except (KeyError, TypeError):
            pass
        ops = _ops_of(arch)
        for e, o in enumerate(ops):
            if o not in self._allowed_sets[e]:
                raise ValueError(self._disallowed_msg(e, o, f"arch {ops}"))
        plan = _make_plan(
            [() if o == _NONE else ((str(o), o, None),) for o in ops], prune=True
        )
        self._plans[ops] = plan
        if len(self._plans) > 100_000:  # bound memory (5**6 = 15,625 distinct archs)
            self._plans.clear()
        return plan

    def _mixture_plans(self, w: torch.Tensor, x: torch.Tensor) -> tuple | list[tuple]:
        shape = tuple(w.shape)
        if shape == (NUM_EDGES, NUM_OPS):
            per_cell = False
        elif shape == (self.num_cells, NUM_EDGES, NUM_OPS):
            per_cell = True
        else:
            raise ValueError(
                f"mixture weights of shape {shape}; expected ({NUM_EDGES}, {NUM_OPS}) or "
                f"({self.num_cells}, {NUM_EDGES}, {NUM_OPS})"
            )
        n = self.num_cells if per_cell else 1
        if w.requires_grad and torch.is_grad_enabled():
            # every allowed op runs, so gradients reach every allowed weight
            if self._restricted:
                bad = (w.detach() != 0) & self._disallowed.to(w.device)
                if bool(bad.any()):
                    idx = bad.nonzero()[0].tolist()
                    e, o = idx[-2], idx[-1]
                    raise ValueError(self._disallowed_msg(e, o, "mixture weights"))
            if w.device != x.device:
                w = w.to(x.device)
            flat = w.reshape(-1).unbind(0)
            plans = []
            for k in range(n):
                base = k * NUM_EDGES * NUM_OPS
                terms = [
                    tuple((str(o), o, flat[base + e * NUM_OPS + o]) for o in self._grad_ops[e])
                    for e in range(NUM_EDGES)
                ]
                plans.append(_make_plan(terms, prune=True))
        else:
            # masked mixture: ops whose weight is exactly 0 are skipped (one device sync)
            rows = w.detach().reshape(n, NUM_EDGES, NUM_OPS).tolist()
            allowed = self._allowed_sets
            plans = []
            for k in range(n):
                terms = []
                for e, row in enumerate(rows[k]):
                    t = []
                    for o, v in enumerate(row):
                        if v == 0:
                            continue
                        if o not in allowed[e]:
                            raise ValueError(self._disallowed_msg(e, o, "mixture weights"))
                        if o != _NONE:
                            t.append((str(o), o, None if v == 1 else v))
                    terms.append(tuple(t))
                plans.append(_make_plan(terms, prune=True))
        return plans if per_cell else plans[0]

    def _plans_for(self, path: Any, x: torch.Tensor) -> tuple | list:
        """One plan (shared by all cells) or a list of ``num_cells`` plans."""
        if isinstance(path, (torch.Tensor, np.ndarray)) and path.ndim in (2, 3):
            w = torch.as_tensor(path) if isinstance(path, np.ndarray) else path
            return self._mixture_plans(w, x)
        if _is_arch_like(path):
            return self._plan(path)
        if isinstance(path, (list, tuple)) and len(path) == self.num_cells:
            plans = []
            try:
                for p in path:
                    plans.append(self._plan(p))
            except ValueError as err:
                raise ValueError(f"per-cell path, cell {len(plans)}: {err}") from None
            return plans
        raise ValueError(
            f"path {path!r}: expected an arch (an object with .ops or {NUM_EDGES} op indices), a "
            f"list of {self.num_cells} archs (one per cell), or mixture weights of shape "
            f"({NUM_EDGES}, {NUM_OPS}) or ({self.num_cells}, {NUM_EDGES}, {NUM_OPS})"
        )

    def forward(self, x: torch.Tensor, path: Any) -> torch.Tensor:
        """Logits of ``x`` along ``path``:

        * an arch (object with ``.ops``, or 6 op indices): single path, the same genotype in
          every cell; only the chosen op of each edge runs (and nodes that cannot reach the
          cell output are skipped);
        * a list/tuple of ``num_cells`` archs: cell ``k`` uses ``path[k]``;
        * a float tensor of shape (6, 5) or (num_cells, 6, 5): weighted mixture, edge output =
          ``sum_o w[e, o] * op_o(x)``. When the tensor requires grad (and grad is enabled), every
          allowed op runs so that gradients reach the weights; otherwise ops whose weight is
          exactly 0 are skipped (masks).

        An arch outside ``allowed_ops``, or weights non-zero on a disallowed op, raise ValueError.
        """
        plans = self._plans_for(path, x)
        shared = not isinstance(plans, list)
        x = self.stem(x)
        k = 0
        for cell, is_cell in zip(self.cells, self._is_cell):
            if is_cell:
                x = cell(x, plans if shared else plans[k])
                k += 1
            else:
                x = cell(x)
        x = self.global_pooling(self.lastact(x))
        return self.classifier(x.flatten(1))

    def extra_repr(self) -> str:
        return (
            f"C={self.C}, N={self.N}, num_classes={self.num_classes}, bn_affine={self.bn_affine}, "
            f"bn_track_running_stats={self.bn_track_running_stats}, allowed_ops={self.allowed_ops}"
        )


@torch.no_grad()
def extract_network(supernet: NB201Supernet, arch: Any) -> NB201Network:
    """A standalone :class:`NB201Network` inheriting the weights of ``supernet``'s path ``arch``.

    Copies the stem, residual blocks, ``lastact``, classifier and, in every cell, the chosen op of
    each edge. BN handling of the cell ops: where the supernet's BN has ``affine=False``, the
    standalone BN gets weight 1 and bias 0; running stats are copied when the supernet tracks
    them; when it does not, the extracted network's cell BNs are built with
    ``track_running_stats=False`` (batch statistics in eval mode too), so that eval-mode outputs
    match the supernet's. The network has the supernet's ``C, N, num_classes, in_channels``, lives
    on its device/dtype and is in its train/eval mode. ``arch`` need not lie in ``allowed_ops``.
    """
    ops = _ops_of(arch)
    net = NB201Network(
        ops,
        supernet.C,
        supernet.N,
        supernet.num_classes,
        supernet.in_channels,
        cell_bn_track_running_stats=supernet.bn_track_running_stats,
    )
    p = next(supernet.parameters())
    net.to(device=p.device, dtype=p.dtype)
    for name in ("stem", "lastact", "classifier"):
        getattr(net, name).load_state_dict(getattr(supernet, name).state_dict())
    for k, (src, dst) in enumerate(zip(supernet.cells, net.cells)):
        if not isinstance(src, SearchCell):
            dst.load_state_dict(src.state_dict())
            continue
        for e, layer in zip(dst.layer_edges, dst.layers):
            o = ops[e]
            if o not in (_CONV1, _CONV3):
                continue  # skip / pool: no state
            s_op, d_op = src.edges[e][o].op, layer.op
            d_op[1].weight.copy_(s_op[1].weight)
            s_bn, d_bn = s_op[2], d_op[2]
            if s_bn.affine:
                d_bn.weight.copy_(s_bn.weight)
                d_bn.bias.copy_(s_bn.bias)
            else:
                d_bn.weight.fill_(1.0)
                d_bn.bias.zero_()
            if s_bn.track_running_stats:
                d_bn.running_mean.copy_(s_bn.running_mean)
                d_bn.running_var.copy_(s_bn.running_var)
                d_bn.num_batches_tracked.copy_(s_bn.num_batches_tracked)
            d_bn.eps, d_bn.momentum = s_bn.eps, s_bn.momentum
    net.train(supernet.training)
    return net


# --------------------------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------------------------
def count_parameters(
    arch: Any, *, C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3
) -> int:
    """Number of parameters of the standalone network (cached; Arch objects and tuples share)."""
    return _count_parameters(_ops_of(arch), C, N, num_classes, in_channels)


@lru_cache(maxsize=None)
def _count_parameters(ops: tuple[int, ...], C: int, N: int, num_classes: int, in_channels: int) -> int:
    net = NB201Network(ops, C, N, num_classes, in_channels)
    return int(sum(p.numel() for p in net.parameters()))


def count_flops(
    arch: Any,
    *,
    C: int = 16,
    N: int = 5,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
) -> int:
    """FLOPs of one forward of one ``input_size`` x ``input_size`` image (cached).

    Counted by ``torch.utils.flop_counter.FlopCounterMode``'s convention, from the shapes seen
    by forward hooks on the convolutions and the classifier (the same numbers at a fraction of the
    cost: FlopCounterMode's first use imports ``torch._dynamo``, seconds per process): a
    multiply-add counts as 2 FLOPs, and only convolutions and matrix products (the linear
    classifier, without its bias) are counted (BN, ReLU, pooling, additions are not). The
    benchmark's cost tables ("flops", in millions) count one per multiply-add of convolutions and
    the linear layer plus its bias, so ``benchmark_flops = (count_flops / 2 + num_classes) / 1e6``
    (e.g. 15.64737 for the arch of index 0 on cifar10-valid).
    """
    return _count_flops(_ops_of(arch), C, N, num_classes, in_channels, input_size)


@lru_cache(maxsize=None)
def _count_flops(
    ops: tuple[int, ...], C: int, N: int, num_classes: int, in_channels: int, input_size: int
) -> int:
    if not _is_int(input_size) or input_size < 4:
        raise ValueError(f"input_size={input_size!r}; expected an int >= 4")
    net = NB201Network(ops, C, N, num_classes, in_channels).eval()
    total = 0

    def count(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total  # FlopCounterMode's conv and addmm formulas: 2 x output x (inputs per output)
        if isinstance(module, nn.Conv2d):
            total += 2 * output.numel() * (module.in_channels // module.groups) * int(np.prod(module.kernel_size))
        else:
            total += 2 * output.numel() * module.in_features

    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(count)
    with torch.no_grad():
        net(torch.zeros(1, in_channels, input_size, input_size))
    return total
