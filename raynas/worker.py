"""The body of a supernet actor, in plain PyTorch (no Ray).

:class:`SupernetWorker` owns one supernet's weights, optimizer, learning-rate schedule and data
streams on one device. :class:`raynas.actor.SupernetActor` is this class made a Ray actor; keeping
the body Ray-free lets benchmarks and GPU checks drive the very same code in a plain process
(neither this module nor what it imports imports Ray).

*Version* = optimizer steps taken. Work is addressed by version: ``train(until=U, start=F)`` is
"the chunk from version F to version U" and ``score(..., version=V)`` is "scoring at version V".
A unit that is re-run after a crash, a retry or a resume from a stale searcher state gets what
the original gave: the actor trains only what is missing, replays a chunk it already did from that
chunk's per-version snapshot, or rewinds to the chunk's first version.

``snapshot_dir`` is a local path or a storage URI (``s3://bucket/run/supernets/0``, any pyarrow
filesystem; :class:`raynas.storage.Location`), so a restarted actor on another node, and the
sub-supernets of few-shot NAS (``init_from``), find the snapshots without a shared disk. Files in
it (all written atomically: locally a temporary file + ``os.replace``, in an object store one
upload that publishes the object when it completes):

- ``snapshot.pt``: the latest state (every ``snapshot_every`` steps and at the end of every
  ``train`` call); a new worker resumes from it.
- ``v{version:08d}.pt``: the state at the end of a ``train`` call that reached ``version``, plus
  that call's result row (key ``"row"``); the newest ``keep_versions`` are kept. At the end of a
  call ``snapshot.pt`` is a hard link to (else a copy of) the version file, not a second write
  (in an object store: a server-side copy, no second upload).

Every file loads with ``torch.load(..., weights_only=True)`` (local files from their path, object
store files from their bytes): states hold only tensors and plain Python values (converted at save
time), and a snapshot that would need more is refused.
"""

from __future__ import annotations

import inspect
import io
import math
import os
import pickle
import re
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from raynas.checks import require_at_least_one
from raynas.data import Batches, load_dataset
from raynas.policies import Policy, decoded_weights, make_policy, normalise_spec
from raynas.spaces import get_space
from raynas.storage import Location

#: BN modes of the supernet's cell ops (METHODS.md: batch statistics, "BN=0", rank much better)
BN_MODES = ("batch", "running")
#: how score() runs a candidate: its single path, or EvNAS's decoded mixture softmax(one_hot(arch))
PATH_MODES = ("arch", "decoded")
#: what a training step does to the weights of the ops off its path: "decay", the official
#: single-path code's (PyTorch 1.x ``zero_grad`` left zero gradients, so SGD's weight decay and
#: momentum moved every weight every step), or "frozen" (gradients set to None: untouched)
OFFPATH_MODES = ("decay", "frozen")
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


def atomic_torch_save(obj: Any, path: str | os.PathLike | Location) -> None:
    """``torch.save(obj)`` to ``path`` (a local path or a storage URI) atomically: a reader sees the
    old file or the new one. Locally: a temporary file, then ``os.replace``; in an object store:
    serialised in memory, then one upload."""
    where = Location(path)
    if where.is_local:
        local = where.local_path
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.tmp")
        try:
            torch.save(obj, tmp)
            os.replace(tmp, local)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    where.write_bytes(buffer.getvalue())


def atomic_link(source: str | os.PathLike | Location, path: str | os.PathLike | Location) -> None:
    """Make ``path`` the file ``source`` is, atomically (:meth:`raynas.storage.Location.copy_to`): a
    hard link (no second write) where the local file system has them, else a copy; a server-side
    copy in an object store."""
    Location(source).copy_to(Location(path))


def version_file(version: int) -> str:
    """The name of the per-version snapshot of ``version`` in a snapshot dir."""
    return f"v{int(version):08d}.pt"


_VERSION_FILE = re.compile(r"^v(\d{8,})\.pt$")


def plain(obj: Any, where: str = "state") -> Any:
    """``obj`` with numpy values made Python values (arrays: tensors) and archs made strings, so
    that ``torch.load(weights_only=True)`` reads it back. Anything else that is not a tensor or a
    plain value raises ``TypeError`` naming where it sits: a snapshot that could not be read back is
    never written."""
    if isinstance(obj, np.generic):  # first: np.float64 is a float, yet pickles as a numpy global
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, torch.Tensor, torch.dtype,
                                       torch.device, torch.Size)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset, range)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, (list, range)) else tuple(items) if isinstance(obj, tuple) else set(items)
    if hasattr(obj, "ops") and type(obj).__str__ is not object.__str__:
        return str(obj)  # an arch: every space parses its string form
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a snapshot holds only "
                    "tensors and plain values (convert it in the policy's state_dict/export)")


