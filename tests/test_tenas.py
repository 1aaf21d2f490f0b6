"""TE-NAS: the two proxies against hand-computed values, the ranking and pruning rules, the round
state machine, and one end-to-end search on a real local Ray."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from ray.tune.search import Searcher
from torch import nn

from raynas.proxies import (
    ThinNetwork,
    build_ntk_network,
    condition_number,
    kaiming_init_,
    linear_region_count,
    mixture_weights,
    ntk_condition_number,
    random_crops,
    score_masks,
)
from raynas.searchers.tenas import FULL, TENASSearcher, prune_choices, relative_change, round_sig
from raynas.spaces import get_space
from raynas.spaces.nb201 import EDGE_NAMES, OP_NAMES

FULL_MASK = [[0, 1, 1, 1, 1] for _ in range(6)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # hundreds of tiny backward passes


# --- NTK condition number ------------------------------------------------------------------
def test_condition_number_of_a_gram_with_known_eigenvalues():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    eigenvalues = np.array([0.5, 1.0, 2.0, 3.0, 7.0, 40.0])
    g = torch.tensor(q * np.sqrt(eigenvalues))  # G G^T = Q diag(eigenvalues) Q^T
    assert condition_number(g @ g.T) == pytest.approx(80.0, rel=1e-9)


def test_ntk_of_a_linear_network_is_the_inputs_gram():
    # logits = W x, so d(sum_c logit_c)/dW = ones(k) x^T and the NTK is k X X^T
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    scales = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    x = torch.tensor((q * scales).T, dtype=torch.float32)  # rows orthogonal, norms = scales
    net = nn.Linear(5, 3, bias=True)  # the bias is not a "weight": it must not count
    assert ntk_condition_number(net, x) == pytest.approx(36.0, rel=1e-4)


def test_a_singular_ntk_follows_the_official_nan_rule():
    assert condition_number(torch.zeros(3, 3)) == 1e5  # 0 / 0


# --- the batched NTK against the official loop ----------------------------------------------
# masks of the kinds a TE-NAS round scores: the full supernet, one op pruned, a single path, a
# mixed mask, and one whose cells are all `none` (its gram is 0: the official NaN rule)
NTK_MASKS = [
    FULL_MASK,
    [[0, 1, 1, 0, 1]] + [[0, 1, 1, 1, 1]] * 5,
    [[0, 1, 0, 0, 0]] * 5 + [[0, 0, 0, 1, 0]],
    [[0, 0, 1, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 1, 0], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1]],
    [[1, 0, 0, 0, 0]] * 6,
]


@pytest.fixture(scope="module")
def digits_train_images():
    from raynas.data import load_dataset

    return load_dataset("digits").train.images


def _default_ntk_network(seed):
    from raynas.proxies import default_init_

    net = build_ntk_network(num_classes=10, in_channels=1, C=3, N=1)
    return default_init_(net, generator=torch.Generator().manual_seed(seed)).train()


@pytest.mark.parametrize("mask_index", range(len(NTK_MASKS)))
def test_the_batched_ntk_gram_is_the_loops_and_runs_one_forward(digits_train_images, mask_index):
    import copy

    from raynas.proxies import ntk_gram

    batch = digits_train_images[torch.randperm(digits_train_images.shape[0],
                                               generator=torch.Generator().manual_seed(mask_index))[:16]]
    weights = mixture_weights(NTK_MASKS[mask_index])
    net = _default_ntk_network(mask_index)
    looped, batched = copy.deepcopy(net), copy.deepcopy(net)
    loop_gram = ntk_gram(looped, batch, weights, method="loop")
    batched_gram = ntk_gram(batched, batch, weights, method="batched")
    assert batched_gram.dtype == torch.float64 and batched_gram.shape == (16, 16)
    scale = loop_gram.abs().max().item()
    assert torch.allclose(batched_gram, loop_gram, rtol=1e-6, atol=1e-9 * scale)
    k_loop, k_batched = condition_number(loop_gram), condition_number(batched_gram)
    assert k_batched == pytest.approx(k_loop, rel=1e-6)
    if mask_index == len(NTK_MASKS) - 1:
        assert scale == 0.0 and k_loop == k_batched == 1e5  # no weight reaches the logits
    else:
        assert k_loop > 1.0
    # the BN running statistics moved as the loop's single forward moved them, once
    loop_state, batched_state = looped.state_dict(), batched.state_dict()
    assert all(torch.equal(loop_state[k], batched_state[k]) for k in loop_state)
    assert int(batched.stem[1].num_batches_tracked) == 1
    assert not torch.equal(batched.stem[1].running_mean, net.stem[1].running_mean)


def test_score_masks_gives_the_same_ntk_figures_batched_as_looped(digits_train_images):
    kwargs = dict(num_classes=10, seed=5, repeats=2, ntk_batch=16, region_samples=200, region_batches=1)
    looped = score_masks(NTK_MASKS[:4], digits_train_images, ntk_method="loop", **kwargs)
    batched = score_masks(NTK_MASKS[:4], digits_train_images, **kwargs)  # batched is the default
    for a, b in zip(looped, batched):
        assert b["ntk"] == pytest.approx(a["ntk"], rel=1e-6) and b["regions"] == a["regions"]
    assert len({round(k, 3) for row in looped for k in row["ntk"]}) == 8  # masks and repeats differ
    with pytest.raises(ValueError, match=r"ntk_method='jacfwd'; expected one of \('batched', 'loop'\)"):
        score_masks([FULL_MASK], digits_train_images, ntk_method="jacfwd", **kwargs)


class _CountingLinear(nn.Module):
    """A linear layer counting its forwards in a plain tensor attribute (not a buffer): torch.func
    refuses the in-place update of a tensor its function captured."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.calls = torch.zeros(())

    def forward(self, x):
        self.calls.add_(1)
        return self.lin(x)


