"""Training policies: how a supernet picks the path of each training step.

A policy runs inside the supernet actor. Searchers name one in a ``train`` work unit as a plain
dict, ``{"name": "uniform"}`` or ``{"name": "pool", "archs": [...], "weights": [...]}``, and the
actor builds it with :func:`make_policy`. A policy has its own state (saved in the actor's
snapshots) and may take an extra step of its own after the weight step (SETN's alpha step).

Methods add their policy with :func:`register_policy`; the name is what their work units carry.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import numpy as np
import torch

from raynas.spaces import Space


class Policy:
    """Uniform single path: one arch for every cell, drawn uniformly from the (sub-)space."""

    #: registry name
    name = "uniform"
    #: the spec this policy was made from (set by :func:`make_policy`)
    spec: dict = {"name": "uniform"}

    def __init__(self, space: Space, num_cells: int, *, device: Any = "cpu", **options: Any) -> None:
        if options:
            raise ValueError(f"policy {self.name!r} takes no options; got {sorted(options)}")
        self.space = space
        self.num_cells = num_cells
        self.device = device

    def path(self, rng: np.random.Generator, step: int):
        """The ``path`` argument of the supernet forward for this step."""
        return self.space.sample(rng)

    def after_step(self, worker, step: int) -> dict:
        """Hook after the weight step (SETN: the alpha step); returns extra metrics."""
        return {}

    def export(self) -> dict:
        """Plain values (lists, floats) the searcher needs, e.g. SETN's alpha; added to the
        ``train`` unit's row under these top-level keys."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass



class PerCellPolicy(Policy):
    """Each cell draws its own arch uniformly (the few-shot NAS official supernet training)."""

    name = "per_cell"

    def path(self, rng: np.random.Generator, step: int):
        return self.space.sample(rng, self.num_cells)


class PoolPolicy(Policy):
    """Draws from a given pool of archs, uniformly or with given weights (size-balanced NAO)."""

    name = "pool"

    def __init__(self, space: Space, num_cells: int, *, archs, weights=None, device: Any = "cpu") -> None:
        super().__init__(space, num_cells, device=device)
        if not archs:
            raise ValueError("policy 'pool': archs is empty; expected at least one arch")
        self.archs = [space.parse(a) for a in archs]
        if weights is None:
            self.probs = None
        else:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(self.archs),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
                raise ValueError(
                    f"policy 'pool': weights of shape {w.shape}; expected {len(self.archs)} finite non-negative "
                    "numbers with a positive sum"
                )
            self.probs = w / w.sum()

    def path(self, rng: np.random.Generator, step: int):
        return self.archs[int(rng.choice(len(self.archs), p=self.probs))]


#: the network whose parameter counts weigh archs in :class:`BalancedPolicy`: the benchmark's
#: CIFAR-10 network (only relative sizes matter, so one reference serves every dataset)
BALANCED_REFERENCE = dict(C=16, N=5, num_classes=10)
_SIZE_TABLES: dict = {}


def edge_size_table(space: Space) -> tuple[int, tuple[dict[int, int], ...]]:
    """``(base, deltas)`` with ``size(arch) = base + sum(deltas[e][arch.ops[e]])``, the reference
    network's parameter count (:data:`BALANCED_REFERENCE`) of any arch of ``space``.

    Sizes of NB201 networks add up edge by edge (``Space.size_table``); this is that table
    relative to the first allowed op of each edge of a (sub-)space. Cached per space.
    """
    key = (type(space).__name__, getattr(space, "name", ""), tuple(map(tuple, space.allowed_ops)))
    if key in _SIZE_TABLES:
        return _SIZE_TABLES[key]
    base_ops = [ops[0] for ops in space.allowed_ops]
    base = space.count_parameters(space.arch(base_ops), **BALANCED_REFERENCE)
    deltas = []
    for e, ops in enumerate(space.allowed_ops):
        row = {ops[0]: 0}
        for o in ops[1:]:
            probe = list(base_ops)
            probe[e] = o
            row[o] = space.count_parameters(space.arch(probe), **BALANCED_REFERENCE) - base
        deltas.append(row)
    _SIZE_TABLES[key] = (base, tuple(deltas))
    return _SIZE_TABLES[key]