def load_plain(path: str | os.PathLike | Location, map_location: Any = None) -> dict:
    """``torch.load(path, weights_only=True)`` of a local path or a storage URI (read as bytes); a
    file that needs more than tensors and plain values (a crafted pickle that would run code, or an
    old format) is refused with a ValueError. A missing file raises ``FileNotFoundError`` naming it."""
    where = Location(path)
    try:
        source = where.local_path if where.is_local else io.BytesIO(where.read_bytes())
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        why = next((line for line in lines if "Unpickler error" in line), lines[0] if lines else type(err).__name__)
        raise ValueError(f"snapshot {str(where)!r} holds more than tensors and plain values; refusing to unpickle "
                         f"it (weights_only=True): {why}") from None


def _same(a: Any, b: Any) -> bool:
    """``a == b`` for plain values that may hold tensors (equal shape and values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


#: settings that say how a worker runs or starts, not which supernet it is
RUNTIME_SETTINGS = ("device", "num_threads", "expect_snapshot")


def worker_settings(kwargs: dict) -> dict:
    """The supernet-defining settings of a worker made from ``kwargs``: every argument of
    :class:`SupernetWorker` (defaults filled in) but :data:`RUNTIME_SETTINGS`, as plain values
    (tuples and ranges as lists), so two workers' settings compare with ``==``."""
    params = inspect.signature(SupernetWorker.__init__).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TypeError(f"SupernetWorker got unexpected settings {unknown}")
    full = {name: kwargs.get(name, p.default) for name, p in params.items() if name != "self"}

    def norm(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple, range)):
            return [norm(x) for x in v]
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, Location):
            return str(v)  # a URI has no fspath
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        return v

    return {k: norm(v) for k, v in full.items() if k not in RUNTIME_SETTINGS}


def settings_difference(a: dict, b: dict) -> str | None:
    """The first key (in argument order) whose value differs between two :func:`worker_settings`."""
    for key in list(a) + [k for k in b if k not in a]:
        if a.get(key) != b.get(key):
            return key
    return None


