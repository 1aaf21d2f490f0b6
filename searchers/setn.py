"""SETN: One-Shot Neural Architecture Search via Self-Evaluated Template Network (Dong & Yang, ICCV 2019),
as the official code runs it on NAS-Bench-201 (xautodl ``exps/algos/SETN.py`` and
``exps/NATS-algos/search-cell.py --algo setn``).

The loop:

1. Supernet training. Each step (a) samples one arch uniformly (the same genotype in every cell),
   single-path forward on a train batch, SGD on the weights only; then (b) the *alpha step*: a
   "joint" forward on a valid batch where every edge is the softmax(alpha)-weighted sum of its ops,
   cross-entropy, Adam on alpha only (lr 3e-4, betas (0.5, 0.999), weight decay 1e-3), first
   order. Both run inside the supernet actor under the training policy :class:`SETNPolicy`
   (name ``"setn"``); its alpha comes back to the searcher in each ``train`` unit's row.
2. Template: every arch of the (sub-)space gets the score ``sum_e log_softmax(alpha)[e, op_e]``;
   the top ``num_candidates`` (100) are the candidates.
3. Self-evaluation: each candidate is scored on ``score_batches`` (1) valid batches (512) in eval
   mode, a different batch per candidate (fixed by its position in the cohort); the best
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
  Under few-shot each sub-supernet trains its own alpha, from a fresh init, and each region
  contributes its own template top ``num_candidates``.
- The "paper" preset uses no gradient clipping: neither official SETN loop clips.
- The weights' learning rate follows the cosine per step (officially: once per epoch).
- The official loop reruns the selection after every epoch for its log; raynas runs it once.
- Work is cut into units (training chunks, scoring cohorts); the result is that of one loop.

See ``docs/methods.md`` (SETN) for the defaults and the loop in full.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raynas.data import Batches
from raynas.policies import Policy, register_policy
from raynas.searchers.base import OneShotSearcher
from raynas.spaces import Space

PRESETS = {
    # finishes on 2 CPU cores in a few minutes on digits; the supernet schedule is RSPS's small one, so
    # the two compare side by side (a SETN step costs ~3x: the alpha step's joint forward runs every op)
    "small": {
        "supernet": dict(C=8, N=1, batch_size=64, valid_batch_size=128, epochs=30, lr=0.025, lr_min=0.001,
                         weight_decay=5e-4, grad_clip=None),
        "searcher": dict(chunk_steps=160, num_candidates=30, cohort_size=30, score_batches=1, top_k=2,
                         standalone=dict(C=8, N=1, epochs=15, batch_size=64)),
    },
    # the paper's settings: 250 epochs (NATS-Bench's rerun: 100), batch 64, template top-100 scored on
    # one valid batch of 512 each, the best one trained standalone
    "paper": {
        "supernet": dict(C=16, N=5, batch_size=64, valid_batch_size=512, epochs=250, lr=0.025, lr_min=0.001,
                         momentum=0.9, nesterov=True, weight_decay=5e-4, grad_clip=None),
        "searcher": dict(chunk_steps=500, num_candidates=100, cohort_size=100, score_batches=1, top_k=1,
                         arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3, arch_eps=1e-8,
                         standalone=dict(C=16, N=5, epochs=200, batch_size=256)),
    },
}


def _allowed_mask(allowed_ops, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for e, ops in enumerate(allowed_ops):
        mask[e, list(ops)] = True
    return mask


def template_scores(alpha, allowed_ops) -> tuple[np.ndarray, np.ndarray]:
    """Every arch of the (sub-)space with its template score.

    Returns ``(ops, scores)``: ``ops`` (n, edges) op indices of all archs in index order (edge 0
    varies slowest), ``scores`` (n,) = ``sum_e log_softmax(alpha[e] over allowed ops)[ops[e]]``.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.ndim != 2 or alpha.shape[0] != len(allowed_ops) or not np.all(np.isfinite(alpha)):
        raise ValueError(f"alpha of shape {alpha.shape}; expected finite values of shape ({len(allowed_ops)}, num_ops)")
    logits = np.where(_allowed_mask(allowed_ops, alpha.shape), alpha, -np.inf)
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


@register_policy
class SETNPolicy(Policy):
    """Uniform single-path weight steps, each followed by an Adam step on alpha (SETN).

    Options (the policy spec): ``seed`` (alpha's init and the alpha step's valid stream), ``lr``,
    ``betas``, ``weight_decay``, ``eps`` (Adam on alpha), ``init_std`` (alpha = init_std * randn).
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
        mask = ~_allowed_mask(space.allowed_ops, (space.num_edges, space.num_ops))
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


class SETNSearcher(OneShotSearcher):
    """SETN: uniform weight steps + alpha steps in the actor; template top-K scored on the
    supernet; the best trained standalone.

    ``arch_lr``, ``arch_betas``, ``arch_weight_decay``, ``arch_eps``: Adam on alpha (the paper's
    3e-4, (0.5, 0.999), 1e-3, 1e-8). Other arguments: :class:`OneShotSearcher`. Each supernet's
    last exported alpha is kept in ``exports_[k]["alpha"]`` (searcher state).

    Under few-shot (``few_shot=EDGES``) every sub-supernet trains its own alpha (the policy masks
    the ops outside its region) and each region contributes the top ``num_candidates`` of its own
    template, as the few-shot authors run SETN once per sub-supernet.
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
