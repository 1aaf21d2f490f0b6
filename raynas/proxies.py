"""TE-NAS's two training-free proxies (Chen, Gong & Wang, ICLR 2021), in plain torch (no Ray).

- :func:`ntk_condition_number`: the condition number ``lambda_max / lambda_min`` of the empirical
  neural tangent kernel ``G G^T`` of a randomly initialised network on one batch, where row ``i``
  of ``G`` is the gradient of ``sum_c logit[i, c]`` with respect to every parameter whose name
  contains ``"weight"`` (the official ``get_ntk_n``). Lower trains better. The official code
  takes one backward per image; here one forward is followed by every image's backward at once
  (``torch.func``), with that loop kept as a fallback (:data:`NTK_METHODS`).
- :func:`linear_region_count`: the number of distinct ReLU sign patterns a network produces on a
  set of inputs (the official ``LinearRegionCount``): a lower bound on the number of linear
  regions the inputs fall in. Higher is more expressive.

A network here is an :class:`~raynas.spaces.nb201_nets.NB201Supernet` (or the stem-less one-cell
:class:`ThinNetwork`) run as a mixture whose per-edge weights come from a 0/1 *mask* of active
ops (:func:`mixture_weights`), or any ``nn.Module`` taking only the input. :func:`score_masks`
scores a list of masks the way a TE-NAS round needs: for each repeat, one fresh init and one batch
(seeded), shared by every mask, so the full supernet's value of a repeat pairs with each pruned
candidate's. The init (:data:`INITS`) is ``"default"``, PyTorch's own module initialisation, which
is what the official code ran (:func:`default_init_`; behind the paper's 93.9), or ``"kaiming"``,
the Kaiming normal init the paper describes (:func:`kaiming_init_`). Everything is deterministic
given the seed: inits and batches are drawn from CPU ``torch.Generator`` s (the global RNG is left
as it was), so a mask scores the same on any device up to floating point.

Ops whose mixture weight is 0 (pruned, or ``none``) do not run, in both proxies: the official
cell does the same (``layer(nodes[j]) * w if w > 0.01 else 0`` in TENAS'
``lib/models/cell_searchs/search_cells.py``), so a pruned op's ReLU adds no sign pattern there either.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from raynas.checks import require_at_least_one
from raynas.spaces.nb201_nets import EDGES, NUM_EDGES, NUM_OPS, NB201Supernet, SearchCell

__all__ = [
    "INITS",
    "mixture_weights",
    "default_init_",
    "kaiming_init_",
    "init_network_",
    "build_ntk_network",
    "ThinNetwork",
    "NTK_METHODS",
    "ntk_gram",
    "condition_number",
    "ntk_condition_number",
    "linear_region_count",
    "random_crops",
    "repeat_generator",
    "score_masks",
]

#: the value the official code gives a NaN condition number (np.nan_to_num(..., nan=1e5))
NAN_CONDITION = 1e5
#: how :func:`ntk_gram` computes the rows of ``G``: "batched" (one forward, then all rows in one
#: vmapped backward with ``torch.func``, falling back to the loop where torch.func cannot run the
#: network) or "loop" (one ``torch.autograd.grad`` per image, as the official code). Same gram.
NTK_METHODS = ("batched", "loop")
#: the batched NTK's memory bound, in float32 elements (512 MiB): the rows' backward passes run
#: in chunks of at most this many elements of gradient row plus activation cotangents
NTK_CHUNK_ELEMENTS = 1 << 27
#: how the proxies' networks are initialised: PyTorch's module defaults (what the official code
#: ran: its init names match nothing) or the paper's Kaiming normal
INITS = ("default", "kaiming")


# --------------------------------------------------------------------------------------------
# masks and networks
# --------------------------------------------------------------------------------------------
def mixture_weights(mask: Any) -> torch.Tensor:
    """Per-edge mixture weights of a (6, 5) 0/1 mask of active ops: ``1/k`` on each of the ``k``
    active ops of an edge, 0 elsewhere (the official code's softmax over alphas that are 0 on
    active ops and -1000 on pruned ones). Every edge needs at least one active op."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float64))
    if tuple(m.shape) != (NUM_EDGES, NUM_OPS) or not bool(((m == 0) | (m == 1)).all()):
        raise ValueError(f"mask={np.asarray(mask).tolist()!r}; expected a ({NUM_EDGES}, {NUM_OPS}) array of 0/1")
    counts = m.sum(1, keepdim=True)
    if bool((counts == 0).any()):
        e = int((counts[:, 0] == 0).nonzero()[0])
        raise ValueError(f"mask row {e} (edge {EDGES[e][0]}<-{EDGES[e][1]}) has no active op; each edge needs >= 1")
    return (m / counts).float()


