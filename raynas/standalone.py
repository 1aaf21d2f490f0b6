"""Training one architecture from scratch: the benchmark's recipe, with scaled epochs.

NAS-Bench-201's recipe: SGD momentum 0.9 Nesterov, lr 0.1 cosine to 0 (per step), weight decay
5e-4, batch 256, 200 epochs, the dataset's crop/flip augmentation. Presets scale the epochs down.
The state (weights, optimizer, epoch, batch stream) round-trips so a retried trial resumes.

``train_split``: ``"train"`` (default; valid accuracy measured on the valid split) or
``"train+valid"``: the whole train set, as the benchmark trains the archs behind its headline
numbers (CIFAR-10: 50,000 images); then nothing is held out, so rows carry no valid accuracy.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from raynas.data import TRAIN_SPLITS, Batches, Split, Splits, join_splits
from raynas.worker import cosine_lr

#: the benchmark's standalone recipe (METHODS.md)
RECIPE = dict(epochs=200, batch_size=256, lr=0.1, lr_min=0.0, momentum=0.9, nesterov=True, weight_decay=5e-4)


@torch.no_grad()
def evaluate(net: torch.nn.Module, split: Split, batch_size: int = 512, device: Any = "cpu") -> tuple[float, float]:
    """(accuracy, mean loss) over a whole split, eval mode."""
    net.eval()
    correct = loss = 0.0
    for x, y in Batches(split, batch_size, shuffle=False, device=device):
        logits = net(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return correct / len(split), loss / len(split)


class StandaloneTraining:
    """One arch trained from scratch, an epoch at a time."""

    def __init__(self, space, arch, splits: Splits, *, C: int = 16, N: int = 5, seed: int = 777,
                 device: Any = "cpu", eval_every: int = 1, train_split: str = "train", **recipe: Any) -> None:
        unknown = set(recipe) - set(RECIPE)
        if unknown:
            raise ValueError(f"standalone recipe: unknown settings {sorted(unknown)}; expected some of {sorted(RECIPE)}")
        if train_split not in TRAIN_SPLITS:
            raise ValueError(f"standalone train_split={train_split!r}; expected one of {TRAIN_SPLITS}")
        self.train_split = train_split
        self.seed = int(seed)
        self.recipe = {**RECIPE, **recipe}
        self.arch = space.parse(arch)
        self.splits = splits
        self.device = torch.device(device)
        # the valid split is evaluated every `eval_every` epochs and always after the last one:
        # a ground-truth build needs only the final accuracy, and evaluation is ~30% of a short epoch
        self.eval_every = max(1, int(eval_every))
        info = splits.info
        torch.manual_seed(seed)
        self.net = space.build_network(
            self.arch, C=C, N=N, num_classes=info.num_classes, in_channels=info.in_channels
        ).to(self.device)
        r = self.recipe
        self.optimizer = torch.optim.SGD(
            self.net.parameters(), lr=r["lr"], momentum=r["momentum"], nesterov=r["nesterov"],
            weight_decay=r["weight_decay"],
        )
        train = splits.train if train_split == "train" else join_splits(splits.train, splits.valid)
        self.train_size = len(train)
        self.batches = Batches(train, r["batch_size"], augment=info, seed=seed, device=self.device)
        self.total_steps = r["epochs"] * len(self.batches)
        self.epoch = 0
        self.step = 0
        self.seconds = 0.0

    @property
    def done(self) -> bool:
        return self.epoch >= self.recipe["epochs"]

    def run_epoch(self) -> dict:
        """Train one epoch; return the epoch's row (valid accuracy every ``eval_every`` epochs and on
        the last, test accuracy on the last)."""
        r = self.recipe
        start = time.perf_counter()
        self.net.train()
        loss_sum = correct = seen = 0.0
        for x, y in self.batches:
            for group in self.optimizer.param_groups:
                group["lr"] = cosine_lr(self.step, self.total_steps, r["lr"], r["lr_min"])
            logits = self.net(x)
            loss = F.cross_entropy(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            loss_sum += loss.item() * y.numel()
            correct += (logits.argmax(1) == y).sum().item()
            seen += y.numel()
        self.epoch += 1
        row = {"epoch": self.epoch, "epochs": r["epochs"], "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "train_seed": self.seed, "train_split": self.train_split, "train_size": self.train_size}
        # trained on train+valid, nothing is held out: no valid accuracy to report
        if self.train_split == "train" and (self.done or self.epoch % self.eval_every == 0):
            row["valid_acc"], row["valid_loss"] = evaluate(self.net, self.splits.valid, device=self.device)
        if self.done:
            row["test_acc"], row["test_loss"] = evaluate(self.net, self.splits.test, device=self.device)
        self.seconds += time.perf_counter() - start
        row["seconds"] = self.seconds
        return row

    def state_dict(self) -> dict:
        return {
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batches": self.batches.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "seconds": self.seconds,
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])
        self.epoch, self.step, self.seconds = state["epoch"], state["step"], state["seconds"]
        torch.set_rng_state(state["torch_rng"].cpu())  # loaded with map_location=<its GPU>, it is on the GPU