class BalancedPolicy(Policy):
    """Size-balanced single path (Balanced one-shot NAO, Luo et al. 2020): each step trains an arch
    drawn with probability proportional to its standalone parameter count, so large archs (which
    need more training to be ranked fairly) get more updates.

    Spec ``{"name": "balanced", "archs": [...], "floor": F}``. ``archs``: the pool to draw from
    (probabilities computed once per policy); omitted: the whole (sub-)space, drawn by rejection
    (a uniform arch is kept with probability ``weight / max_weight``), so nothing enumerates the
    space per step. Weight = ``max(size, floor)`` where size = parameter count of the reference
    network :data:`BALANCED_REFERENCE` (C=16, N=5, 10 classes; relative sizes are what matter),
    from :func:`edge_size_table` (``count_parameters`` per edge op, cached per process).
    ``floor``: a parameter count; default = the size of the smallest arch of the (sub-)space that
    holds any parametric op (full NB201: 101,306 = the 73,306-parameter skeleton plus one 1x1 conv
    edge), so op-free archs (skeleton only) weigh as much as the cheapest conv arch.
    """

    name = "balanced"
    #: uniform candidates drawn per round of rejection sampling
    CANDIDATES = 8

    def __init__(self, space: Space, num_cells: int, *, archs=None, floor: float | None = None,
                 device: Any = "cpu") -> None:
        super().__init__(space, num_cells, device=device)
        self.base, self.deltas = edge_size_table(space)
        mins = [min(row.values()) for row in self.deltas]
        smallest = self.base + sum(mins)
        steps = [d - m for row, m in zip(self.deltas, mins) for d in row.values() if d > m]
        if floor is None:
            floor = smallest + min(steps) if steps else smallest
        elif not (isinstance(floor, (int, float)) and np.isfinite(floor) and floor >= 0):
            raise ValueError(f"policy 'balanced': floor={floor!r}; expected a finite number of parameters >= 0")
        self.floor = float(floor)
        if archs is None:
            self.archs = None
            largest = self.base + sum(max(row.values()) for row in self.deltas)
            self.max_weight = max(float(largest), self.floor)
            # padded (edges, ops) tables: a batch of candidates is drawn and weighed in a few numpy calls
            width = max(len(ops) for ops in space.allowed_ops)
            self._lens = np.array([len(ops) for ops in space.allowed_ops])
            self._ops = np.zeros((len(self.deltas), width), dtype=np.int64)
            self._sizes = np.zeros((len(self.deltas), width), dtype=np.float64)
            for e, ops in enumerate(space.allowed_ops):
                self._ops[e, : len(ops)] = ops
                self._sizes[e, : len(ops)] = [self.deltas[e][o] for o in ops]
        else:
            if len(archs) == 0:
                raise ValueError("policy 'balanced': archs is empty; expected at least one arch "
                                 "(or omit archs for the whole space)")
            self.archs = [space.parse(a) for a in archs]
            weights = np.array([self.weight(a) for a in self.archs], dtype=np.float64)
            self.probs = weights / weights.sum()
            self.cdf = np.cumsum(self.probs)

    def size(self, arch) -> int:
        """Parameter count of ``arch`` in the reference network."""
        return self.base + sum(row[o] for row, o in zip(self.deltas, arch.ops))

    def weight(self, arch) -> float:
        return max(float(self.size(arch)), self.floor)

    def path(self, rng: np.random.Generator, step: int):
        if self.archs is not None:
            i = int(np.searchsorted(self.cdf, rng.random() * self.cdf[-1], side="right"))
            return self.archs[min(i, len(self.archs) - 1)]
        edges = np.arange(len(self._lens))
        while True:  # rejection: uniform candidates, kept with probability weight / max_weight
            idx = rng.integers(0, self._lens, size=(self.CANDIDATES, len(self._lens)))
            weights = np.maximum(self.base + self._sizes[edges, idx].sum(axis=1), self.floor)
            kept = np.flatnonzero(rng.random(self.CANDIDATES) * self.max_weight < weights)
            if kept.size:
                return self.space.arch(self._ops[edges, idx[kept[0]]].tolist())


def decoded_weights(arch: Any, num_ops: int, device: Any = "cpu", *, allowed_ops=None) -> torch.Tensor:
    """EvNAS's decode of an arch into mixture weights: ``softmax(one_hot(arch))`` per edge.

    A float32 ``(num_edges, num_ops)`` tensor on ``device``: the arch's op gets ``e / (e + k - 1)``
    and each other op ``1 / (e + k - 1)``, ``k`` = the ops the edge allows (all 5 on NB201:
    e/(e+4) ~ 0.405 and 1/(e+4) ~ 0.149), disallowed ops 0. Training (:class:`EvNASPolicy` in
    ``raynas.searchers.evnas``) and scoring (``SupernetWorker.score(path_mode="decoded")``) both
    call this, so the two cannot drift. ``arch``: an object with ``.ops`` or a sequence of op indices.
    """
    ops = tuple(int(o) for o in (arch.ops if hasattr(arch, "ops") else arch))
    logits = torch.full((len(ops), num_ops), -torch.inf, dtype=torch.float64)
    for e, o in enumerate(ops):
        allowed = list(range(num_ops)) if allowed_ops is None else list(allowed_ops[e])
        if o not in allowed:
            raise ValueError(f"decoded_weights: edge {e} uses op {o}, outside the edge's allowed ops {tuple(allowed)}")
        logits[e, allowed] = 0.0
        logits[e, o] = 1.0
    return torch.softmax(logits, dim=-1).to(device=device, dtype=torch.float32)


POLICIES: dict[str, Callable[..., Policy]] = {}


def register_policy(cls):
    """Class decorator: make a policy available to work units by its ``name``."""
    POLICIES[cls.name] = cls
    return cls


for _cls in (Policy, PerCellPolicy, PoolPolicy, BalancedPolicy):
    register_policy(_cls)


#: policies that live in a method's own searcher file: imported (and so registered) on first use
POLICY_MODULES: dict[str, str] = {
    "setn": "raynas.searchers.setn",
    "evnas": "raynas.searchers.evnas",
}


def make_policy(spec: dict | str, space: Space, num_cells: int, device: Any = "cpu") -> Policy:
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in POLICIES and name in POLICY_MODULES:
        importlib.import_module(POLICY_MODULES[name])
    if name not in POLICIES:
        raise ValueError(f"unknown training policy {name!r}; expected one of: {', '.join(sorted(POLICIES))}")
    policy = POLICIES[name](space, num_cells, device=device, **spec)
    # the spec it was made from: a unit naming the same spec keeps this policy and its state
    policy.spec = {"name": name, **spec}
    return policy


def normalise_spec(spec: dict | str) -> dict:
    return {"name": spec} if isinstance(spec, str) else dict(spec)
