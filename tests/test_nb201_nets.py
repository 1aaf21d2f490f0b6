"""NAS-Bench-201 networks: parameter counts, supernet modes, extraction, restriction, FLOPs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch

from raynas.spaces.nb201_nets import (
    OP_NAMES,
    NB201Network,
    NB201Supernet,
    build_network,
    count_flops,
    count_parameters,
    extract_network,
)


@dataclass(frozen=True)
class _Arch:
    """Stand-in for any arch object with ``.ops`` (the networks never import the space)."""

    ops: tuple


CHECK_ARCH = (3, 3, 3, 1, 3, 3)  # |nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|...
SAMPLE_ARCHS = [
    (3, 3, 3, 1, 3, 3),
    (2, 4, 1, 3, 0, 2),
    (0, 3, 3, 0, 3, 3),  # node 1 has no input (zeros) but feeds convs: BN of zeros is not zero
    (3, 3, 0, 3, 0, 0),  # nodes 1 and 2 cannot reach the output
    (4, 2, 1, 0, 4, 3),
]


def _expected_params(ops, C=16, N=5, num_classes=10, in_channels=3):
    """Parameter count from the layer shapes (conv k*k*Cin*Cout, BN 2*C, linear)."""

    def conv(k, cin, cout):
        return k * k * cin * cout

    def bn(c):
        return 2 * c

    def cell(c):
        per_op = {0: 0, 1: 0, 2: conv(1, c, c) + bn(c), 3: conv(3, c, c) + bn(c), 4: 0}
        return sum(per_op[o] for o in ops)

    def resblock(cin, cout):
        return conv(3, cin, cout) + bn(cout) + conv(3, cout, cout) + bn(cout) + conv(1, cin, cout)

    total = conv(3, in_channels, C) + bn(C)
    total += N * cell(C) + resblock(C, 2 * C) + N * cell(2 * C) + resblock(2 * C, 4 * C) + N * cell(4 * C)
    total += bn(4 * C) + 4 * C * num_classes + num_classes
    return total


# --- parameter counts ------------------------------------------------------------------------
def test_op_names():
    assert OP_NAMES == ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


def test_benchmark_check_figure():
    assert count_parameters(CHECK_ARCH) == 1_288_506
    assert count_parameters(_Arch(CHECK_ARCH)) == 1_288_506
    net = build_network(CHECK_ARCH)
    assert sum(p.numel() for p in net.parameters()) == 1_288_506


def test_benchmark_published_extremes():
    # largest (all nor_conv_3x3, the benchmark's ~1.53M maximum on CIFAR-10) and smallest (no conv
    # in the cells) networks
    assert count_parameters((3,) * 6) == 1_531_546
    assert count_parameters((0,) * 6) == 73_306
    assert count_parameters((1, 4, 0, 1, 4, 0)) == 73_306


@pytest.mark.parametrize("num_classes", [10, 100, 120])
@pytest.mark.parametrize(
    "ops", [(0,) * 6, (1,) * 6, (2,) * 6, (3,) * 6, (4,) * 6, CHECK_ARCH, (2, 4, 1, 3, 0, 2)]
)
def test_parameter_count_matches_formula(ops, num_classes):
    assert count_parameters(ops, num_classes=num_classes) == _expected_params(ops, num_classes=num_classes)


def test_parameter_count_other_settings():
    for C, N, K, cin in [(8, 1, 10, 1), (4, 2, 7, 3), (16, 3, 120, 3)]:
        for ops in [(3, 2, 1, 0, 4, 3), (0, 0, 0, 0, 0, 3)]:
            got = count_parameters(ops, C=C, N=N, num_classes=K, in_channels=cin)
            assert got == _expected_params(ops, C, N, K, cin)


def test_none_edges_are_absent():
    net = build_network((0, 3, 0, 1, 0, 2), C=4, N=1)
    assert [len(net.cells[k].layers) for k in net.cell_indices] == [3, 3, 3]


def test_all_none_runs():
    net = build_network((0,) * 6, C=4, N=1).eval()
    x = torch.randn(2, 3, 8, 8)
    out = net(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    # every cell outputs zeros (the residual blocks' shortcut still carries the input on)
    h = net.cells[0](net.stem(x))
    assert h.shape == (2, 4, 8, 8) and torch.count_nonzero(h) == 0
    sup = NB201Supernet(C=4, N=1)
    assert sup(x, (0,) * 6).shape == (2, 10)


def test_bad_arch_raises():
    with pytest.raises(ValueError):
        build_network((0, 1, 2, 3, 4), C=4, N=1)
    with pytest.raises(ValueError):
        build_network((0, 1, 2, 3, 4, 5), C=4, N=1)


# --- supernet vs extracted network -----------------------------------------------------------
def _randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                if m.affine:
                    m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
                if m.track_running_stats:
                    m.running_mean.copy_(0.5 * torch.randn(m.running_mean.shape, generator=g))
                    m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.copy_(0.3 * torch.randn(m.weight.shape, generator=g))
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("track", [True, False])
def test_single_path_equals_extracted(track, affine):
    torch.manual_seed(0)
    sup = NB201Supernet(C=4, N=1, bn_affine=affine, bn_track_running_stats=track)
    _randomise(sup, 1)
    sup.eval()
    x = torch.randn(4, 3, 8, 8)
    outs = []
    for ops in SAMPLE_ARCHS:
        net = extract_network(sup, _Arch(ops))
        assert isinstance(net, NB201Network) and not net.training
        assert sum(p.numel() for p in net.parameters()) == count_parameters(ops, C=4, N=1)
        with torch.no_grad():
            a, b = sup(x, ops), net(x)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        outs.append(a)
    # different archs give different outputs (the check could fail)
    assert not torch.allclose(outs[0], outs[1])


def test_extracted_bn_settings():
    sup = NB201Supernet(C=4, N=1, bn_affine=False, bn_track_running_stats=False)
    net = extract_network(sup, (3,) * 6)
    bn = net.cells[0].layers[0].op[2]
    assert not bn.track_running_stats and torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    sup = NB201Supernet(C=4, N=1, bn_affine=False, bn_track_running_stats=True)
    _randomise(sup, 3)
    net = extract_network(sup, (3,) * 6)
    bn, sbn = net.cells[0].layers[0].op[2], sup.cells[0].edges[0][3].op[2]
    assert bn.track_running_stats and torch.equal(bn.running_mean, sbn.running_mean)


# --- forward/backward of every mode ----------------------------------------------------------
def _backward_ok(sup, out, weights=None):
    out.square().mean().backward()
    grads = [p.grad for p in sup.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if weights is not None:
        assert weights.grad is not None and torch.isfinite(weights.grad).all()
        assert weights.grad[:, 1:].abs().sum() > 0 if weights.ndim == 2 else weights.grad.abs().sum() > 0


@pytest.mark.parametrize("size", [8, 16])
def test_modes_forward_backward(size):
    torch.manual_seed(0)
    sup = NB201Supernet(C=4, N=1)
    sup.train()
    x = torch.randn(3, 3, size, size)

    sup.zero_grad()
    _backward_ok(sup, sup(x, _Arch((3, 2, 1, 4, 3, 0))))

    sup.zero_grad()
    _backward_ok(sup, sup(x, [(3, 2, 1, 4, 3, 0), _Arch((1, 1, 1, 1, 1, 1)), (0, 0, 0, 0, 0, 2)]))

    sup.zero_grad()
    w = torch.softmax(1e-3 * torch.randn(6, 5), dim=-1).requires_grad_()
    _backward_ok(sup, sup(x, w), w)

    sup.zero_grad()
    w = torch.rand(sup.num_cells, 6, 5, requires_grad=True)
    _backward_ok(sup, sup(x, w), w)

    sup.zero_grad()
    alpha = torch.randn(6, 5, requires_grad=True)  # SETN-style: grad reaches the leaf alpha
    out = sup(x, torch.softmax(alpha, dim=-1))
    out.sum().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0

    sup.zero_grad()
    mask = (torch.rand(6, 5) > 0.5).float()  # TE-NAS-style mask, no grad
    _backward_ok(sup, sup(x, mask))
    assert sup(x, torch.zeros(sup.num_cells, 6, 5)).shape == (3, 10)


def test_masked_mixture_skips_zero_weight_ops():
    sup = NB201Supernet(C=4, N=1)
    calls = []
    conv1 = sup.cells[0].edges[0][2]
    conv3 = sup.cells[0].edges[0][3]
    h1 = conv1.register_forward_hook(lambda *a: calls.append("conv1"))
    h3 = conv3.register_forward_hook(lambda *a: calls.append("conv3"))
    w = torch.zeros(6, 5)
    w[:, 3] = 1.0
    sup(torch.randn(2, 3, 8, 8), w)
    assert calls == ["conv3"]
    calls.clear()
    sup(torch.randn(2, 3, 8, 8), w.clone().requires_grad_())  # with grad: every op runs
    assert sorted(calls) == ["conv1", "conv3"]
    h1.remove()
    h3.remove()


def test_one_hot_mixture_equals_single_path():
    torch.manual_seed(0)
    sup = NB201Supernet(C=4, N=1, bn_track_running_stats=True)
    _randomise(sup, 2)
    sup.eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        for ops in SAMPLE_ARCHS:
            w = torch.nn.functional.one_hot(torch.tensor(ops), 5).float()
            single = sup(x, ops)
            torch.testing.assert_close(sup(x, w), single, rtol=0, atol=0)
            per_cell = torch.stack([w] * sup.num_cells)
            torch.testing.assert_close(sup(x, per_cell), single, rtol=0, atol=0)
            # with grad: all ops run, multiplied by 0/1
            wg = w.clone().requires_grad_()
            with torch.enable_grad():
                torch.testing.assert_close(sup(x, wg), single, rtol=1e-5, atol=1e-6)
    # per-cell one-hot equals per-cell paths
    archs = [SAMPLE_ARCHS[k] for k in range(sup.num_cells)]
    w = torch.stack([torch.nn.functional.one_hot(torch.tensor(a), 5).float() for a in archs])
    with torch.no_grad():
        torch.testing.assert_close(sup(x, w), sup(x, archs), rtol=0, atol=0)


def test_weighted_mixture_is_linear_in_ops():
    torch.manual_seed(0)
    sup = NB201Supernet(C=4, N=1, bn_track_running_stats=True)
    _randomise(sup, 4)
    sup.eval()
    cell = sup.cells[0]
    x = torch.randn(2, 4, 8, 8)
    w = torch.rand(6, 5)
    plan = sup._plans_for(w, x)
    out = cell(x, plan)
    ops = [lambda t, e=e, o=o: cell.edges[e][o](t) for e in range(6) for o in range(5)]
    n1 = sum(w[0, o] * ops[0 * 5 + o](x) for o in range(1, 5))
    n2 = sum(w[1, o] * ops[1 * 5 + o](x) + w[2, o] * ops[2 * 5 + o](n1) for o in range(1, 5))
    n3 = sum(
        w[3, o] * ops[3 * 5 + o](x) + w[4, o] * ops[4 * 5 + o](n1) + w[5, o] * ops[5 * 5 + o](n2)
        for o in range(1, 5)
    )
    torch.testing.assert_close(out, n3, rtol=1e-5, atol=1e-5)


def test_path_forms_with_six_cells():
    # N=2 gives 6 cells: a tuple of 6 ints is one arch, a sequence of 6 archs is per-cell
    torch.manual_seed(0)
    sup = NB201Supernet(C=4, N=2, bn_track_running_stats=True).eval()
    assert sup.num_cells == 6 and sup.num_edges == 6 and sup.num_ops == 5
    x = torch.randn(2, 3, 8, 8)
    ops = (3, 1, 2, 4, 3, 1)
    with torch.no_grad():
        single = sup(x, ops)
        torch.testing.assert_close(sup(x, list(ops)), single, rtol=0, atol=0)
        torch.testing.assert_close(sup(x, [ops] * 6), single, rtol=0, atol=0)
        torch.testing.assert_close(sup(x, tuple(_Arch(ops) for _ in range(6))), single, rtol=0, atol=0)
        mixed = sup(x, [ops] * 5 + [(0, 0, 0, 0, 0, 1)])
    assert not torch.allclose(mixed, single)
    for bad in [[ops] * 5, (1, 2, 3), torch.rand(5, 5), torch.rand(3, 6, 5), "abc", [(1, 2, 3)] * 6]:
        with pytest.raises(ValueError):
            sup(x, bad)


# --- restriction -----------------------------------------------------------------------------
def test_restriction():
    allowed = ((1, 3), (0, 1, 2, 3, 4), (3,), (2, 3), (0, 4), (1, 2, 3))
    parent = NB201Supernet(C=4, N=1)
    sub = NB201Supernet(C=4, N=1, allowed_ops=allowed)
    assert sub.allowed_ops == allowed
    assert parent.allowed_ops == ((0, 1, 2, 3, 4),) * 6
    assert sub.config["allowed_ops"] == allowed and sub.config["C"] == 4
    sub.load_state_dict(parent.state_dict())  # strict: same keys despite the restriction
    parent.load_state_dict(sub.state_dict())
    x = torch.randn(2, 3, 8, 8)
    ok, bad = (3, 0, 3, 2, 4, 1), (3, 0, 3, 2, 4, 0)
    assert sub.contains(ok) and sub.contains(_Arch(ok)) and not sub.contains(bad)
    assert sub(x, ok).shape == (2, 10)
    with pytest.raises(ValueError, match=r"edge 5 \(3<-2\).*none"):
        sub(x, bad)
    with pytest.raises(ValueError, match="cell 2"):
        sub(x, [ok, ok, bad])
    w = torch.zeros(6, 5)
    for e, ops in enumerate(allowed):
        w[e, list(ops)] = 1.0 / len(ops)
    assert sub(x, w).shape == (2, 10)
    assert sub(x, w.clone().requires_grad_()).shape == (2, 10)
    w[2, 1] = 0.5
    with pytest.raises(ValueError, match=r"edge 2 \(2<-1\).*skip_connect"):
        sub(x, w)
    with pytest.raises(ValueError, match=r"edge 2"):
        sub(x, w.clone().requires_grad_())
    # in-place change of the restriction
    sub.restrict(None)
    assert sub.contains(bad) and sub(x, bad).shape == (2, 10)
    sub.restrict(((1,),) * 6)
    assert sub.allowed_ops == ((1,),) * 6 and sub.config["allowed_ops"] == ((1,),) * 6
    with pytest.raises(ValueError):
        sub(x, ok)
    # extraction works for any arch
    assert isinstance(extract_network(sub, ok), NB201Network)


@pytest.mark.parametrize(
    "bad", [((1,),) * 5, ((1,),) * 5 + ((),), ((1,),) * 5 + ((5,),), ((1,),) * 5 + ((-1,),), 3, [[0.5]] * 6]
)
def test_bad_allowed_ops(bad):
    with pytest.raises(ValueError, match="allowed_ops"):
        NB201Supernet(C=4, N=1, allowed_ops=bad)
    sup = NB201Supernet(C=4, N=1)
    with pytest.raises(ValueError, match="allowed_ops"):
        sup.restrict(bad)


def test_supernet_config_rebuilds():
    sup = NB201Supernet(C=4, N=1, num_classes=7, in_channels=1, bn_affine=True)
    twin = NB201Supernet(**sup.config)
    twin.load_state_dict(sup.state_dict())
    assert twin(torch.randn(2, 1, 8, 8), (3,) * 6).shape == (2, 7)
    assert sup.num_cells == 3


# --- FLOPs -----------------------------------------------------------------------------------
def test_count_flops():
    conv_heavy = count_flops((3,) * 6, C=8, N=1, input_size=16)
    skip_heavy = count_flops((1,) * 6, C=8, N=1, input_size=16)
    assert 0 < skip_heavy < conv_heavy
    assert count_flops(_Arch((3,) * 6), C=8, N=1, input_size=16) == conv_heavy
    # conv3x3 on every edge of every cell adds 6 * (2 * 9 * c * c * h * w) per cell
    extra = sum(6 * 2 * 9 * c * c * h * h for c, h in [(8, 16), (16, 8), (32, 4)])
    assert conv_heavy - skip_heavy == extra


def test_count_flops_matches_benchmark_tables():
    # The benchmark's cost tables report millions of multiply-adds of convs and the linear layer
    # (bias included); FlopCounterMode counts a multiply-add as 2 FLOPs and leaves out the bias.
    def benchmark_mflops(ops, num_classes):
        return (count_flops(ops, num_classes=num_classes) / 2 + num_classes) / 1e6

    # arch index 0 |avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|
    # (published: cifar10-valid 15.64737, cifar100 15.65322, NATS-Bench issue #24)
    assert benchmark_mflops((4, 2, 1, 2, 1, 1), 10) == pytest.approx(15.64737, abs=1e-5)
    assert benchmark_mflops((4, 2, 1, 2, 1, 1), 100) == pytest.approx(15.65322, abs=1e-5)
    # |skip_connect~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|
    # (published for CIFAR-10: flops 113.95137, params 0.802426, NATS-Bench issue #36)
    assert benchmark_mflops((1, 0, 3, 4, 3, 3), 10) == pytest.approx(113.95137, abs=1e-5)
    assert count_parameters((1, 0, 3, 4, 3, 3)) == 802_426
    assert count_parameters((4, 2, 1, 2, 1, 1)) == 129_306


def test_size_caching():
    from raynas.spaces import nb201_nets

    before = nb201_nets._count_flops.cache_info().hits
    a = count_flops((2, 1, 0, 3, 4, 1), C=4, N=1, input_size=8)
    b = count_flops(_Arch((2, 1, 0, 3, 4, 1)), C=4, N=1, input_size=8)
    assert a == b and nb201_nets._count_flops.cache_info().hits == before + 1
    before = nb201_nets._count_parameters.cache_info().hits
    assert count_parameters([2, 1, 0, 3, 4, 1], C=4, N=1) == count_parameters(_Arch((2, 1, 0, 3, 4, 1)), C=4, N=1)
    assert nb201_nets._count_parameters.cache_info().hits == before + 1


def test_all_archs_small_forward_smoke():
    # a handful of systematic archs (every op on every edge at least once) through the supernet
    sup = NB201Supernet(C=4, N=1)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for o in range(5):
            for e in range(6):
                ops = tuple(o if k == e else (o + 1) % 5 for k in range(6))
                assert torch.isfinite(sup(x, ops)).all()
    assert len(list(itertools.islice(sup._plans, 100))) > 0


def test_space_size_tables_equal_networks_built_whole():
    import numpy as np

    from raynas.spaces import get_space
    from raynas.spaces import nb201_nets

    space = get_space("nb201")
    rng = np.random.default_rng(0)
    archs = space.sample(rng, 6) + [space.arch((4,) * 6), space.arch((3, 2, 1, 4, 0, 3))]
    for arch in archs:
        for net in (dict(C=16, N=5, num_classes=10), dict(C=8, N=1, num_classes=10, in_channels=1)):
            assert space.count_parameters(arch, **net) == nb201_nets.count_parameters(arch.ops, **net)
            assert space.count_flops(arch, input_size=16, **net) == nb201_nets.count_flops(arch.ops, input_size=16, **net)
