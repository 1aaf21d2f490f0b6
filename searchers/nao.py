"""Balanced one-shot NAO (Luo et al., "Balanced One-shot Neural Architecture Optimization", 2020),
adapted to NAS-Bench-201.

The official code (``NAO_pytorch/NAO_V2/train_search.py``) searches the NASNet-like space; raynas
runs the same loop on NB201 (METHODS.md, "Balanced NAO"):

1. pool = ``seed_archs`` distinct uniform archs;
2. train the supernet ``total_steps / iterations`` steps on the pool with the size-balanced
   policy (:class:`raynas.policies.BalancedPolicy`: each step's arch drawn with probability
   proportional to its parameter count, floored), the learning rate restarting its cosine every
   iteration (the supernet's ``lr_restarts`` must equal ``iterations``: the presets set both);
3. score the cumulative pool (every arch seen so far, ``rescore=True`` as the official code, or
   only the unscored ones), each arch on ``score_batches`` valid batches (the paper: one random
   batch of 500) with BN on batch statistics (the supernet's ``bn_mode="batch"``);
4. unless it was the last iteration: fit the encoder-predictor-decoder (EPD) on (arch tokens,
   min-max normalised score), ``epd_epochs`` epochs of Adam, loss ``trade_off * MSE + (1 -
   trade_off) * NLL``; from the ``top_archs`` best archs, move each encoder output ``h`` to
   ``h + lambda * df/dh`` for lambda = 1, 2, ... up to ``max_step_size`` and decode until
   ``new_archs`` unseen archs exist; they are the next pool (back to 2);
5. train the ``top_k`` best scored archs from scratch (briefly: the paper re-ranks its top 5 with
   10 epochs); the best standalone valid accuracy wins.

The EPD is fitted on the Tune driver's CPU in a background thread (one per fit, on one torch
thread): ``suggest`` starts it on a snapshot of its inputs and answers ``None`` (wait) at once
while it runs, so Tune's loop never waits on it (``paper``: 1,000 epochs on 1,000-1,900 archs
and their isomorphic copies, ~40 minutes per iteration on a loaded CPU core; ``small``:
seconds). The first ``suggest`` after it ends applies its result in Tune's thread (the new
pool, the EPD weights, ``history_``, the RNG) and issues the next iteration's first unit; the
search is the same as a fit inside ``suggest``. Until then the searcher's state is the one from
before the fit (the iteration's scoring done, nothing of the fit applied): a driver killed
mid-fit resumes by fitting again, identically. A fit that raises fails the search with one line
naming the iteration. All EPD randomness (init, split, shuffles, augmentation draws) comes from
a local torch Generator seeded from the searcher's RNG; the EPD's weights (as numpy arrays:
plain values) are searcher state and carry over from one iteration to the next, as the official
model does (a fresh Adam each fit).

Adaptation to NB201:
- Token sequence: the 6 edges in the benchmark's row order, token = op index + 1 (vocabulary 6;
  token 0 is the decoder's start symbol). The official sequence is 40 tokens of (input, op)
  pairs per node, and its encoder feeds each pair's two 32-wide embeddings as one 64-wide LSTM
  step; raynas feeds one 32-wide embedding per edge into an LSTM of hidden size 64.
- Decoding takes the arg-max over the ops the (sub-)space allows at each edge (the official one
  restricts each position to node indices or op tokens).
- "Symmetric inputs" augmentation: swapping the two inputs of a NASNet node is a true symmetry,
  but swapping edges of an NB201 cell is not in general. raynas adds, for each training arch, up to
  ``expand - 1`` distinct other archs with the same ``space.canonical_key`` (isomorphic cells that
  the benchmark counts as one) as extra (arch, score) pairs; archs with no isomorphic sibling get
  no copies (the official code adds ``expand - 1`` random swaps to every arch).

Deviations:
- Balanced sampling weighs archs by the parameter count of the benchmark's network (C=16, N=5,
  10 classes) with a floor (the smallest arch holding any parametric op: 101,306 on NB201; the
  official code has no floor, its NASNet archs always carry parameters); see
  :class:`raynas.policies.BalancedPolicy`.
- The learning rate restarts every iteration as in the official code, which builds a fresh
  ``CosineAnnealingLR(T_max=epochs per iteration, eta_min=lr_min)`` at the start of every
  iteration (``get_scheduler`` in ``train_search.py``; the optimizer, and with it the momentum,
  carries on). It steps per epoch, before each epoch, so an official iteration's first epoch
  already runs one step down the cosine and its last at ``lr_min``; raynas steps per optimizer step.
- If lambda reaches ``max_step_size`` with fewer than ``new_archs`` unseen archs, the rest are
  drawn uniformly from unseen archs (the official code goes on with a smaller pool), so a pool is
  never empty.
- Targets are min-max normalised over the scored pool; if all scores are equal they are all 0.5
  (the official division by zero gives NaN).
- The 10% hold-out only measures the predictor (pairwise accuracy, in ``history_``), as in the
  official code; it is not used for early stopping.
- Work is cut into units: training chunks of ``chunk_steps`` (``train/0/U``) and scoring cohorts
  of ``cohort_size`` (``score/iI/cJ``), each scored at the iteration's end version; a cohort that
  comes back short re-issues its missing archs. Each scored arch sees its own valid batches, fixed
  by its position in the iteration's scoring list after those of earlier iterations (the official
  code draws a fresh random batch per arch).
- The ``top_k`` picks compute distinct functions (algebraic canonical key): an isomorphic pick is
  skipped and the next distinct arch trains instead.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import threading
import time
import weakref
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raynas.checks import require_at_least_one
from raynas.searchers.base import SupernetSearcher

logger = logging.getLogger(__name__)

from raynas.searchers.presets import NAO_PRESETS as PRESETS  # defined Ray-free there (raynas.settings reads them)

INIT_RANGE = 0.04  # the official EPD's uniform init


# --- the encoder-predictor-decoder ----------------------------------------------------------------
class EncoderPredictorDecoder(nn.Module):
    """NAO's EPD on token sequences: token = op index + 1, 0 = start symbol.

    Encoder: embedding ``emb_size`` -> LSTM ``hidden_size``; outputs L2-normalised per position,
    mean-pooled and normalised again (the arch embedding). Predictor: Linear(hidden -> 1) +
    sigmoid on the embedding. Decoder: LSTM ``hidden_size`` started from (embedding, embedding),
    then the official ``Attention``: the decoder output ``out`` projected (``input_proj``, no
    bias) is dotted with the encoder outputs, softmax over positions, ``mix`` = the weighted
    encoder outputs, and ``tanh(output_proj([mix; out]))`` (no bias); log-softmax over tokens.
    """

    def __init__(self, num_ops: int, length: int, *, emb_size: int = 32, hidden_size: int = 64) -> None:
        super().__init__()
        self.num_ops, self.length, self.hidden_size = num_ops, length, hidden_size
        vocab = num_ops + 1
        self.embedding = nn.Embedding(vocab, emb_size)
        self.encoder = nn.LSTM(emb_size, hidden_size, batch_first=True)
        self.regressor = nn.Linear(hidden_size, 1)
        self.dec_embedding = nn.Embedding(vocab, hidden_size)
        self.decoder = nn.LSTM(hidden_size, hidden_size, batch_first=True)
        # the official Attention(hidden_size): both projections without bias
        self.attn_in = nn.Linear(hidden_size, hidden_size, bias=False)
        self.attn_out = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, vocab)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-position encoder outputs ``h`` (B, L, H), L2-normalised."""
        out, _ = self.encoder(self.embedding(tokens))
        return F.normalize(out, 2, dim=-1)

    @staticmethod
    def pool(h: torch.Tensor) -> torch.Tensor:
        return F.normalize(h.mean(dim=1), 2, dim=-1)

    def predict(self, h: torch.Tensor) -> torch.Tensor:
        """Predicted (normalised) score in (0, 1) from encoder outputs, shape (B,)."""
        return torch.sigmoid(self.regressor(self.pool(h))).squeeze(-1)

    def _attend(self, out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        attn = torch.softmax(torch.bmm(self.attn_in(out), h.transpose(1, 2)), dim=-1)
        mix = torch.bmm(attn, h)
        out = torch.tanh(self.attn_out(torch.cat((mix, out), dim=-1)))
        return F.log_softmax(self.out(out), dim=-1)

    def _init_state(self, h: torch.Tensor):
        emb = self.pool(h).unsqueeze(0).contiguous()
        return emb, emb

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced: (predicted score (B,), log-probabilities of ``tokens`` (B, L, vocab))."""
        h = self.encode(tokens)
        start = torch.zeros_like(tokens[:, :1])
        out, _ = self.decoder(self.dec_embedding(torch.cat((start, tokens[:, :-1]), dim=1)), self._init_state(h))
        return self.predict(h), self._attend(out, h)

    def decode(self, h: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy decoding from encoder outputs ``h``: op indices (B, L). ``allowed``: a (L, num_ops)
        bool mask of the ops each edge may take."""
        state = self._init_state(h)
        token = torch.zeros(h.shape[0], 1, dtype=torch.long)
        ops = []
        for t in range(self.length):
            out, state = self.decoder(self.dec_embedding(token), state)
            logp = self._attend(out, h)[:, 0, 1:]  # drop the start symbol
            if allowed is not None:
                logp = logp.masked_fill(~allowed[t], -torch.inf)
            op = logp.argmax(dim=-1)
            ops.append(op)
            token = (op + 1).unsqueeze(1)
        return torch.stack(ops, dim=1)


def build_epd(num_ops: int, length: int, generator: torch.Generator, **sizes) -> EncoderPredictorDecoder:
    """A fresh EPD, every weight uniform in +-0.04 (official init) from ``generator``. The global
    torch RNG ends as it was: torch's default init, overwritten at once, runs inside ``fork_rng``."""
    with torch.random.fork_rng(devices=[]):
        model = EncoderPredictorDecoder(num_ops, length, **sizes)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-INIT_RANGE, INIT_RANGE, generator=generator)
    return model