def test_the_batched_ntk_falls_back_to_the_loop_where_torch_func_cannot_run_the_network():
    from raynas.proxies import _ntk_rows_batched, ntk_gram

    torch.manual_seed(0)
    net, x = _CountingLinear(), torch.randn(6, 4)
    with pytest.raises(RuntimeError, match="in-place"):
        _ntk_rows_batched(net, x, None, ["lin.weight"])
    assert net.calls.item() == 0  # the refused attempt changed nothing
    gram = ntk_gram(net, x)  # batched, refused, then the loop
    assert net.calls.item() == 1  # one forward in all
    # logits = W x + b: the rows are ones(3) x^T, so the NTK is 3 X X^T
    assert torch.allclose(gram, 3 * x.double() @ x.double().T, rtol=1e-5)
    assert torch.equal(gram, ntk_gram(net, x, method="loop"))
    with pytest.raises(ValueError, match=r"method='vmap'; expected one of \('batched', 'loop'\)"):
        ntk_gram(net, x, method="vmap")


# --- linear regions ------------------------------------------------------------------------
def test_regions_of_a_1d_relu_layer_are_its_breakpoints_plus_one():
    breakpoints = torch.tensor([-0.7, -0.2, 0.1, 0.5, 0.9])
    layer = nn.Linear(1, 5)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.copy_(-breakpoints)
    net = nn.Sequential(layer, nn.ReLU())
    x = torch.linspace(-1, 1, 2001)[:, None]
    assert linear_region_count(net, [x]) == 6
    assert linear_region_count(net, [x[x[:, 0] < 0.3]]) == 4  # 3 breakpoints in [-1, 0.3)
    assert linear_region_count(net, [x[:1000], x[1000:]]) == 6  # batches pool their patterns