class SupernetWorker:
    """One supernet with its optimizer, schedule and resident data, on one device.

    Args are keyword-only and stored verbatim in :attr:`config`. ``total_steps`` fixes the cosine
    schedule (``lr_restarts`` cuts it into that many equal cycles, each from ``lr`` to ``lr_min``);
    ``snapshot_dir`` enables snapshots (``snapshot.pt`` every ``snapshot_every`` steps and at the
    end of every :meth:`train` call, plus one ``v{version:08d}.pt`` per call, of which the newest
    ``keep_versions`` are kept; ``None``: all) and makes a new worker resume from ``snapshot.pt``.
    ``expect_snapshot=True`` (a resumed run) refuses to start without that file rather than train
    again from zero. ``offpath`` (:data:`OFFPATH_MODES`) says what a step does to the weights off
    its path: ``"decay"`` (default) gives every weight a zero gradient, so SGD's weight decay and
    momentum move all of them every step, as in the official single-path code (PyTorch 1.x
    ``zero_grad`` zeroed gradients; there an op joins at its first use, here from step 1);
    ``"frozen"`` leaves them untouched (gradients set to None, today's PyTorch default).
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
        offpath: str = "decay",
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
        snapshot_dir: str | os.PathLike | Location | None = None,
        snapshot_every: int | None = None,
        keep_versions: int | None = 16,
        expect_snapshot: bool = False,
        init_from: str | os.PathLike | Location | None = None,
        device: str | None = None,
        num_threads: int | None = None,
    ) -> None:
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode={bn_mode!r}; expected one of {BN_MODES}")
        if offpath not in OFFPATH_MODES:
            raise ValueError(f"offpath={offpath!r}; expected one of {OFFPATH_MODES}")
        if (total_steps is None) == (epochs is None):
            raise ValueError(f"total_steps={total_steps!r}, epochs={epochs!r}; give exactly one (the schedule's length)")
        require_at_least_one(batch_size=batch_size, valid_batch_size=valid_batch_size, total_steps=total_steps or 1,
                             epochs=epochs or 1, lr_restarts=lr_restarts)
        if keep_versions is not None:
            require_at_least_one(keep_versions=keep_versions)
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.snapshot_dir = Location(snapshot_dir) if snapshot_dir else None
        self.snapshot_path = self.snapshot_dir / "snapshot.pt" if self.snapshot_dir else None
        if expect_snapshot and (self.snapshot_path is None or not self.snapshot_path.is_file()):
            where = self.snapshot_path if self.snapshot_path is not None else "snapshot_dir=None"
            raise ValueError(f"supernet snapshot {where} is missing; a resumed run needs its supernets/ folder")
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
        # one param group, every supernet weight in it (no no-decay group): under offpath="decay"
        # the decay and momentum reach each of them every step
        self.optimizer = torch.optim.SGD(
            self.supernet.parameters(), lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
        self._materialise_grads()
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
        self.restored_from: str | None = None
        #: per-version snapshots loaded since start (replays and rewinds of re-issued units)
        self.reloads = 0
        # few-shot NAS: a sub-supernet starts from its parent's weights, read at its first train
        # call (the parent is still training when the sub-supernet actors are created)
        self.initialized_from: str | None = None
        if self.snapshot_path is not None:
            state = self._load_if_present(self.snapshot_path)
            if state is not None:
                self.load_state_dict(state)
                self.restored_from = str(self.snapshot_path)

    def settings(self) -> dict:
        """This worker's supernet-defining settings (:func:`worker_settings` of :attr:`config`):
        what :func:`raynas.actor.create_supernet_actor` compares before reusing a named actor."""
        return worker_settings(self.config)

    # --- training -------------------------------------------------------------------------
    def _use_policy(self, spec: dict | str) -> Policy:
        spec = normalise_spec(spec)
        if spec != self.policy.spec:
            self.policy = make_policy(spec, self.space, self.supernet.num_cells, self.device)
        return self.policy

    def _materialise_grads(self) -> None:
        """``offpath="decay"``: give every weight a zero gradient where it has none, so that each
        optimizer step decays it and moves its momentum, on the path or off it (a weight whose
        gradient is None is skipped by SGD). A no-op under ``"frozen"``. Called at start, after
        every state load and at each train call: a resumed worker steps exactly as one that ran on."""
        if self.config["offpath"] != "decay":
            return
        for p in self.supernet.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    def _clear_grads(self) -> None:
        """Before a step: zero gradients (``"decay"``; the weights off the path keep a zero one) or
        none at all (``"frozen"``: what the step does not touch, it leaves alone)."""
        self.optimizer.zero_grad(set_to_none=self.config["offpath"] == "frozen")

    def _lr(self, version: int) -> float:
        cfg = self.config
        return restarted_cosine_lr(version, self.total_steps, cfg["lr"], cfg["lr_min"], cfg["lr_restarts"])

    def train(self, policy: dict | str = "uniform", until: int | None = None, steps: int | None = None, *,
              start: int | None = None) -> dict:
        """Train until version ``until`` (or for ``steps`` more steps) under ``policy``.

        ``start=F`` (with ``until=U``) names the chunk F -> U. When the per-version snapshot of U
        holds that chunk (its row says it went F -> U, under this policy spec), the chunk is
        replayed: that state is loaded and its row returned with ``"replayed": True``. Otherwise a
        supernet at F trains on, and one elsewhere loads the snapshot of F first and trains F -> U
        (bit-identical to the first time on CPU); no snapshot of F: ValueError.
        A non-finite loss stops the call before that batch's optimizer step and returns a row
        with ``"diverged": True`` (nothing is snapshotted).
        """
        if (until is None) == (steps is None):
            raise ValueError("train: give exactly one of until= (a target version) or steps=")
        if start is not None:
            if until is None:
                raise ValueError("train: start= names a chunk start..until; give until=, not steps=")
            start, until = int(start), int(until)
            if start < 0 or until < start:
                raise ValueError(f"train: start={start}, until={until}; expected 0 <= start <= until")
            # a chunk already done (a re-issued unit) is replayed from its stored end state, even
            # by a supernet at its start: the stored state is the original, and the next re-issued
            # chunk can then replay too
            replay = self._replay(policy, start, until) if until > start else None
            if replay is not None:
                return replay
            if self.version != start:
                self.load_version(start)
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
        self._materialise_grads()
        net.train()
        began, start_version = time.perf_counter(), self.version
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = 0
        extra: dict = {}
        diverged: dict | None = None
        while self.version < target:
            lr = self._lr(self.version)
            for group in opt.param_groups:
                group["lr"] = lr
            x, y = next(self._train_iter)
            logits = net(x, policy_obj.path(self.rng, self.version))
            loss = self.criterion(logits, y)
            self._clear_grads()
            loss.backward()
            # one sync per step, taken after the backward is queued; a broken batch gets no step
            if not bool(torch.isfinite(loss.detach())):
                self._clear_grads()
                value = float(loss.detach())
                diverged = {
                    "diverged": True,
                    "message": f"supernet loss became {value} at step {self.version + 1} (lr {lr:.4g}); "
                               "lower supernet.lr or check the data",
                }
                break
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
        seconds = time.perf_counter() - began
        self.seconds["train"] += seconds
        row = {
            "version": self.version,
            "steps": self.version - start_version,
            "train_loss": float(loss_sum.item() / seen) if seen else float("nan"),
            "train_acc": float(correct.item() / seen) if seen else float("nan"),
            "seconds": seconds,
            "samples_per_s": seen / seconds if seconds > 0 else 0.0,
            "lr": self._lr(self.version),
            **extra,
            **policy_obj.export(),
        }
        if diverged is not None:
            row.update(diverged, train_loss=float("nan"))
            return plain(row, "train row")
        row = plain(row, "train row")
        if self.snapshot_path is not None and self.version > start_version:
            self._snapshot_version(row)
        return row

    def _replay(self, policy: dict | str, start: int, until: int) -> dict | None:
        """The stored row of chunk ``start`` -> ``until`` under ``policy`` (its end state loaded),
        or ``None`` when the per-version snapshot of ``until`` does not hold that chunk."""
        path = self.version_path(until)
        state = self._load_if_present(path) if path is not None else None
        if state is None:
            return None
        row = state.get("row")
        if (not isinstance(row, dict) or int(row.get("version", -1)) != until
                or until - int(row.get("steps", -1)) != start
                or not _same(state["policy"]["spec"], plain(normalise_spec(policy), "policy"))):
            return None  # another chunk (or policy) reached this version: train this one instead
        self.load_state_dict(state)
        self.reloads += 1
        atomic_link(path, self.snapshot_path)  # snapshot.pt = where the supernet is now
        return {**row, "replayed": True}

    # --- scoring --------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, archs: Sequence, batches: int | None = 1, path_mode: str = "arch",
              start: int | None = None, *, version: int | None = None) -> list[dict]:
        """Valid accuracy and loss of each arch on the supernet, in eval mode.

        ``batches``: valid batches per arch, so consecutive candidates see different batches
        (SETN); ``None`` scores each arch on the whole split. With ``start``, candidate ``j`` reads
        valid batches ``start + j * batches ...`` of a fixed seeded sequence (so a candidate's
        batch does not depend on which cohort reached the actor first: same seed, same scores);
        without it, the next batches of the actor's advancing valid stream.
        ``path_mode``: ``"arch"`` runs each arch's single path; ``"decoded"`` runs the mixture of
        all ops weighted by :func:`raynas.policies.decoded_weights` (EvNAS fitness). Rows keep
        ``arch`` = the arch's string either way.
        ``version=V``: score at version V; a supernet elsewhere first loads V's per-version
        snapshot (it stays at V afterwards; a later ``train(start=...)`` finds its own start).
        Rows with ``start`` or ``batches=None`` then equal the original ones; the advancing stream
        restarts where V's train call left it.
        """
        if path_mode not in PATH_MODES:
            raise ValueError(f"score: path_mode={path_mode!r}; expected one of {PATH_MODES}")
        parsed = [self.space.parse(a) for a in archs]
        outside = [str(a) for a in parsed if a not in self.space]
        if outside:
            raise ValueError(f"score: {len(outside)} archs outside this supernet's sub-space, e.g. {outside[0]}")
        if version is not None and int(version) != self.version:
            self.load_version(int(version))
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
            "torch_version": str(torch.__version__),  # the torch that trained (a str: the driver imports no torch)
            "dataset": self.config["dataset"],
            "dataset_fingerprint": self.splits.fingerprint(),
            "num_classes": self.splits.info.num_classes,
            "in_channels": self.splits.info.in_channels,
            "input_size": self.splits.info.input_size,
            "bn_mode": self.config["bn_mode"],
            "offpath": self.config["offpath"],
            "allowed_ops": [list(a) for a in self.space.allowed_ops],
            "parameters": sum(p.numel() for p in self.supernet.parameters()),
            "seconds": dict(self.seconds),
            "restored_from": self.restored_from,
            "initialized_from": self.initialized_from,
            "reloads": self.reloads,
            "snapshot_versions": self.snapshot_versions(),
            "policy": self.policy.name,
        }

    def state_dict(self) -> dict:
        """The full state: tensors and plain values only (loads with ``weights_only=True``)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "version": self.version,
            "supernet": self.supernet.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "policy": plain({"spec": self.policy.spec, "state": self.policy.state_dict()}, "policy"),
            "rng": plain(self.rng.bit_generator.state, "rng"),
            "torch_rng": torch.get_rng_state(),
            "train_batches": plain(self.train_batches.state_dict(), "train_batches"),
            "valid_batches": plain(self.valid_batches.state_dict(), "valid_batches"),
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
        torch.set_rng_state(state["torch_rng"].cpu())
        self.train_batches.load_state_dict(state["train_batches"])
        self.valid_batches.load_state_dict(state["valid_batches"])
        self._train_iter = self.train_batches.forever()
        self._valid_iter = self.valid_batches.forever()
        self.version = int(state["version"])
        self.seconds = dict(state["seconds"])
        self.initialized_from = state.get("initialized_from")
        self._materialise_grads()  # gradients are not state: a loaded "decay" worker has them again

    def snapshot(self, path: str | os.PathLike | Location | None = None) -> str:
        """Write the full state atomically (to the snapshot path unless ``path``, a local path or a
        storage URI, is given); returns where."""
        target = Location(path) if path else self.snapshot_path
        if target is None:
            raise ValueError("snapshot: this worker has no snapshot_dir; pass path=")
        atomic_torch_save(self.state_dict(), target)
        return str(target)

    def _snapshot_version(self, row: dict) -> None:
        """End of a train call: the state and its row to ``v{version}.pt`` (one write),
        ``snapshot.pt`` made that same file, and version files beyond ``keep_versions`` removed."""
        path = self.version_path(self.version)
        atomic_torch_save({**self.state_dict(), "row": row}, path)
        atomic_link(path, self.snapshot_path)
        # version files beyond this one are another history's (a rewound supernet trained again):
        # gone, so that every version file left is a state this supernet's history went through
        versions = self.snapshot_versions()
        stale = [v for v in versions if v > self.version]
        keep = self.config["keep_versions"]
        if keep is not None:
            stale += [v for v in versions if v < self.version][: max(0, len(versions) - len(stale) - int(keep))]
        for old in stale:
            self.version_path(old).unlink(missing_ok=True)

    def version_path(self, version: int) -> Location | None:
        """Where the per-version snapshot of ``version`` is (``None`` without a snapshot_dir)."""
        return self.snapshot_dir / version_file(version) if self.snapshot_dir is not None else None

    def snapshot_versions(self) -> list[int]:
        """The versions that have a per-version snapshot in snapshot_dir, ascending."""
        if self.snapshot_dir is None:
            return []
        found = (_VERSION_FILE.match(p.name) for p in self.snapshot_dir.iterdir())  # [] when absent
        return sorted(int(m.group(1)) for m in found if m)

    def load_version(self, version: int) -> None:
        """Load the per-version snapshot of ``version`` (a re-issued unit addressed elsewhere)."""
        path = self.version_path(version)
        state = self._load_if_present(path) if path is not None else None
        if state is None:
            where = self.snapshot_dir if self.snapshot_dir is not None else "snapshot_dir (none set)"
            raise ValueError(f"the supernet is at version {self.version} but the unit asks for version {version}; "
                             f"no snapshot of version {version} in {where}; the run's supernets/ folder is incomplete")
        self.load_state_dict(state)
        self.reloads += 1

    def load_snapshot(self, path: str | os.PathLike | Location) -> None:
        """Load a full state written by :meth:`snapshot` (a local path or a storage URI)."""
        self.load_state_dict(load_plain(path, map_location=self.device))
        self.restored_from = str(Location(path))

    def init_from_parent(self, path: str | os.PathLike | Location) -> dict:
        """Few-shot NAS: start from a parent supernet's weights (its snapshot: a local path or a
        storage URI) with a fresh optimizer and version. Returns the parent's policy (spec and
        state) for the caller to continue it."""
        state = self._load_if_present(Location(path))
        if state is None:
            raise FileNotFoundError(f"init_from={str(Location(path))!r}: the parent supernet's snapshot does not exist "
                                    "(yet)")
        self.supernet.load_state_dict(state["supernet"])
        self.initialized_from = str(Location(path))
        return state["policy"]

    def _load_if_present(self, path: Location) -> dict | None:
        """The weights-only state in ``path`` on this device, or ``None`` when there is no such file
        (one read, no separate existence check: one request in an object store)."""
        try:
            return load_plain(path, map_location=self.device)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