def arch_tokens(archs: Sequence) -> torch.Tensor:
    """(B, L) long tensor: op index + 1 per edge."""
    return torch.tensor([[o + 1 for o in a.ops] for a in archs], dtype=torch.long)


def minmax_normalise(values: Sequence[float]) -> np.ndarray:
    """``(v - min) / (max - min)``; all 0.5 when every value is equal."""
    v = np.asarray(values, dtype=np.float64)
    low, high = float(v.min()), float(v.max())
    if high <= low:
        return np.full_like(v, 0.5)
    return (v - low) / (high - low)


def pairwise_accuracy(targets: Sequence[float], predictions: Sequence[float]) -> float:
    """Fraction of pairs with distinct targets that the predictions order the same way."""
    t, p = np.asarray(targets, dtype=np.float64), np.asarray(predictions, dtype=np.float64)
    i, j = np.triu_indices(len(t), k=1)
    keep = t[i] != t[j]
    if not keep.any():
        return float("nan")
    return float(np.mean((t[i] > t[j])[keep] == (p[i] > p[j])[keep]))


def fit_epd(model: EncoderPredictorDecoder, tokens: torch.Tensor, targets: torch.Tensor, *, epochs: int,
            batch_size: int = 100, lr: float = 1e-3, grad_clip: float = 5.0, trade_off: float = 0.8,
            generator: torch.Generator, should_stop: Callable[[], bool] | None = None) -> dict:
    """Train the EPD (fresh Adam) on (tokens, targets in [0, 1]); returns the last epoch's mean losses.
    ``should_stop``: asked before every batch; once it says True the fit returns at once, part-way
    (the searcher's way to drop a background fit whose result nobody will read)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n = tokens.shape[0]
    log = {"loss": float("nan"), "mse": float("nan"), "nll": float("nan")}
    for _ in range(int(epochs)):
        order = torch.randperm(n, generator=generator)
        sums = np.zeros(3)
        for start in range(0, n, batch_size):
            if should_stop is not None and should_stop():
                return log
            idx = order[start:start + batch_size]
            x, y = tokens[idx], targets[idx]
            pred, logp = model(x)
            mse = F.mse_loss(pred, y)
            nll = F.nll_loss(logp.reshape(-1, logp.shape[-1]), x.reshape(-1))
            loss = trade_off * mse + (1 - trade_off) * nll
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            sums += np.array([loss.item(), mse.item(), nll.item()]) * len(idx)
        log = dict(zip(("loss", "mse", "nll"), (sums / n).tolist()))
    return log


def generate_archs(model: EncoderPredictorDecoder, space, sources: Sequence, *, count: int, exclude=(),
                   max_step_size: int = 50) -> tuple[list, dict]:
    """NAO's generation: move the sources' encoder outputs up the predictor's gradient,
    ``h + lambda * df/dh`` (then re-normalised), lambda = 1, 2, ..., ``max_step_size``, decoding
    each time, until ``count`` archs outside ``exclude`` (and distinct) are found.

    Returns (new archs, info: lambda reached, mean predicted score of the sources and of the moved
    embeddings at the last lambda)."""
    model.eval()
    tokens = arch_tokens(sources)
    allowed = torch.zeros(space.num_edges, space.num_ops, dtype=torch.bool)
    for e, ops in enumerate(space.allowed_ops):
        allowed[e, list(ops)] = True
    h = model.encode(tokens).detach().requires_grad_(True)
    before = model.predict(h)
    (grad,) = torch.autograd.grad(before.sum(), h)
    seen = set(exclude)
    new: list = []
    start = float(before.detach().mean())
    info = {"max_lambda": 0, "predicted_before": start, "predicted_after": start}
    with torch.no_grad():
        for lam in range(1, int(max_step_size) + 1):
            moved = F.normalize(h + lam * grad, 2, dim=-1)
            info.update(max_lambda=lam, predicted_after=float(model.predict(moved).mean()))
            for ops in model.decode(moved, allowed).tolist():
                arch = space.arch(ops)
                if arch not in seen:
                    seen.add(arch)
                    new.append(arch)
                    if len(new) >= count:
                        return new, info
    return new, info


_torch_threads_lock = threading.Lock()
_torch_threads_users = 0  # threads inside one_torch_thread now
_torch_threads_default = 1  # the count new threads start with, as it was before the first user came


@contextlib.contextmanager
def one_torch_thread():
    """Run the EPD on one CPU thread, restoring the previous setting after: the model is far too
    small to gain from threads (on a loaded 2-core machine 2 threads made a step 20x slower), and
    one thread makes its float results independent of the machine's core count.

    Safe in a background thread (the searcher fits there): ``torch.set_num_threads`` is
    process-wide in name, but on torch's OpenMP backend (Linux builds) it sets the *calling*
    thread's OpenMP team size, which every thread keeps for itself, plus the default a thread
    that has not run torch yet starts with. So the fit thread runs on one thread while the
    driver's thread keeps its own setting. The default is the one shared value: the first thread
    in records it and the last one out puts it back, so overlapping users (a dropped fit still
    winding down while the next starts) cannot leave it at 1. On a build with torch's native
    thread pool the setting is shared for real: the driver's own torch work (little, during a
    search: the actors train elsewhere) would then run on one thread while a fit runs."""
    global _torch_threads_users, _torch_threads_default
    with _torch_threads_lock:
        if _torch_threads_users == 0:
            _torch_threads_default = torch.get_num_threads()
        _torch_threads_users += 1
        previous = torch.get_num_threads()  # this thread's own
        torch.set_num_threads(1)
    try:
        yield
    finally:
        with _torch_threads_lock:
            _torch_threads_users -= 1
            torch.set_num_threads(_torch_threads_default if _torch_threads_users == 0 else previous)


_running_fits: "weakref.WeakSet[_BackgroundFit]" = weakref.WeakSet()
_exit_hook_lock = threading.Lock()
_exit_hook_registered = False


def _stop_running_fits(wait_s: float = 10.0) -> None:
    """At interpreter exit: ask the fits still running to stop and wait for them (they stop at
    their next batch). A daemon thread left inside torch while the interpreter tears down aborts
    the process ("terminate called without an active exception", SIGABRT)."""
    fits = list(_running_fits)
    for fit in fits:
        fit.cancel()
    deadline = time.monotonic() + wait_s
    for fit in fits:
        fit.join(max(0.0, deadline - time.monotonic()))


class _BackgroundFit:
    """One EPD fit running ``work(inputs, should_stop)`` in a daemon thread. ``inputs`` is a
    snapshot the searcher took in its own thread: the fit reads nothing else of the searcher's
    that changes, and writes nothing of it; the searcher's thread reads ``result`` (or ``error``)
    once :meth:`done`. Daemon: a driver interrupted mid-fit exits without waiting minutes for a
    result its resume recomputes anyway (an exit hook stops it at its next batch first). Never
    pickled (the searcher drops it)."""

    def __init__(self, iteration: int, work: Callable, inputs: dict) -> None:
        global _exit_hook_registered
        with _exit_hook_lock:
            if not _exit_hook_registered:
                atexit.register(_stop_running_fits)
                _exit_hook_registered = True
        self.iteration = iteration
        self.started = time.monotonic()
        self.result: dict | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(work, inputs), name=f"nao-epd-i{iteration}",
                                        daemon=True)
        _running_fits.add(self)
        self._thread.start()

    def _run(self, work: Callable, inputs: dict) -> None:
        try:
            self.result = work(inputs, self._stop.is_set)
        except BaseException as error:  # handed to the searcher's thread, which fails the search with it
            self.error = error
        finally:
            _running_fits.discard(self)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: until it ends); whether it has ended."""
        self._thread.join(timeout)
        return self.done()

    def cancel(self) -> None:
        """Ask the fit to stop at its next batch; its result will not be read."""
        self._stop.set()