def test_regions_of_lines_in_general_position():
    # n tangent lines of the unit circle at distinct angles in [0, pi): no two parallel, no three
    # concurrent, so the plane splits into 1 + n + n(n-1)/2 regions, all inside [-4, 4]^2
    n = 5
    theta = torch.arange(n) * math.pi / n
    layer = nn.Linear(2, n)
    with torch.no_grad():
        layer.weight.copy_(torch.stack([theta.cos(), theta.sin()], 1))
        layer.bias.fill_(-1.0)
    net = nn.Sequential(layer, nn.ReLU())
    g = torch.linspace(-4, 4, 801)
    grid = torch.cartesian_prod(g, g)
    assert linear_region_count(net, [grid]) == 1 + n + n * (n - 1) // 2


def test_thin_network_counts_sign_patterns_of_every_active_relu():
    mask = [[0, 0, 0, 1, 0]] + [[0, 1, 0, 0, 0]] * 5  # one conv on 1<-0, skips elsewhere
    net = kaiming_init_(ThinNetwork(C=1, num_classes=3), mode="fan_in", generator=torch.Generator().manual_seed(0))
    x = torch.randn(400, 1, 3, 3, generator=torch.Generator().manual_seed(1))
    count = linear_region_count(net.train(), [x], mixture_weights(mask))
    # 2 ReLUs ran on 9 pixels each: at most 2^18 patterns, at least 2; 400 samples bound it too
    assert 2 <= count <= 400


# --- masks, init, score_masks ------------------------------------------------------------
def test_mixture_weights_are_equal_over_the_active_ops():
    w = mixture_weights(FULL_MASK)
    assert torch.allclose(w[:, 1:], torch.full((6, 4), 0.25)) and (w[:, 0] == 0).all()
    with pytest.raises(ValueError, match=r"mask row 2 \(edge 2<-1\) has no active op"):
        mixture_weights([[0, 1, 0, 0, 0]] * 2 + [[0] * 5] + [[0, 1, 0, 0, 0]] * 3)
    with pytest.raises(ValueError, match=r"expected a \(6, 5\) array of 0/1"):
        mixture_weights([[0, 2, 0, 0, 0]] * 6)


def test_kaiming_init_is_the_papers_and_seeded():
    net = build_ntk_network(num_classes=10, in_channels=1, C=16)
    kaiming_init_(net, mode="fan_out", generator=torch.Generator().manual_seed(3))
    conv = net.cells[0].edges[0][3].op[1]  # 16 -> 16, 3x3: fan_out = 144
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 144), rel=0.1)
    assert (net.classifier.bias == 0).all() and (net.cells[0].edges[0][3].op[2].weight == 1).all()
    other = kaiming_init_(build_ntk_network(num_classes=10, in_channels=1, C=16), mode="fan_out",
                          generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))


def test_random_crops_are_windows_of_the_images():
    images = torch.arange(2 * 2 * 5 * 5, dtype=torch.float32).reshape(2, 2, 5, 5)
    crops = random_crops(images, 50, size=3, generator=torch.Generator().manual_seed(0))
    assert crops.shape == (50, 1, 3, 3)
    windows = {tuple(w.flatten().tolist()) for w in images.unfold(2, 3, 1).unfold(3, 3, 1).reshape(-1, 3, 3)}
    assert all(tuple(c.flatten().tolist()) in windows for c in crops)


def test_score_masks_is_deterministic_per_seed_and_pairs_masks_on_one_init():
    images = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    pruned = [row[:] for row in FULL_MASK]
    pruned[0][3] = 0
    kwargs = dict(num_classes=10, repeats=2, ntk_batch=6, region_samples=64, region_batches=2)
    a = score_masks([FULL_MASK, pruned, FULL_MASK], images, seed=7, **kwargs)
    b = score_masks([FULL_MASK, pruned], images, seed=7, **kwargs)
    c = score_masks([FULL_MASK], images, seed=8, **kwargs)
    assert a[:2] == b  # same seed, same values
    assert a[0] == a[2]  # a mask's value does not depend on the other masks of its unit
    assert a[0] != c[0]
    assert all(len(row["ntk"]) == 2 and all(k >= 1 for k in row["ntk"]) for row in a)
    assert all(1 <= r <= 128 for row in a for r in row["regions"])
    with pytest.raises(ValueError, match="ntk_batch=30 > 20 train images"):
        score_masks([FULL_MASK], images, seed=0, num_classes=10, ntk_batch=30)


