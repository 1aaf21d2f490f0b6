"""Off-path weights (``supernet.offpath``): under "decay" SGD's weight decay and momentum move the
weights of the ops a step did not sample, as the official PyTorch 1.x loops did; under "frozen"
they stay bit-for-bit where they were. Real steps on digits (plain torch, no Ray), plus the
settings and presets that choose the mode and a resume that must be exact under both."""

import pytest
import torch

from raynas.errors import UsageError
from raynas.settings import OFFPATH_MODES, make_config
from raynas.worker import OFFPATH_MODES as WORKER_OFFPATH_MODES
from tests.test_worker import make

# no 1x1 conv anywhere: every nor_conv_1x1 weight is off the path of every step
ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"
ONLY_ARCH = {"name": "pool", "archs": [ARCH]}
LR, WD, MOMENTUM = 0.05, 1e-3, 0.9


def conv(worker, edge: int, op: int) -> torch.nn.Parameter:
    return worker.supernet.cells[0].edges[edge][op].op[1].weight  # ReLU -> Conv -> BN


def trained(offpath: str, steps: int, tmp_path=None, **kw):
    worker = make(tmp_path, offpath=offpath, lr=LR, lr_min=LR, weight_decay=WD, momentum=MOMENTUM,
                  total_steps=50, epochs=None, **kw)
    before = {"off": conv(worker, 0, 2).detach().clone(), "on": conv(worker, 0, 3).detach().clone()}
    worker.train(ONLY_ARCH, until=steps)
    return worker, before


def test_decay_moves_the_off_path_weights_by_sgds_weight_decay_exactly():
    worker, before = trained("decay", 1)
    off = conv(worker, 0, 2)
    # one step with a zero gradient: d = wd * w, buf = d, Nesterov d + m * buf; w -= lr * (1 + m) * wd * w
    expected = before["off"] - LR * (1 + MOMENTUM) * WD * before["off"]
    torch.testing.assert_close(off.detach(), expected, rtol=0, atol=1e-7)
    assert not torch.equal(off.detach(), before["off"])
    # every supernet weight has a momentum buffer after the first step, on the path or off it
    state = worker.optimizer.state
    assert all("momentum_buffer" in state[p] for p in worker.supernet.parameters())
    assert worker.info()["offpath"] == "decay"


def test_frozen_leaves_the_off_path_weights_exactly_where_they_were():
    decayed, _ = trained("decay", 5)
    frozen, before = trained("frozen", 5)
    assert torch.equal(conv(frozen, 0, 2).detach(), before["off"])  # bit for bit: never stepped
    assert conv(frozen, 0, 2) not in frozen.optimizer.state  # nor given a momentum buffer
    assert not torch.equal(conv(frozen, 0, 3).detach(), before["on"])  # the sampled conv learned
    # under decay the off-path weight shrank (no gradient ever reached it: only decay and momentum)
    assert conv(decayed, 0, 2).detach().norm() < before["off"].norm()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny steps


def test_a_resumed_worker_steps_exactly_as_one_that_ran_on(tmp_path, offpath="decay"):
    # gradients are not in a snapshot: a resumed "decay" worker must give the off-path weights
    # their zero gradients again, or its next steps would skip them
    straight, _ = trained(offpath, 12)
    first, _ = trained(offpath, 6, tmp_path)
    resumed = make(tmp_path, offpath=offpath, lr=LR, lr_min=LR, weight_decay=WD, momentum=MOMENTUM,
                   total_steps=50, epochs=None)
    assert resumed.version == 6 and resumed.restored_from
    resumed.train(ONLY_ARCH, until=12)
    for (name, a), b in zip(straight.supernet.named_parameters(), resumed.supernet.parameters()):
        assert torch.equal(a, b), name
    ours, theirs = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k]["momentum_buffer"], theirs[k]["momentum_buffer"]) for k in ours)


def test_the_setting_is_checked_and_the_paper_presets_decay():
    assert OFFPATH_MODES == WORKER_OFFPATH_MODES
    with pytest.raises(UsageError, match=r"supernet.offpath='sideways': expected one of 'decay', 'frozen'"):
        make_config("rsps", overrides={"supernet": {"offpath": "sideways"}})
    for method in ("rsps", "setn", "nao", "evnas"):
        assert make_config(method, preset="paper")["supernet"]["offpath"] == "decay", method
    assert make_config("rsps", preset="small")["supernet"]["offpath"] == "decay"  # small follows paper
    frozen = make_config("rsps", overrides={"supernet": {"offpath": "frozen"}})
    assert frozen["supernet"]["offpath"] == "frozen"
    with pytest.raises(ValueError, match=r"offpath='sideways'; expected one of \('decay', 'frozen'\)"):
        make(offpath="sideways")