# --- the searcher -----------------------------------------------------------------------------------
class NAOSearcher(SupernetSearcher):
    """Balanced one-shot NAO on NB201: balanced supernet training on a pool, supernet scores,
    EPD-generated pools, top-k standalone re-ranking. See the module docstring."""

    method = "nao"
    _state_keys = SupernetSearcher._state_keys + ("iteration_", "pool_", "archs_", "latest_", "score_offset_",
                                                  "epd_state_", "history_")

    def __init__(
        self,
        *,
        total_steps: int,
        iterations: int = 4,
        seed_archs: int = 1000,
        new_archs: int = 300,
        top_archs: int = 100,
        max_step_size: int = 50,
        chunk_steps: int = 500,
        cohort_size: int = 100,
        score_batches: int | None = 1,
        rescore: bool = True,
        size_floor: float | None = None,
        top_k: int = 5,
        standalone: dict | None = None,
        epd_epochs: int = 1000,
        epd_batch_size: int = 100,
        epd_lr: float = 1e-3,
        epd_grad_clip: float = 5.0,
        trade_off: float = 0.8,
        valid_fraction: float = 0.1,
        expand: int = 10,
        emb_size: int = 32,
        hidden_size: int = 64,
        space: str = "nb201",
        seed: int = 0,
        max_concurrent: int = 4,
    ) -> None:
        super().__init__(standalone=standalone, space=space, seed=seed, max_concurrent=max_concurrent)
        require_at_least_one(total_steps=total_steps, iterations=iterations, seed_archs=seed_archs, new_archs=new_archs,
                             top_archs=top_archs, max_step_size=max_step_size, chunk_steps=chunk_steps,
                             cohort_size=cohort_size, top_k=top_k, epd_batch_size=epd_batch_size, expand=expand,
                             emb_size=emb_size, hidden_size=hidden_size)
        if int(epd_epochs) < 0:
            raise ValueError(f"epd_epochs={epd_epochs!r}; must be >= 0")
        if int(total_steps) < int(iterations):
            raise ValueError(f"total_steps={total_steps!r} < iterations={iterations!r}; each iteration needs a step")
        if top_k > seed_archs:
            raise ValueError(f"top_k={top_k} > seed_archs={seed_archs}; must be <= seed_archs")
        if not 0.0 <= trade_off <= 1.0:
            raise ValueError(f"trade_off={trade_off!r}; must be in [0, 1]")
        if not 0.0 <= valid_fraction < 1.0:
            raise ValueError(f"valid_fraction={valid_fraction!r}; must be in [0, 1)")
        if score_batches is not None and int(score_batches) < 1:
            raise ValueError(f"score_batches={score_batches!r}; must be >= 1, or None for the whole valid split")
        room = len(self.space_) - int(seed_archs) - (int(iterations) - 1) * int(new_archs)
        if room < 0:
            raise ValueError(f"seed_archs={seed_archs} + (iterations - 1) * new_archs={new_archs} exceeds the "
                             f"space's {len(self.space_)} archs; must fit in it")
        self.total_steps = int(total_steps)
        self.iterations = int(iterations)
        self.seed_archs = int(seed_archs)
        self.new_archs = int(new_archs)
        self.top_archs = int(top_archs)
        self.max_step_size = int(max_step_size)
        self.chunk_steps = int(chunk_steps)
        self.cohort_size = int(cohort_size)
        self.score_batches = score_batches
        self.rescore = bool(rescore)
        self.size_floor = size_floor
        self.top_k = int(top_k)
        self.epd_epochs = int(epd_epochs)
        self.epd_batch_size = int(epd_batch_size)
        self.epd_lr = float(epd_lr)
        self.epd_grad_clip = float(epd_grad_clip)
        self.trade_off = float(trade_off)
        self.valid_fraction = float(valid_fraction)
        self.expand = int(expand)
        self.emb_size = int(emb_size)
        self.hidden_size = int(hidden_size)
        self.iteration_ = 0
        self.pool_ = [str(a) for a in self.sample_distinct(self.seed_archs)]
        #: every arch of every pool so far, in the order they joined (the cumulative pool)
        self.archs_ = list(self.pool_)
        #: arch -> its latest supernet score (``scores_``: this iteration's)
        self.latest_: dict[str, float] = {}
        #: archs scored in earlier iterations: where this iteration's valid batches start
        self.score_offset_ = 0
        #: the EPD's weights as numpy arrays (plain state), carried from one iteration to the next
        self.epd_state_: dict[str, np.ndarray] | None = None
        #: per fitted iteration: EPD losses, hold-out pairwise accuracy, generation counts
        self.history_: list[dict] = []
        self._iso_groups: dict | None = None  # canonical key -> archs (derived from the space; not state)
        # --- the session's, not state (never saved, dropped when pickled) -------------------
        #: the EPD fit running in the background (None: none); its result is applied in suggest
        self._fit: _BackgroundFit | None = None
        #: False: fit inside suggest, Tune's loop waiting (a private switch for tests comparing the two)
        self._fit_in_background = True

    def __getstate__(self) -> dict:
        # a running fit (a thread) is the session's: a pickled searcher has none, and fits again
        return {**super().__getstate__(), "_fit": None}

    def set_state(self, state: dict) -> None:
        """As the base's; a fit running in this session is dropped (its result never applied):
        the restored state is from before any fit it holds, which the next ``suggest`` starts."""
        self._drop_fit()
        super().set_state(state)

    def halt(self, reason: str) -> None:
        super().halt(reason)
        self._drop_fit()  # nothing more is issued this session: its result would never be used

    def _drop_fit(self) -> None:
        if self._fit is not None:
            self._fit.cancel()
            self._fit = None

    @property
    def fitting(self) -> bool:
        """Whether an EPD fit is under way: running in the background, or ended with its result
        not applied yet (the next ``suggest`` applies it)."""
        return self._fit is not None

    def wait_for_fit(self, timeout: float | None = None) -> bool:
        """Block until the running EPD fit (if any) ends, at most ``timeout`` seconds; whether
        none runs now. For callers that drive ``suggest`` themselves and must not spin (tests);
        Tune just asks again."""
        return self._fit is None or self._fit.join(timeout)

    # --- the loop ---------------------------------------------------------------------------------
    def iteration_end(self, iteration: int) -> int:
        """The supernet version at which ``iteration`` ends (the lr restarts' cycle boundaries)."""
        return -(-(iteration + 1) * self.total_steps // self.iterations)

    def policy_spec(self) -> dict:
        spec = {"name": "balanced", "archs": list(self.pool_)}
        if self.size_floor is not None:
            spec["floor"] = self.size_floor
        return spec

    def _next_unit(self):
        if self.phase_ == "train":
            end = self.iteration_end(self.iteration_)
            if self.trained_[0] < end:
                return self._train_unit(0, min(self.trained_[0] + self.chunk_steps, end), self.policy_spec())
            self.phase_ = "score"
            to_score = list(self.archs_) if self.rescore else [a for a in self.archs_ if a not in self.latest_]
            self._start_round(self._make_cohorts(to_score, key=f"score/i{self.iteration_}", batches=self.score_batches,
                                                 cohort_size=self.cohort_size, first=self.score_offset_))
        if self.phase_ == "score":
            unit = self._next_cohort()
            if unit is not None:
                return unit
            if not self._round_scored():
                return None
            if self.iteration_ + 1 < self.iterations:
                # the scoring round stays as it is until the fit's result is applied, so the
                # state saved meanwhile is the one from before the fit
                result = self._fit_result()
                if result is None:
                    return None
                self._apply_fit(result)
                return self._next_unit()
            self.latest_.update(self.scores_)
            self.score_offset_ += len(self._round_archs())
            ranked = sorted(self.archs_, key=lambda a: self.latest_[a], reverse=True)
            self.picks_ = self.distinct_functions(ranked, self.top_k)
            self.phase_ = "standalone"
        if self.phase_ == "standalone":
            return self._final_units(self.picks_)
        return None

    def _progress(self) -> str:
        if self.fitting:
            return (f"iteration {self.iteration_ + 1}/{self.iterations}, fitting the predictor "
                    f"({time.monotonic() - self._fit.started:.0f} s so far)")
        line = super()._progress()
        if self.phase_ in ("train", "score"):
            return f"iteration {self.iteration_ + 1}/{self.iterations}, {line}"
        return line

    # --- the fit, off Tune's loop -----------------------------------------------------------------
    def _fit_result(self) -> dict | None:
        """The EPD fit's result for this iteration once it is there; else ``None`` (wait), starting
        the fit if none runs (in the background, or at once without ``_fit_in_background``)."""
        if self._fit is not None and self._fit.iteration != self.iteration_:
            self._drop_fit()  # not this iteration's (cannot happen through suggest; never apply it)
        if self._fit is None:
            if not self._fit_in_background:
                return self._run_fit(self._fit_inputs())
            self._fit = _BackgroundFit(self.iteration_, self._run_fit, self._fit_inputs())
        if not self._fit.done():
            return None
        fit, self._fit = self._fit, None
        if fit.error is not None:
            logger.error("nao: the EPD fit of iteration %d raised", fit.iteration + 1,
                         exc_info=(type(fit.error), fit.error, fit.error.__traceback__))
            self._fail(f"nao iteration {fit.iteration + 1}/{self.iterations}: fitting the predictor failed: "
                       f"{type(fit.error).__name__}: {fit.error}")
            return None
        return fit.result

    def _fit_inputs(self) -> dict:
        """A snapshot of everything the fit reads that the searcher may change: the cumulative pool
        with its latest scores (this round's included), the EPD weights, a copy of the RNG (the fit
        draws the torch seed and the fill-up archs from it; the searcher's advances only when the
        result is applied) and the isomorphism groups if known."""
        latest = {**self.latest_, **self.scores_}
        return {"iteration": self.iteration_, "archs": list(self.archs_), "scores": [latest[a] for a in self.archs_],
                "epd_state": None if self.epd_state_ is None else dict(self.epd_state_),
                "rng": copy.deepcopy(self.rng_), "iso_groups": self._iso_groups}

    def _run_fit(self, inputs: dict, should_stop: Callable[[], bool] | None = None) -> dict | None:
        with one_torch_thread():
            return self._epd_iteration(inputs, should_stop)

    def _apply_fit(self, result: dict) -> None:
        """The fit's result becomes the search's, in the searcher's own thread: the round's scores
        join ``latest_``, the new pool joins ``archs_``, the RNG moves on as the fit moved its copy."""
        self.latest_.update(self.scores_)
        self.score_offset_ += len(self._round_archs())
        if self._iso_groups is None:
            self._iso_groups = result["iso_groups"]
        self.epd_state_ = result["epd_state"]
        self.history_.append(result["entry"])
        logger.info("nao iteration %d: %s", self.iteration_, result["entry"])
        self.pool_ = list(result["pool"])
        self.archs_.extend(self.pool_)
        self.rng_.bit_generator.state = result["rng_state"]
        self.iteration_ += 1
        self.phase_ = "train"

    # --- the EPD ----------------------------------------------------------------------------------
    def _isomorphic(self, arch, groups: dict | None = None) -> list:
        """Other archs of the space with the same canonical key, from ``groups`` (canonical key ->
        archs) or the searcher's own (the space is enumerated once)."""
        if groups is None:
            if self._iso_groups is None:
                self._iso_groups = isomorphism_groups(self.space_)
            groups = self._iso_groups
        return [a for a in groups.get(self.space_.canonical_key(arch), []) if a != arch]

    def _training_pairs(self, archs: list, targets: np.ndarray, order: list[int], g: torch.Generator,
                        groups: dict | None = None):
        """The 90% training split plus up to ``expand - 1`` isomorphic copies of each of its archs."""
        x, y = [], []
        for i in order:
            x.append(archs[i])
            y.append(targets[i])
            if self.expand > 1:
                siblings = self._isomorphic(archs[i], groups)
                if siblings:
                    picks = torch.randperm(len(siblings), generator=g)[: self.expand - 1].tolist()
                    x.extend(siblings[k] for k in picks)
                    y.extend([targets[i]] * len(picks))
        return arch_tokens(x), torch.tensor(np.asarray(y), dtype=torch.float32)

    def _epd_iteration(self, inputs: dict, should_stop: Callable[[], bool] | None = None) -> dict | None:
        """Fit the EPD on the snapshot ``inputs`` (:meth:`_fit_inputs`) and generate the next pool.
        Reads the searcher's settings and space only and writes nothing of it (it may run in a
        background thread): returns the EPD weights, the history entry, the new pool, the RNG
        copy's state and the isomorphism groups; ``None`` once ``should_stop`` said stop."""
        space = self.space_
        rng = inputs["rng"]
        groups = inputs["iso_groups"]
        if groups is None and self.expand > 1:
            groups = isomorphism_groups(space)
        archs = [space.parse(a) for a in inputs["archs"]]
        latest = dict(zip(inputs["archs"], inputs["scores"]))
        targets = minmax_normalise(inputs["scores"])
        g = torch.Generator().manual_seed(int(rng.integers(2**62)))
        model = build_epd(space.num_ops, space.num_edges, g, emb_size=self.emb_size, hidden_size=self.hidden_size)
        epd_state = inputs["epd_state"]
        if epd_state is not None:
            if set(epd_state) != set(model.state_dict()):
                raise ValueError("nao: the saved EPD weights are of another layout (a raynas before the decoder "
                                 "attention's input projection); start this search anew")
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in epd_state.items()})
        perm = torch.randperm(len(archs), generator=g).tolist()
        n_valid = int(len(archs) * self.valid_fraction)
        train_idx, valid_idx = perm[: len(archs) - n_valid], perm[len(archs) - n_valid:]
        tokens, y = self._training_pairs(archs, targets, train_idx, g, groups or {})
        log = fit_epd(model, tokens, y, epochs=self.epd_epochs, batch_size=self.epd_batch_size, lr=self.epd_lr,
                      grad_clip=self.epd_grad_clip, trade_off=self.trade_off, generator=g, should_stop=should_stop)
        if should_stop is not None and should_stop():
            return None
        model.eval()
        if len(valid_idx) >= 2:
            with torch.no_grad():
                pred = model.predict(model.encode(arch_tokens([archs[i] for i in valid_idx]))).tolist()
            log["valid_pairwise_acc"] = pairwise_accuracy([targets[i] for i in valid_idx], pred)
        new_state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}

        ranked = sorted(inputs["archs"], key=lambda a: latest[a], reverse=True)[: self.top_archs]
        new, info = generate_archs(model, space, [space.parse(a) for a in ranked], count=self.new_archs,
                                   exclude=archs, max_step_size=self.max_step_size)
        generated = len(new)
        seen = set(archs) | set(new)
        while len(new) < self.new_archs:  # lambda ran out: fill with uniform unseen archs
            arch = space.sample(rng)
            if arch not in seen:
                seen.add(arch)
                new.append(arch)
        entry = {"iteration": inputs["iteration"], "pool": len(archs), "train_pairs": int(tokens.shape[0]),
                 **log, **info, "generated": generated, "filled": len(new) - generated}
        return {"epd_state": new_state, "entry": entry, "pool": [str(a) for a in new],
                "rng_state": rng.bit_generator.state, "iso_groups": groups if self.expand > 1 else None}


def isomorphism_groups(space) -> dict:
    """Canonical key -> the space's archs with that key (empty for a space too large to enumerate)."""
    groups: dict = {}
    if len(space) <= 100_000:
        for a in space.enumerate():
            groups.setdefault(space.canonical_key(a), []).append(a)
    return groups