# --- ranking and pruning ---------------------------------------------------------------------
def test_round_sig():
    assert round_sig(0.0123456, 3) == 0.0123 and round_sig(-1234.5, 3) == -1230.0 and round_sig(0.0, 3) == 0.0
    assert relative_change([10.0, 20.0], [5.0, 30.0]) == pytest.approx((0.5 - 0.5) / 2)


def test_ties_share_a_rank_at_three_significant_figures():
    cands = [  # (edge, op, delta_ntk, delta_regions)
        (0, 1, 0.12341, 0.010),
        (0, 2, 0.12349, 0.0102),  # delta_ntk ties with (0, 1) at 0.123; regions 0.0102 ranks after 0.0100
        (0, 3, 0.1236, -0.5),  # 0.124: the best delta_ntk
        (1, 1, -0.30, 0.010),  # regions tie with (0, 1)
        (1, 4, 0.12344, 0.0100001),  # ties with (0, 1) on both
    ]
    choices, ranked = prune_choices([dict(edge=e, op=o, delta_ntk=k, delta_regions=r) for e, o, k, r in cands])
    ranks = {(c["edge"], c["op"]): (c["rank_ntk"], c["rank_regions"]) for c in ranked}
    # ntk descending: 0.124 -> 0; 0.123 (three of them) -> 1; -0.3 -> 2 (dense)
    # regions ascending: -0.5 -> 0; 0.0100 (three of them) -> 1; 0.0102 -> 2
    assert ranks == {(0, 1): (1, 1), (0, 2): (1, 2), (0, 3): (0, 0), (1, 1): (2, 1), (1, 4): (1, 1)}
    assert choices == {0: 3, 1: 4}


def test_rank_sum_ties_go_to_the_better_ntk_rank_then_the_lower_op():
    cands = [dict(edge=2, op=1, delta_ntk=0.1, delta_regions=0.3),  # ranks (1, 1)
             dict(edge=2, op=2, delta_ntk=0.2, delta_regions=0.4),  # ranks (0, 2): same sum, better ntk
             dict(edge=3, op=3, delta_ntk=0.1, delta_regions=0.3),  # ranks (1, 1)
             dict(edge=3, op=4, delta_ntk=0.1, delta_regions=0.3)]  # ranks (1, 1): same, higher op
    assert prune_choices(cands)[0] == {2: 2, 3: 3}
    nan = prune_choices([dict(edge=0, op=1, delta_ntk=math.nan, delta_regions=math.nan),
                         dict(edge=0, op=2, delta_ntk=-5.0, delta_regions=5.0)])
    assert nan[0] == {0: 2}  # a NaN delta is the least prunable


def _answer(searcher, rng, trial):
    """Answer one suggested unit with random proxy rows; return it."""
    unit = searcher.suggest(trial)
    if unit["kind"] == "proxy":
        for i, (label, mask) in enumerate(zip(unit["labels"], unit["masks"])):
            row = {"label": label, "position": i, "ntk": list(rng.uniform(10, 100, unit["repeats"])),
                   "regions": list(rng.integers(100, 200, unit["repeats"]).astype(float))}
            searcher.on_trial_result(trial, row)
        searcher.on_trial_complete(trial, {})
    else:
        searcher.on_trial_complete(trial, {"valid_acc": 0.5, "test_acc": 0.5})
    return unit


