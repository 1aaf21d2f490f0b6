"""Standalone training of one arch: its rows, when it evaluates, and that its state round-trips."""

import copy

import pytest

from raynas.data import load_dataset
from raynas.spaces import get_space
from raynas.standalone import StandaloneTraining

ARCH = "|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|skip_connect~0|none~1|nor_conv_3x3~2|"


@pytest.fixture(scope="module")
def splits():
    return load_dataset("digits")


def _train(splits, **kw):
    return StandaloneTraining(get_space("nb201"), ARCH, splits, C=4, N=1, seed=3, batch_size=128, **kw)


def test_valid_split_every_k_epochs_and_after_the_last(splits):
    training = _train(splits, epochs=3, eval_every=2)
    rows = [training.run_epoch() for _ in range(3)]
    assert training.done and [r["epoch"] for r in rows] == [1, 2, 3]
    assert "valid_acc" not in rows[0] and "test_acc" not in rows[0]
    assert 0.0 <= rows[1]["valid_acc"] <= 1.0 and "test_acc" not in rows[1]
    assert {"valid_acc", "valid_loss", "test_acc", "test_loss"} <= set(rows[2])
    assert rows[2]["train_loss"] < rows[0]["train_loss"]  # it learns
    every = _train(splits, epochs=3)
    assert all("valid_acc" in every.run_epoch() for _ in range(3))


def test_a_restored_training_continues_exactly(splits):
    whole = _train(splits, epochs=2)
    whole.run_epoch()
    state = copy.deepcopy(whole.state_dict())  # as saved to a checkpoint: the optimizer's buffers move on
    last = whole.run_epoch()
    again = _train(splits, epochs=2)
    again.load_state_dict(state)
    resumed = again.run_epoch()
    assert resumed["epoch"] == 2 and resumed["train_loss"] == pytest.approx(last["train_loss"])
    assert resumed["valid_acc"] == last["valid_acc"] and resumed["test_acc"] == last["test_acc"]


def test_unknown_recipe_settings_are_refused(splits):
    with pytest.raises(ValueError, match=r"unknown settings \['lr_max'\]"):
        _train(splits, epochs=1, lr_max=0.1)


def test_on_the_whole_train_set_nothing_is_held_out_and_the_row_says_what_it_trained_on(splits):
    training = _train(splits, epochs=1, train_split="train+valid")
    (row,) = [training.run_epoch()]
    assert row["train_size"] == len(splits.train) + len(splits.valid) == training.train_size
    assert (row["train_seed"], row["train_split"]) == (3, "train+valid")
    assert "valid_acc" not in row and 0.0 <= row["test_acc"] <= 1.0
    assert _train(splits, epochs=1).run_epoch()["train_size"] == len(splits.train)
    with pytest.raises(ValueError, match="train_split='test'"):
        _train(splits, epochs=1, train_split="test")
