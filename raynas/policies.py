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


POLICIES: dict[str, Callable[..., Policy]] = {}


def register_policy(cls):
    """Class decorator: make a policy available to work units by its ``name``."""
    POLICIES[cls.name] = cls
    return cls


for _cls in (Policy, PerCellPolicy, PoolPolicy):
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