def kaiming_init_(module: nn.Module, *, mode: str, generator: torch.Generator | None = None) -> nn.Module:
    """The init the TE-NAS paper intends: Kaiming normal (``mode`` "fan_in" for the region count,
    "fan_out" for the NTK) on convolutions and linear layers with zero biases; BN weight 1, bias 0.

    The official code never applies it (:func:`default_init_`): ``init="kaiming"`` is the paper's
    intent, not the code's run."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode={mode!r}; expected 'fan_in' or 'fan_out'")
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu", generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.fill_(1.0)
                m.bias.zero_()
    return module


def default_init_(module: nn.Module, *, generator: torch.Generator | None = None) -> nn.Module:
    """PyTorch's own initialisation, drawn from ``generator``: what ``reset_parameters`` of
    ``nn.Conv2d`` / ``nn.Linear`` does (weight ``kaiming_uniform_(a=sqrt(5))``, bias uniform in
    +-1/sqrt(fan_in)) and a BatchNorm's weight 1, bias 0. The official TE-NAS networks keep this
    init: its launcher's ``--init kaiming_normal`` becomes ``kaiming_normal_fanout`` /
    ``kaiming_normal_fanin``, names its ``init_model`` does not know, so nothing re-initialises them."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                if m.bias is not None:
                    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                    m.bias.uniform_(-bound, bound, generator=generator)
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.fill_(1.0)
                m.bias.zero_()
    return module


def init_network_(module: nn.Module, init: str, *, mode: str, generator: torch.Generator | None = None) -> nn.Module:
    """``module`` initialised by ``init`` (:data:`INITS`); ``mode`` is Kaiming's fan ("fan_in" for
    the region count's network, "fan_out" for the NTK's; PyTorch's default init has none)."""
    if init == "default":
        return default_init_(module, generator=generator)
    if init == "kaiming":
        return kaiming_init_(module, mode=mode, generator=generator)
    raise ValueError(f"init={init!r}; expected one of {INITS}")


def build_ntk_network(*, num_classes: int, in_channels: int, C: int = 3, N: int = 1) -> NB201Supernet:
    """The NTK's network: the full NB201 macro supernet, affine BNs that track running stats
    (train mode: batch statistics are used either way)."""
    return NB201Supernet(C=C, N=N, num_classes=num_classes, in_channels=in_channels,
                         bn_affine=True, bn_track_running_stats=True)