def test_rounds_prune_one_op_per_edge_from_four_to_one():
    searcher = TENASSearcher(repeats=2, max_concurrent=3, seed=4)
    assert [sum(row) for row in searcher.active_] == [4] * 6  # none pruned up front: 5 -> 4
    rng = np.random.default_rng(0)
    units = []
    for n in itertools.count():
        unit = _answer(searcher, rng, f"t{n}")
        units.append(unit)
        if unit["kind"] == "standalone":
            break
    per_round = [[u for u in units if u.get("round") == r] for r in range(3)]
    assert [len(r) for r in per_round] == [3, 3, 3]  # each round spread over max_concurrent units
    for r, (units_r, record) in enumerate(zip(per_round, searcher.history_)):
        labels = [label for u in units_r for label in u["labels"]]
        masks = [m for u in units_r for m in u["masks"]]
        assert labels[0] == FULL and len(labels) == 1 + 6 * (4 - r) == len(set(labels))
        assert len({u["seed"] for u in units_r}) == 1  # one seed per round: repeats pair across units
        before = masks[0]
        for label, mask in zip(labels[1:], masks[1:]):  # each candidate removes exactly its op
            e, o = EDGE_NAMES.index(label.split(":")[0]), OP_NAMES.index(label.split(":")[1])
            assert before[e][o] == 1 and mask == [[v if (i, j) != (e, o) else 0 for j, v in enumerate(row)]
                                                  for i, row in enumerate(before)]
        after = record["active"]
        assert [sum(row) for row in after] == [3 - r] * 6
        assert all(a <= b for rb, ra in zip(before, after) for b, a in zip(rb, ra))  # only removals
    assert [sum(row) for row in searcher.active_] == [1] * 6
    final = units[-1]
    assert final["role"] == "final" and final["arch"] == searcher.final_arch_
    assert searcher.space_.parse(final["arch"]).ops == tuple(row.index(1) for row in searcher.active_)
    assert searcher.suggest("end") == Searcher.FINISHED


def test_an_edge_down_to_one_op_is_never_a_candidate():
    searcher = TENASSearcher(repeats=1, seed=0)
    searcher.active_[2] = [0, 0, 0, 1, 0]
    rng = np.random.default_rng(1)
    labels = []
    while True:
        unit = _answer(searcher, rng, f"t{len(labels)}")
        if unit["kind"] != "proxy":
            break
        labels += unit["labels"]
    assert not [label for label in labels if label.startswith("2<-1:")]
    assert searcher.active_[2] == [0, 0, 0, 1, 0] and all(sum(row) == 1 for row in searcher.active_)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"repeats": 0}, "repeats=0; must be >= 1"), ({"ntk_batch": 1}, "ntk_batch=1; must be >= 2"),
     ({"masks_per_unit": 0}, "masks_per_unit=0; must be >= 1"), ({"space": "nb101"}, "unknown space")],
)
def test_tenas_validates_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TENASSearcher(**kwargs)


# --- end to end ------------------------------------------------------------------------------
def test_tenas_search_end_to_end(ray_session, tmp_path):
    from raynas.driver import search

    tiny = {"searcher": {"ntk_batch": 4, "repeats": 1, "region_samples": 50, "region_batches": 1,
                         "standalone": {"C": 4, "N": 1, "epochs": 1, "batch_size": 128}}}
    run_dir = search("tenas", overrides=tiny, storage=tmp_path, name="tenas", verbose=0)
    summary = pd.read_parquet(run_dir / "summary.parquet").iloc[0]
    from raynas.results import read_unit_rows

    rows = read_unit_rows(run_dir)
    proxy = rows[rows["kind"] == "proxy"].to_dict("records")
    assert len(proxy) == (1 + 24) + (1 + 18) + (1 + 12)  # full + candidates per round
    assert all(len(r["ntk"]) == 1 and r["ntk"][0] > 0 and r["regions"][0] >= 1 for r in proxy)
    # replay the last round from its rows: the final arch is, on each edge, the op not pruned
    last = {r["label"]: r for r in proxy if r["round"] == 2}
    full = last.pop(FULL)
    cands = [dict(edge=EDGE_NAMES.index(label.split(":")[0]), op=OP_NAMES.index(label.split(":")[1]),
                  delta_ntk=relative_change(full["ntk"], r["ntk"]),
                  delta_regions=relative_change(full["regions"], r["regions"]))
             for label, r in last.items()]
    pruned, _ = prune_choices(cands)
    kept = {c["edge"]: c["op"] for c in cands if pruned[c["edge"]] != c["op"]}
    final = get_space("nb201").parse(summary["final_arch"])
    assert final.ops == tuple(kept[e] for e in range(6))
    assert summary["standalone_epochs"] == 1 and np.isfinite(summary["standalone_test_acc"])


