"""SETN: One-Shot Neural Architecture Search via Self-Evaluated Template Network (Dong & Yang, ICCV 2019),
as the official code runs it on NAS-Bench-201 (xautodl ``exps/algos/SETN.py`` and
``exps/NATS-algos/search-cell.py --algo setn``).

The loop:

1. Supernet training. Each step (a) samples one arch uniformly (the same genotype in every cell),
   single-path forward on a train batch, SGD on the weights only; then (b) the *alpha step*: a
   "joint" forward on a valid batch where every edge is the softmax(alpha)-weighted sum of its ops,
   cross-entropy, Adam on alpha only (lr 3e-4, betas (0.5, 0.999), weight decay 1e-3), first
   order. Both run inside the supernet actor under the training policy
   :class:`raynas.policies.SETNPolicy` (name ``"setn"``); its alpha comes back to the searcher
   in each ``train`` unit's row.
2. Template: every arch of the (sub-)space gets the score ``sum_e log_softmax(alpha)[e, op_e]``;
   the top ``num_candidates`` (100) are the candidates.
3. Self-evaluation: each candidate is scored on ``score_batches`` (1) valid batches (512) in eval
   mode, a different batch per candidate (fixed by its position in the candidate list); the best
   ``top_k`` (1) are trained from scratch.

Deviations:
- Candidates are ranked by a vectorised template over all archs of the (sub-)space; ties are
  broken by arch index (the official code sorts its own ``gen_all`` order, stably).
- The alpha step's valid batches are an epoch-shuffled stream over the valid split (the official
  ``SearchDataset`` pairs each train image with a valid image drawn at random, with replacement);
  they get the train augmentation, as in the official code.
- The alpha step takes the gradient of alpha alone (``torch.autograd.grad``): the supernet's
  weights get no ``.grad`` from it (the official code also backpropagates into the weights, then
  zeroes those gradients before the next weight step: the same weights result).
- On a sub-space, alpha is masked (disallowed ops get weight 0 and are not in the template).
  Under few-shot each sub-supernet trains its own alpha and each region contributes its own
  template top ``num_candidates``. Where alpha starts depends on ``few_shot_variant``:
  ``"continue"`` (default): each sub-supernet continues the one-shot supernet's alpha (its values,
  its Adam moments and its valid stream: the worker loads the parent's policy state, the spec
  being the same), masked to its region, as it continues the parent's weights. ``"independent"``:
  the official few-shot SETN (METHODS.md): no one-shot supernet is trained; each sub-supernet is
  a SETN search of its own from scratch (fresh weights, fresh alpha, a fresh optimizer) for
  ``few_shot_steps`` steps (``sub_supernet_budget=1.0``: the one-shot schedule each; the
  ``few-shot-paper`` preset). Every sub-supernet starts from the run's seed (the same initial
  weights and alpha on the ops they share).
- The "paper" preset uses no gradient clipping: neither official SETN loop clips.
- The weights' learning rate follows the cosine per step (officially: once per epoch).
- The official loop reruns the selection after every epoch for its log; raynas runs it once.
- The ``top_k`` picks compute distinct functions (algebraic canonical key): an isomorphic pick
  is skipped and the next distinct candidate trains instead.
- Work is cut into units (training chunks, scoring cohorts; a short cohort re-issues its missing
  archs); the result is that of one loop.

See ``docs/methods.md`` (SETN) for the defaults and the loop in full.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# the policy runs inside the actor, so it lives with the actor side (Ray-free); re-exported here
from raynas.policies import SETNPolicy, allowed_mask
from raynas.searchers.base import OneShotSearcher
from raynas.spaces import Space

from raynas.searchers.presets import SETN_PRESETS as PRESETS  # defined Ray-free there (raynas.settings reads them)


def template_scores(alpha, allowed_ops) -> tuple[np.ndarray, np.ndarray]:
    """Every arch of the (sub-)space with its template score.

    Returns ``(ops, scores)``: ``ops`` (n, edges) op indices of all archs in index order (edge 0
    varies slowest), ``scores`` (n,) = ``sum_e log_softmax(alpha[e] over allowed ops)[ops[e]]``.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.ndim != 2 or alpha.shape[0] != len(allowed_ops) or not np.all(np.isfinite(alpha)):
        raise ValueError(f"alpha of shape {alpha.shape}; expected finite values of shape ({len(allowed_ops)}, num_ops)")
    logits = np.where(allowed_mask(allowed_ops, alpha.shape), alpha, -np.inf)
    top = logits.max(axis=1, keepdims=True)
    logp = logits - (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))
    grids = np.meshgrid(*[np.asarray(ops) for ops in allowed_ops], indexing="ij")
    ops = np.stack([g.reshape(-1) for g in grids], axis=1)
    scores = logp[np.arange(alpha.shape[0]), ops].sum(axis=1)
    return ops, scores