class ThinNetwork(nn.Module):
    """The region count's thin network (official ``model_config_thin``: C=1, N=1, depth 1, no
    stem): one search cell on the raw ``C``-channel input, then BN+ReLU, global pooling and a
    linear classifier. ``forward(x, weights)`` runs the cell as a mixture: edge ``e`` outputs
    ``sum_o weights[e, o] * op_o(node)`` over the ops whose weight is not 0."""

    def __init__(self, *, C: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.cell = SearchCell(C, True, True)
        self.lastact = nn.Sequential(nn.BatchNorm2d(C), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C, num_classes)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        w = torch.as_tensor(weights).tolist()
        nodes = [x]
        for i in (1, 2, 3):
            s = None
            for e, (target, j) in enumerate(EDGES):
                if target != i:
                    continue
                for o, v in enumerate(w[e]):
                    if v != 0:
                        y = self.cell.edges[e][o](nodes[j]) * v
                        s = y if s is None else s + y
            nodes.append(torch.zeros_like(x) if s is None else s)
        out = self.global_pooling(self.lastact(nodes[3])).flatten(1)
        return self.classifier(out)


def _forward(network: nn.Module, x: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return network(x)
    return network(x, weights.to(x.device))


# --------------------------------------------------------------------------------------------
# NTK condition number
# --------------------------------------------------------------------------------------------
def ntk_gram(network: nn.Module, images: torch.Tensor, weights: torch.Tensor | None = None, *,
             method: str = "batched") -> torch.Tensor:
    """The empirical NTK ``G G^T`` (n x n, float64) of ``network`` on ``images`` (n, C, H, W).

    Row ``i`` of ``G`` concatenates the gradients of ``logits[i].sum()`` with respect to every
    parameter named ``*weight*`` that the forward used (ops with mixture weight 0 do not run and
    contribute nothing), through the whole batch's graph (BN couples the images), as the official
    ``get_ntk_n``. Either way (``method``, :data:`NTK_METHODS`) the network runs one forward on the
    whole batch, so its BN running statistics move once, as the official code's. The network's
    mode is left as it is: TE-NAS scores in train mode."""
    if method not in NTK_METHODS:
        raise ValueError(f"method={method!r}; expected one of {NTK_METHODS}")
    named = [(n, p) for n, p in network.named_parameters() if "weight" in n and p.requires_grad]
    if not named:
        raise ValueError(f"{type(network).__name__} has no trainable parameter named '*weight*'; "
                         "expected a network with weights to build an NTK from")
    rows = None
    if method == "batched":
        try:
            rows = _ntk_rows_batched(network, images, weights, [n for n, _ in named])
        except (RuntimeError, NotImplementedError):
            # torch.func says it cannot transform a network (an in-place update of a tensor the
            # forward captured, an autograd.Function without functorch support, an op it cannot
            # batch) only with these plain types; running out of memory is one too, and the loop
            # needs less. The batched path writes the buffers back only once it has succeeded, so
            # the loop's one forward starts from the same state; an error of the network's own
            # comes back from that forward.
            pass
    if rows is None:
        rows = _ntk_rows_loop(network, images, weights, [p for _, p in named])
    g = rows.double()
    return g @ g.T


def _logits_sum(logits: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 2:
        raise ValueError(f"network output of shape {tuple(logits.shape)}; expected (batch, classes) logits")
    return logits.sum(1)


def _ntk_rows_loop(network: nn.Module, images: torch.Tensor, weights: torch.Tensor | None,
                   params: list[torch.Tensor]) -> torch.Tensor:
    """``G`` the official way: one forward, then one backward per image through its graph; only
    the parameters the forward used (``allow_unused``: the others' gradient is None) make columns."""
    per_image = _logits_sum(_forward(network, images, weights))
    n = per_image.shape[0]
    rows = []
    for i in range(n):
        grads = torch.autograd.grad(per_image[i], params, retain_graph=i < n - 1, allow_unused=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads if g is not None]))
    return torch.stack(rows)


def _ntk_rows_batched(network: nn.Module, images: torch.Tensor, weights: torch.Tensor | None,
                      names: list[str]) -> torch.Tensor:
    """``G`` from one forward under ``torch.func.vjp`` and the vjp of every basis vector of the
    per-image sums at once (``vmap``, in chunks bounded by :data:`NTK_CHUNK_ELEMENTS`). Parameters
    the forward did not use get zero columns, which add nothing to ``G G^T``. Raises what
    torch.func raises on a network it cannot transform, leaving the network as it was."""
    wanted = set(names)
    params = {n: p.detach() for n, p in network.named_parameters() if n in wanted}
    fixed = {n: p.detach() for n, p in network.named_parameters() if n not in wanted}
    buffers = dict(network.named_buffers())
    args = (images,) if weights is None else (images, weights.to(images.device))

    def per_image_sums(differentiated):
        # torch.func refuses in-place updates of tensors captured from outside the function (BN's
        # running statistics): the forward updates clones made inside it, copied back on success
        state = {n: b.clone() for n, b in buffers.items()}
        logits = torch.func.functional_call(network, (differentiated, fixed, state), args)
        return _logits_sum(logits), state

    activation_sizes: list[int] = []

    def count(module, inputs, output):
        if isinstance(output, torch.Tensor):
            activation_sizes.append(output.numel())

    leaves = [m for m in network.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        per_image, vjp_fn, state = torch.func.vjp(per_image_sums, params, has_aux=True)
    finally:
        for h in handles:
            h.remove()
    n = per_image.shape[0]
    # one basis vector's backward holds its gradient row and about every activation's cotangent
    per_row = sum(p.numel() for p in params.values()) + sum(activation_sizes)
    chunk = max(1, min(n, NTK_CHUNK_ELEMENTS // max(per_row, 1)))
    basis = torch.eye(n, dtype=per_image.dtype, device=per_image.device)
    (grads,) = torch.vmap(vjp_fn, chunk_size=chunk)(basis)
    rows = torch.cat([grads[name].reshape(n, -1) for name in names], 1)
    with torch.no_grad():
        for name, buffer in buffers.items():
            buffer.copy_(state[name])
    return rows


def condition_number(gram: torch.Tensor) -> float:
    """``lambda_max / lambda_min`` of a symmetric matrix (``torch.linalg.eigvalsh``, float64; the
    official code's ``torch.symeig`` is gone). NaN becomes 1e5 and +-inf the largest float, as the
    official ``np.nan_to_num(..., nan=100000.0)``."""
    eig = torch.linalg.eigvalsh(gram.double())  # ascending
    kappa = (eig[-1] / eig[0]).item()
    return float(np.nan_to_num(kappa, nan=NAN_CONDITION))


def ntk_condition_number(network: nn.Module, images: torch.Tensor, weights: torch.Tensor | None = None, *,
                         method: str = "batched") -> float:
    """Condition number of the NTK of ``network`` (mixture ``weights`` for a supernet) on ``images``;
    ``method`` as :func:`ntk_gram`."""
    return condition_number(ntk_gram(network, images, weights, method=method))


# --------------------------------------------------------------------------------------------
# linear regions
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def linear_region_count(network: nn.Module, batches: Iterable[torch.Tensor], weights: torch.Tensor | None = None) -> int:
    """Number of distinct ReLU sign patterns of ``network`` over the inputs of ``batches``.

    Every ``nn.ReLU`` of the network is hooked; a sample's pattern is ``output > 0`` of all of
    them, flattened, in execution order; patterns of all batches are pooled before counting (the
    official code does the same, counting with a half-precision Gram trick; here ``torch.unique``
    counts exactly). Each batch is one forward, so BN in train mode normalises per batch."""
    captured: list[torch.Tensor] = []

    def hook(module, inputs, output):
        captured.append((output > 0).reshape(output.shape[0], -1))

    handles = [m.register_forward_hook(hook) for m in network.modules() if isinstance(m, nn.ReLU)]
    patterns = []
    samples = 0
    try:
        for x in batches:
            captured.clear()
            _forward(network, x, weights)
            samples += x.shape[0]
            if captured:
                patterns.append(torch.cat(captured, 1).cpu())
    finally:
        for h in handles:
            h.remove()
    if not patterns:  # no ReLU ran: the network is affine, one region holds every sample
        return 1 if samples else 0
    return int(torch.unique(torch.cat(patterns, 0), dim=0).shape[0])


def random_crops(images: torch.Tensor, n: int, *, size: int = 3,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random ``size`` x ``size`` crops of single random channels of random ``images``
    (official: RandomCrop(3, padding=0) + RandChannel(1)); shape (n, 1, size, size)."""
    N, C, H, W = images.shape
    if size > min(H, W):
        raise ValueError(f"crop size={size} > image size {H}x{W}; expected <= {min(H, W)}")
    gen = dict(generator=generator)
    idx = torch.randint(N, (n,), **gen)
    ch = torch.randint(C, (n,), **gen)
    y = torch.randint(H - size + 1, (n,), **gen)
    x = torch.randint(W - size + 1, (n,), **gen)
    r = torch.arange(size)
    rows = (y[:, None] + r)[:, :, None]
    cols = (x[:, None] + r)[:, None, :]
    dev = images.device
    crops = images[idx.to(dev)[:, None, None], ch.to(dev)[:, None, None], rows.to(dev), cols.to(dev)]
    return crops.unsqueeze(1)


# --------------------------------------------------------------------------------------------
# a TE-NAS scoring unit
# --------------------------------------------------------------------------------------------
def repeat_generator(seed: int, repeat: int, stream: int) -> torch.Generator:
    """A CPU generator for one (round seed, repeat, stream) triple: stream 0 = NTK init, 1 = NTK
    batch, 2 = region init, 3 = region inputs."""
    state = np.random.SeedSequence([int(seed), int(repeat), int(stream)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def score_masks(
    masks: Sequence[Any],
    images: torch.Tensor,
    *,
    num_classes: int,
    seed: int,
    repeats: int = 3,
    ntk_batch: int = 72,
    region_samples: int = 1000,
    region_batches: int = 3,
    crop_size: int = 3,
    ntk_C: int = 3,
    ntk_N: int = 1,
    init: str = "default",
    device: Any = "cpu",
    ntk_method: str = "batched",
) -> list[dict]:
    """Both proxies of each mask, per repeat: ``[{"ntk": [k_0, ...], "regions": [r_0, ...]}]``.

    Repeat ``r`` draws one ``init`` (:func:`init_network_`; Kaiming with fan_out) of the NTK
    network and one batch of ``ntk_batch`` of ``images`` (the train split, normalised), and one
    ``init`` (Kaiming: fan_in) of the thin network and ``region_batches`` batches of
    ``region_samples`` random crops, all from generators seeded by ``(seed, r)``; every mask of the
    call is scored on them. ``images`` may live on ``device`` already. ``ntk_method`` is how the
    NTK's rows are computed (:data:`NTK_METHODS`; the same figures either way)."""
    require_at_least_one(repeats=repeats, ntk_batch=ntk_batch, region_samples=region_samples,
                         region_batches=region_batches)
    if init not in INITS:
        raise ValueError(f"init={init!r}; expected one of {INITS}")
    if ntk_method not in NTK_METHODS:
        raise ValueError(f"ntk_method={ntk_method!r}; expected one of {NTK_METHODS}")
    if ntk_batch > images.shape[0]:
        raise ValueError(f"ntk_batch={ntk_batch} > {images.shape[0]} train images; must be <= the train split's size")
    weights = [mixture_weights(m) for m in masks]
    device = torch.device(device)
    images = images.to(device)
    in_channels = images.shape[1]
    out = [{"ntk": [], "regions": []} for _ in masks]
    for r in range(int(repeats)):
        with torch.random.fork_rng(devices=[]):  # the modules' own init draws from the global RNG: overwritten
            net = build_ntk_network(num_classes=num_classes, in_channels=in_channels, C=ntk_C, N=ntk_N)
            thin = ThinNetwork(C=1, num_classes=num_classes)  # crops have one channel
        init_network_(net, init, mode="fan_out", generator=repeat_generator(seed, r, 0))
        net.to(device).train()
        pick = torch.randperm(images.shape[0], generator=repeat_generator(seed, r, 1))[:ntk_batch]
        batch = images[pick.to(device)]
        for row, w in zip(out, weights):
            row["ntk"].append(ntk_condition_number(net, batch, w, method=ntk_method))
        del net
        init_network_(thin, init, mode="fan_in", generator=repeat_generator(seed, r, 2))
        thin.to(device).train()
        gen = repeat_generator(seed, r, 3)
        crops = [random_crops(images, region_samples, size=crop_size, generator=gen) for _ in range(region_batches)]
        for row, w in zip(out, weights):
            row["regions"].append(linear_region_count(thin, crops, w))
    return out
