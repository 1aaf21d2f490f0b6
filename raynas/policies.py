"""Training policies: how a supernet picks the path of each training step.

A policy runs inside the supernet actor. Searchers name one in a ``train`` work unit as a plain
dict, ``{"name": "uniform"}`` or ``{"name": "pool", "archs": [...], "weights": [...]}``, and the
actor builds it with :func:`make_policy`. A policy has its own state (saved in the actor's
snapshots) and may take an extra step of its own after the weight step (SETN's alpha step).

Every policy that runs inside the actor lives here, Ray-free (the worker imports this module
without Ray): uniform, per-cell, pool, size-balanced (Balanced NAO), SETN's alpha policy and
EvNAS's decoded round-robin. Searchers import their policy from here (never the reverse), and a
policy's ``state_dict`` holds only tensors, numbers, strings, lists and dicts (the worker saves it
with its snapshots, loaded with ``torch.load(weights_only=True)``). Further policies register with
:func:`register_policy`; the name is what a work unit carries.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from raynas.data import Batches
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


POLICIES: dict[str, Callable[..., Policy]] = {}


def register_policy(cls):
    """Class decorator: make a policy available to work units by its ``name`` (a second class
    under a taken name warns and replaces the first)."""
    if cls.name in POLICIES and POLICIES[cls.name] is not cls:
        warnings.warn(f"training policy {cls.name!r} registered twice: {POLICIES[cls.name].__qualname__} is "
                      f"replaced by {cls.__qualname__}", stacklevel=2)
    POLICIES[cls.name] = cls
    return cls


def allowed_mask(allowed_ops, shape: tuple[int, int]) -> np.ndarray:
    """(edges, ops) bool array: True where the (sub-)space allows the op on the edge."""
    mask = np.zeros(shape, dtype=bool)
    for e, ops in enumerate(allowed_ops):
        mask[e, list(ops)] = True
    return mask


# --- SETN ---------------------------------------------------------------------------------------
class SETNPolicy(Policy):
    """Uniform single-path weight steps, each followed by an Adam step on alpha (SETN, Dong & Yang
    2019; the loop is described in :mod:`raynas.searchers.setn`).

    Options (the policy spec): ``seed`` (alpha's init and the alpha step's valid stream), ``lr``,
    ``betas``, ``weight_decay``, ``eps`` (Adam on alpha), ``init_std`` (alpha = init_std * randn).
    ``export()`` sends alpha (plain lists) and the chunk's mean arch loss/accuracy to the searcher.
    """

    name = "setn"

    def __init__(self, space: Space, num_cells: int, *, device: Any = "cpu", seed: int = 0, lr: float = 3e-4,
                 betas=(0.5, 0.999), weight_decay: float = 1e-3, eps: float = 1e-8, init_std: float = 1e-3) -> None:
        super().__init__(space, num_cells, device=device)
        if not lr > 0:
            raise ValueError(f"policy 'setn': lr={lr!r}; must be > 0")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"policy 'setn': betas={betas!r}; expected two numbers in [0, 1)")
        if weight_decay < 0 or init_std < 0 or not eps > 0:
            raise ValueError(f"policy 'setn': weight_decay={weight_decay!r}, eps={eps!r}, init_std={init_std!r}; "
                             "expected weight_decay >= 0, eps > 0, init_std >= 0")
        self.seed = int(seed)
        generator = torch.Generator().manual_seed(self.seed)
        alpha = init_std * torch.randn(space.num_edges, space.num_ops, generator=generator)
        self.alpha = alpha.to(device).requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.alpha], lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)
        mask = ~allowed_mask(space.allowed_ops, (space.num_edges, space.num_ops))
        self._disallowed = torch.as_tensor(mask, device=device) if mask.any() else None
        self._valid: Batches | None = None
        self._valid_iter = None
        self._valid_state: dict | None = None  # loaded before the stream exists (it needs the worker)
        self._loss_sum = self._correct = None
        self._seen = 0

    # --- the alpha step -------------------------------------------------------------------
    def arch_weights(self) -> torch.Tensor:
        """softmax(alpha) per edge over its allowed ops: the (edges, ops) mixture weights."""
        logits = self.alpha if self._disallowed is None else self.alpha.masked_fill(self._disallowed, -math.inf)
        return logits.softmax(dim=-1)

    def _next_valid(self, worker):
        if self._valid is None:
            split, size = worker.splits.valid, worker.config["batch_size"]
            # full batches, as the official loader's (unless the split is smaller than one batch)
            self._valid = Batches(split, size, shuffle=True, augment=worker.splits.info, seed=self.seed + 2,
                                  drop_last=len(split.labels) >= size, device=worker.device)
            if self._valid_state is not None:
                self._valid.load_state_dict(self._valid_state)
                self._valid_state = None
            self._valid_iter = self._valid.forever()
        return next(self._valid_iter)

    def arch_step(self, worker, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One first-order Adam step on alpha from the joint forward on ``(x, y)``; the supernet's
        parameters get no gradient. Returns the (detached) loss and logits."""
        logits = worker.supernet(x, self.arch_weights())
        loss = F.cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(loss, [self.alpha])
        self.alpha.grad = grad
        self.optimizer.step()
        self.alpha.grad = None
        return loss.detach(), logits.detach()

    def after_step(self, worker, step: int) -> dict:
        x, y = self._next_valid(worker)
        loss, logits = self.arch_step(worker, x, y)
        # summed on the device (no sync per step); the chunk's means go out through export()
        if self._loss_sum is None:
            self._loss_sum = torch.zeros((), device=loss.device)
            self._correct = torch.zeros((), device=loss.device)
        self._loss_sum += loss * y.numel()
        self._correct += (logits.argmax(1) == y).sum()
        self._seen += y.numel()
        return {}

    # --- what goes out and what is kept ---------------------------------------------------
    def export(self) -> dict:
        """alpha (plain lists) and the mean arch loss/accuracy since the previous export (the
        worker exports once per ``train`` call)."""
        out: dict = {"alpha": self.alpha.detach().cpu().tolist()}
        if self._seen:
            out["arch_loss"] = float(self._loss_sum.item() / self._seen)
            out["arch_acc"] = float(self._correct.item() / self._seen)
        self._loss_sum = self._correct = None
        self._seen = 0
        return out

    def state_dict(self) -> dict:
        valid = self._valid.state_dict() if self._valid is not None else self._valid_state
        return {"alpha": self.alpha.detach().cpu().clone(), "optimizer": self.optimizer.state_dict(), "valid": valid}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.alpha.copy_(state["alpha"].to(self.alpha.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self._valid, self._valid_iter, self._valid_state = None, None, state["valid"]


# --- EvNAS --------------------------------------------------------------------------------------
def decoded_weights(arch: Any, num_ops: int, device: Any = "cpu", *, allowed_ops=None) -> torch.Tensor:
    """EvNAS's decode of an arch into mixture weights: ``softmax(one_hot(arch))`` per edge.

    A float32 ``(num_edges, num_ops)`` tensor on ``device``: the arch's op gets ``e / (e + k - 1)``
    and each other op ``1 / (e + k - 1)``, ``k`` = the ops the edge allows (all 5 on NB201:
    e/(e+4) ~ 0.405 and 1/(e+4) ~ 0.149), disallowed ops 0. Training (:class:`EvNASPolicy`) and
    scoring (``SupernetWorker.score(path_mode="decoded")``) both call this, so the two cannot
    drift. ``arch``: an object with ``.ops`` or a sequence of op indices.
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


class EvNASPolicy(Policy):
    """EvNAS (Sinha & Chen 2020): the step at version ``s`` trains individual ``(s - start) % P``
    of ``archs``, decoded (:func:`decoded_weights`).

    ``archs``: the population's argmax archs in population order (strings or op tuples: the
    decoded weights depend only on the argmax); ``start``: the generation's first version, so the
    round-robin restarts each generation as the official per-epoch ``step % pop_size`` does.
    The weights are built once per policy, on the device; ``path`` allocates nothing. Stateless.
    """

    name = "evnas"

    def __init__(self, space, num_cells: int, *, archs, start: int = 0, device: Any = "cpu") -> None:
        super().__init__(space, num_cells, device=device)
        if not archs:
            raise ValueError("policy 'evnas': archs is empty; expected the population's archs")
        self.archs = [space.parse(a) for a in archs]
        self.start = int(start)
        decoded: dict = {}
        for arch in self.archs:
            if arch not in decoded:
                decoded[arch] = decoded_weights(arch, space.num_ops, device, allowed_ops=space.allowed_ops)
        self.weights = [decoded[a] for a in self.archs]

    def path(self, rng: np.random.Generator, step: int):
        return self.weights[(step - self.start) % len(self.weights)]


for _cls in (Policy, PerCellPolicy, PoolPolicy, BalancedPolicy, SETNPolicy, EvNASPolicy):
    register_policy(_cls)


def make_policy(spec: dict | str, space: Space, num_cells: int, device: Any = "cpu") -> Policy:
    """The policy a work unit's spec names (``"uniform"`` or ``{"name": ..., **options}``)."""
    spec = normalise_spec(spec)
    name = spec.pop("name", None)
    if name not in POLICIES:
        raise ValueError(f"unknown training policy {name!r}; expected one of: {', '.join(sorted(POLICIES))}")
    policy = POLICIES[name](space, num_cells, device=device, **spec)
    # the spec it was made from: a unit naming the same spec keeps this policy and its state
    policy.spec = {"name": name, **spec}
    return policy


def normalise_spec(spec: dict | str) -> dict:
    """A policy spec as a dict (a bare name ``"uniform"`` -> ``{"name": "uniform"}``), a copy."""
    return {"name": spec} if isinstance(spec, str) else dict(spec)