def template_top_k(alpha, k: int, allowed_ops) -> list[tuple[int, ...]]:
    """The ``k`` archs (op tuples) of highest template score, best first; ties by arch index."""
    if int(k) < 1:
        raise ValueError(f"k={k!r}; must be >= 1")
    ops, scores = template_scores(alpha, allowed_ops)
    order = np.argsort(-scores, kind="stable")[: int(k)]
    return [tuple(int(o) for o in ops[i]) for i in order]


class SETNSearcher(OneShotSearcher):
    """SETN: uniform weight steps + alpha steps in the actor; template top-K scored on the
    supernet; the best trained standalone.

    ``arch_lr``, ``arch_betas``, ``arch_weight_decay``, ``arch_eps``: Adam on alpha (the paper's
    3e-4, (0.5, 0.999), 1e-3, 1e-8). Other arguments: :class:`OneShotSearcher`. Each supernet's
    last exported alpha is kept in ``exports_[k]["alpha"]`` (searcher state).

    Under few-shot (``few_shot=EDGES``) every sub-supernet trains its own alpha (the policy masks
    the ops outside its region; it continues the one-shot supernet's alpha, or starts afresh with
    ``few_shot_variant="independent"``, as the few-shot authors run SETN once per sub-supernet) and
    each region contributes the top ``num_candidates`` of its own template.
    """

    method = "setn"
    _export_keys = ("alpha",)
    _state_keys = OneShotSearcher._state_keys + ("policy_spec_",)

    def __init__(self, *, total_steps: int, arch_lr: float = 3e-4, arch_betas=(0.5, 0.999),
                 arch_weight_decay: float = 1e-3, arch_eps: float = 1e-8, **kwargs: Any) -> None:
        if "policy" in kwargs:
            raise ValueError(f"policy={kwargs['policy']!r}; SETN trains with its own policy 'setn': leave it out")
        if not arch_lr > 0:
            raise ValueError(f"arch_lr={arch_lr!r}; must be > 0")
        if len(arch_betas) != 2 or not all(0 <= b < 1 for b in arch_betas):
            raise ValueError(f"arch_betas={arch_betas!r}; expected two numbers in [0, 1)")
        if arch_weight_decay < 0:
            raise ValueError(f"arch_weight_decay={arch_weight_decay!r}; must be >= 0")
        if not arch_eps > 0:
            raise ValueError(f"arch_eps={arch_eps!r}; must be > 0")
        # plain values only: the actor keeps its policy (and alpha) while units name an equal spec,
        # and a spec that went through JSON (Tune's restore) must still be equal
        spec = {"name": "setn", "seed": int(kwargs.get("seed", 0)), "lr": float(arch_lr),
                "betas": [float(b) for b in arch_betas], "weight_decay": float(arch_weight_decay),
                "eps": float(arch_eps)}
        super().__init__(total_steps=total_steps, policy=spec, **kwargs)
        self.arch_lr = arch_lr
        self.arch_betas = arch_betas
        self.arch_weight_decay = arch_weight_decay
        self.arch_eps = arch_eps
        self.policy_spec_ = spec

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        self.policy = self.policy_spec_  # the spec the actors' alphas were made from

    def alpha(self, supernet: int = 0) -> np.ndarray | None:
        """The last alpha ``supernet`` exported (``None`` before its first train unit)."""
        alpha = self.exports_.get(supernet, {}).get("alpha")
        return None if alpha is None else np.asarray(alpha, dtype=np.float64)

    def _template(self, supernet: int, space: Space) -> list:
        alpha = self.alpha(supernet)
        if alpha is None:
            raise RuntimeError(f"SETN: supernet {supernet} reported no 'alpha'; its train units must run the "
                               "'setn' policy (whose rows carry alpha)")
        top = template_top_k(alpha, min(self.num_candidates, len(space)), space.allowed_ops)
        return [space.arch(ops) for ops in top]

    def _candidates(self) -> list:
        if not self.few_shot:
            return self._template(0, self.space_)
        return [arch for k, region in enumerate(self.regions_, start=1) for arch in self._template(k, region)]


__all__ = ["PRESETS", "SETNPolicy", "SETNSearcher", "template_scores", "template_top_k"]