# --- the official init and the official region rule -------------------------------------------
def test_default_init_is_pytorchs_own_bit_for_bit_and_differs_from_kaiming():
    from raynas.proxies import default_init_

    before = torch.get_rng_state()
    torch.manual_seed(11)  # PyTorch's own init: two networks built from one global stream
    reference = [ThinNetwork(C=1, num_classes=10), build_ntk_network(num_classes=10, in_channels=1, C=3)]
    g = torch.Generator().manual_seed(11)  # ours: the same stream from a private generator
    ours = [default_init_(ThinNetwork(C=1, num_classes=10), generator=g),
            default_init_(build_ntk_network(num_classes=10, in_channels=1, C=3), generator=g)]
    for a, b in zip(reference, ours):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    images = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    kwargs = dict(num_classes=10, repeats=1, ntk_batch=6, region_samples=64, region_batches=1, seed=3)
    torch.set_rng_state(before)
    default = score_masks([FULL_MASK], images, init="default", **kwargs)
    assert torch.equal(before, torch.get_rng_state())  # scoring leaves the global RNG alone
    assert default == score_masks([FULL_MASK], images, **kwargs)  # "default" is the default
    assert default != score_masks([FULL_MASK], images, init="kaiming", **kwargs)
    with pytest.raises(ValueError, match=r"init='xavier'; expected one of \('default', 'kaiming'\)"):
        score_masks([FULL_MASK], images, init="xavier", **kwargs)


def test_the_searcher_sends_its_init_and_the_paper_preset_is_the_official_one():
    from raynas.proxies import INITS
    from raynas.searchers.arguments import TENAS_INITS
    from raynas.settings import make_config

    assert INITS == TENAS_INITS
    assert make_config("tenas", preset="paper")["searcher"]["init"] == "default"
    unit = TENASSearcher(init="kaiming", max_concurrent=1).suggest("t0")
    assert unit["kind"] == "proxy" and unit["init"] == "kaiming"
    assert TENASSearcher(max_concurrent=1).suggest("t0")["init"] == "default"
    with pytest.raises(ValueError, match="init='xavier'; expected one of 'default', 'kaiming'"):
        TENASSearcher(init="xavier")


def test_region_count_skips_the_relus_of_pruned_ops_as_the_official_cell():
    # the official cell runs `layer(nodes[j]) * w if w > 0.01 else 0`: a pruned op never runs, so its
    # ReLU (on its input node) adds nothing. Here only 1<-0 holds a conv; nodes 1 and 2 feed pruned
    # convs only, so counting those ReLUs too would add the sign patterns of nodes 1 and 2.
    mask = [[0, 0, 0, 1, 0]] + [[0, 1, 0, 0, 0]] * 5
    net = kaiming_init_(ThinNetwork(C=1, num_classes=3), mode="fan_in", generator=torch.Generator().manual_seed(2))
    net.train()
    x = torch.randn(600, 1, 3, 3, generator=torch.Generator().manual_seed(3))
    counted = linear_region_count(net, [x], mixture_weights(mask))

    with torch.no_grad():  # the official forward by hand: conv on 1<-0, skips elsewhere
        conv = net.cell.edges[0][3]
        relu0 = torch.relu(x)
        node1 = conv.op[2](conv.op[1](relu0))
        node2 = x + node1
        last = torch.relu(net.lastact[0](x + node1 + node2))
    patterns = lambda *acts: int(torch.unique(torch.cat([(a > 0).flatten(1) for a in acts], 1), dim=0).shape[0])
    official = patterns(relu0, last)
    with_pruned = patterns(relu0, last, torch.relu(node1), torch.relu(node2))
    assert counted == official
    assert with_pruned > official  # the rule matters on this input: the old claim would count more
