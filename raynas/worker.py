"""The body of a supernet actor, in plain PyTorch (no Ray).

:class:`SupernetWorker` owns one supernet's weights, optimizer, learning-rate schedule and data
streams on one device. :class:`raynas.actor.SupernetActor` is this class made a Ray actor; keeping
the body Ray-free lets benchmarks and GPU checks drive the very same code in a plain process.

*Version* = optimizer steps taken. Work is addressed by version (``train(until=V)``), so a unit
that is re-run after a crash or retry only does what is missing: work units are idempotent.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from raynas.checks import require_at_least_one
from raynas.data import Batches, load_dataset
from raynas.policies import Policy, decoded_weights, make_policy, normalise_spec
from raynas.spaces import get_space

#: BN modes of the supernet's cell ops (METHODS.md: batch statistics, "BN=0", rank much better)
BN_MODES = ("batch", "running")
#: how score() runs a candidate: its single path, or EvNAS's decoded mixture softmax(one_hot(arch))
PATH_MODES = ("arch", "decoded")
SNAPSHOT_FORMAT = 1


def cosine_lr(step: int, total: int, lr: float, lr_min: float) -> float:
    """Cosine from ``lr`` at step 0 to ``lr_min`` at ``total`` (per step, as a torch scheduler would per epoch)."""
    if total <= 0:
        return lr
    t = min(step, total) / total
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * t))


def restarted_cosine_lr(step: int, total: int, lr: float, lr_min: float, restarts: int = 1) -> float:
    """:func:`cosine_lr` in ``restarts`` equal cycles over ``total`` steps (warm restarts: Balanced
    NAO restarts the schedule every search iteration). Cycle ``k`` starts at step
    ``ceil(k * total / restarts)`` with ``lr`` and anneals to ``lr_min`` at the next cycle's start;
    ``restarts=1`` is :func:`cosine_lr`."""
    if restarts <= 1 or total <= 0:
        return cosine_lr(step, total, lr, lr_min)
    step = min(step, total)
    k = min(step * restarts // total, restarts - 1)
    start, end = -(-k * total // restarts), -(-(k + 1) * total // restarts)
    return cosine_lr(step - start, end - start, lr, lr_min)


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class SupernetWorker:
    """One supernet with its optimizer, schedule and resident data, on one device.

    Args are keyword-only and stored verbatim in :attr:`config`. ``total_steps`` fixes the cosine
    schedule (``lr_restarts`` cuts it into that many equal cycles, each from ``lr`` to ``lr_min``);
    ``snapshot_dir`` enables snapshots (every ``snapshot_every`` steps and at the end of every
    :meth:`train` call) and makes a new worker resume from the last one.
    """

    def __init__(
        self,
        *,
        space: str = "nb201",
        allowed_ops: Sequence[Sequence[int]] | None = None,
        dataset: str = "digits",
        data_dir: str | None = None,
        data_options: dict | None = None,
        C: int = 16,
        N: int = 5,
        bn_mode: str = "batch",
        batch_size: int = 64,
        valid_batch_size: int = 512,
        lr: float = 0.025,
        lr_min: float = 0.001,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        grad_clip: float | None = 5.0,
        total_steps: int | None = None,
        epochs: float | None = None,
        lr_restarts: int = 1,
        seed: int = 0,
        snapshot_dir: str | None = None,
        snapshot_every: int | None = None,
        init_from: str | None = None,
        device: str | None = None,
        num_threads: int | None = None,
    ) -> None:
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode={bn_mode!r}; expected one of {BN_MODES}")
        if (total_steps is None) == (epochs is None):
            raise ValueError(f"total_steps={total_steps!r}, epochs={epochs!r}; give exactly one (the schedule's length)")
        require_at_least_one(batch_size=batch_size, valid_batch_size=valid_batch_size, total_steps=total_steps or 1,
                             epochs=epochs or 1, lr_restarts=lr_restarts)
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.device = pick_device(device)
        self.space = get_space(space)
        if allowed_ops is not None:
            self.space = type(self.space)(allowed_ops)
        self.splits = load_dataset(dataset, data_dir, **(data_options or {})).to(self.device)
        info = self.splits.info
        torch.manual_seed(seed)
        self.supernet = self.space.build_supernet(
            C=C,
            N=N,
            num_classes=info.num_classes,
            in_channels=info.in_channels,
            bn_affine=False,
            bn_track_running_stats=bn_mode == "running",
        ).to(self.device)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(
            self.supernet.parameters(), lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
        self.train_batches = Batches(
            self.splits.train, batch_size, augment=info, drop_last=True, seed=seed, device=self.device
        )
        self.valid_batches = Batches(self.splits.valid, valid_batch_size, shuffle=True, seed=seed + 1, device=self.device)
        # whole-split scoring (EvNAS fitness) reads the split in order, apart from the stream
        self.valid_full = Batches(self.splits.valid, valid_batch_size, shuffle=False, device=self.device)
        self._valid_order: tuple[int, torch.Tensor] | None = None  # (pass, permutation) of valid_batch()
        self._train_iter = self.train_batches.forever()
        self._valid_iter = self.valid_batches.forever()
        self.steps_per_epoch = len(self.train_batches)
        self.total_steps = int(total_steps) if total_steps is not None else max(1, round(epochs * self.steps_per_epoch))
        self.rng = np.random.default_rng(seed)
        self.policy: Policy = make_policy("uniform", self.space, self.supernet.num_cells, self.device)
        self.version = 0
        self.seconds = {"train": 0.0, "score": 0.0}
        self.snapshot_path = Path(snapshot_dir) / "snapshot.pt" if snapshot_dir else None
        self.restored_from: str | None = None
        # few-shot NAS: a sub-supernet starts from its parent's weights, read at its first train
        # call (the parent is still training when the sub-supernet actors are created)
        self.initialized_from: str | None = None
        if self.snapshot_path is not None and self.snapshot_path.exists():
            self.load_snapshot(self.snapshot_path)

    # --- training -------------------------------------------------------------------------
    def _use_policy(self, spec: dict | str) -> Policy:
        spec = normalise_spec(spec)
        if spec != self.policy.spec:
            self.policy = make_policy(spec, self.space, self.supernet.num_cells, self.device)
        return self.policy

    def train(self, policy: dict | str = "uniform", until: int | None = None, steps: int | None = None) -> dict:
        """Train until version ``until`` (or for ``steps`` more steps) under ``policy``."""
        if (until is None) == (steps is None):
            raise ValueError("train: give exactly one of until= (a target version) or steps=")
        target = int(until) if until is not None else self.version + int(steps)
        parent_policy = None
        if self.config["init_from"] and self.version == 0 and self.initialized_from is None:
            parent_policy = self.init_from_parent(self.config["init_from"])
        policy_obj = self._use_policy(policy)
        if parent_policy is not None and parent_policy["spec"] == policy_obj.spec:
            # the same method's policy continues from the parent's state (SETN: its alpha)
            policy_obj.load_state_dict(parent_policy["state"])
        cfg = self.config
        net, opt = self.supernet, self.optimizer
        net.train()
        start, start_version = time.perf_counter(), self.version
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        extra: dict = {}
        while self.version < target:
            lr = restarted_cosine_lr(self.version, self.total_steps, cfg["lr"], cfg["lr_min"], cfg["lr_restarts"])
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = next(self._train_iter)
            logits = net(x, policy_obj.path(self.rng, self.version))
            loss = self.criterion(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg["grad_clip"])
            opt.step()
            self.version += 1
            extra = policy_obj.after_step(self, self.version) or extra
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
            if cfg["snapshot_every"] and self.version % cfg["snapshot_every"] == 0:
                self.snapshot()
        seconds = time.perf_counter() - start
        self.seconds["train"] += seconds
        if self.snapshot_path is not None and self.version > start_version:
            self.snapshot()
        steps_done = self.version - start_version
        return {
            "version": self.version,
            "steps": steps_done,
            "train_loss": float(loss_sum.item() / seen) if seen else float("nan"),
            "train_acc": float(correct.item() / seen) if seen else float("nan"),
            "seconds": seconds,
            "samples_per_s": seen / seconds if seconds > 0 else 0.0,
            "lr": restarted_cosine_lr(self.version, self.total_steps, cfg["lr"], cfg["lr_min"], cfg["lr_restarts"]),
            **extra,
            **policy_obj.export(),
        }

    # --- scoring --------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, archs: Sequence, batches: int | None = 1, path_mode: str = "arch",
              start: int | None = None) -> list[dict]:
        """Valid accuracy and loss of each arch on the supernet, in eval mode.

        ``batches``: valid batches per arch, so consecutive candidates see different batches
        (SETN); ``None`` scores each arch on the whole split. With ``start``, candidate ``j`` reads
        valid batches ``start + j * batches ...`` of a fixed seeded sequence (so a candidate's
        batch does not depend on which cohort reached the actor first: same seed, same scores);
        without it, the next batches of the actor's advancing valid stream.
        ``path_mode``: ``"arch"`` runs each arch's single path; ``"decoded"`` runs the mixture of
        all ops weighted by :func:`raynas.policies.decoded_weights` (EvNAS fitness). Rows keep
        ``arch`` = the arch's string either way.
        """
        if path_mode not in PATH_MODES:
            raise ValueError(f"score: path_mode={path_mode!r}; expected one of {PATH_MODES}")
        parsed = [self.space.parse(a) for a in archs]
        outside = [str(a) for a in parsed if a not in self.space]
        if outside:
            raise ValueError(f"score: {len(outside)} archs outside this supernet's sub-space, e.g. {outside[0]}")
        self.supernet.eval()
        rows = []
        for j, arch in enumerate(parsed):
            began = time.perf_counter()
            if path_mode == "decoded":
                path = decoded_weights(arch, self.space.num_ops, self.device, allowed_ops=self.space.allowed_ops)
            else:
                path = arch
            if batches is None:
                stream = iter(self.valid_full)
            elif start is not None:
                first = int(start) + j * int(batches)
                stream = (self.valid_batch(first + b) for b in range(int(batches)))
            else:
                stream = (next(self._valid_iter) for _ in range(int(batches)))
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device)
            n = used = 0
            for x, y in stream:
                logits = self.supernet(x, path)
                loss_sum += F.cross_entropy(logits, y, reduction="sum")
                correct += (logits.argmax(1) == y).sum()
                n += y.numel()
                used += 1
            seconds = time.perf_counter() - began
            rows.append(
                {
                    "arch": str(arch),
                    "valid_acc": float(correct.item() / n),
                    "valid_loss": float(loss_sum.item() / n),
                    "batches": used,
                    "samples": n,
                    "version": self.version,
                    "seconds": seconds,
                }
            )
        self.seconds["score"] += sum(r["seconds"] for r in rows)
        return rows

    def valid_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``index`` of a fixed sequence over the valid split: each run of
        ``len(valid) // valid_batch_size`` batches is one pass in a seeded random order."""
        split, size = self.splits.valid, min(self.config["valid_batch_size"], len(self.splits.valid))
        per_pass = len(split) // size
        epoch, within = divmod(int(index), per_pass)
        if self._valid_order is None or self._valid_order[0] != epoch:
            generator = torch.Generator().manual_seed(self.config["seed"] * 1_000_003 + epoch)
            self._valid_order = (epoch, torch.randperm(len(split), generator=generator).to(self.device))
        picks = self._valid_order[1][within * size:(within + 1) * size]
        return split.images[picks], split.labels[picks]

    # --- state ----------------------------------------------------------------------------
    def info(self) -> dict:
        """Plain facts for manifests and progress (no tensors)."""
        return {
            "version": self.version,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "device": str(self.device),
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            "dataset": self.config["dataset"],
            "dataset_fingerprint": self.splits.fingerprint(),
            "num_classes": self.splits.info.num_classes,
            "in_channels": self.splits.info.in_channels,
            "input_size": self.splits.info.input_size,
            "bn_mode": self.config["bn_mode"],
            "allowed_ops": [list(a) for a in self.space.allowed_ops],
            "parameters": sum(p.numel() for p in self.supernet.parameters()),
            "seconds": dict(self.seconds),
            "restored_from": self.restored_from,
            "initialized_from": self.initialized_from,
            "policy": self.policy.name,
        }

    def state_dict(self) -> dict:
        return {
            "format": SNAPSHOT_FORMAT,
            "version": self.version,
            "supernet": self.supernet.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "policy": {"spec": self.policy.spec, "state": self.policy.state_dict()},
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "train_batches": self.train_batches.state_dict(),
            "valid_batches": self.valid_batches.state_dict(),
            "seconds": dict(self.seconds),
            "initialized_from": self.initialized_from,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"snapshot format {state.get('format')!r}; this raynas reads format {SNAPSHOT_FORMAT}")
        self.supernet.load_state_dict(state["supernet"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.policy = make_policy(state["policy"]["spec"], self.space, self.supernet.num_cells, self.device)
        self.policy.load_state_dict(state["policy"]["state"])
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.train_batches.load_state_dict(state["train_batches"])
        self.valid_batches.load_state_dict(state["valid_batches"])
        self._train_iter = self.train_batches.forever()
        self._valid_iter = self.valid_batches.forever()
        self.version = int(state["version"])
        self.seconds = dict(state["seconds"])
        self.initialized_from = state.get("initialized_from")

    def snapshot(self, path: str | os.PathLike | None = None) -> str:
        """Write the full state atomically (to the snapshot path unless ``path`` is given)."""
        target = Path(path) if path else self.snapshot_path
        if target is None:
            raise ValueError("snapshot: this worker has no snapshot_dir; pass path=")
        atomic_torch_save(self.state_dict(), target)
        return str(target)

    def load_snapshot(self, path: str | os.PathLike) -> None:
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=False))
        self.restored_from = str(path)

    def init_from_parent(self, path: str | os.PathLike) -> dict:
        """Few-shot NAS: start from a parent supernet's weights with a fresh optimizer and version.
        Returns the parent's policy (spec and state) for the caller to continue it."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"init_from={str(path)!r}: the parent supernet's snapshot does not exist (yet)")
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.supernet.load_state_dict(state["supernet"])
        self.initialized_from = str(path)
        return state["policy"]
