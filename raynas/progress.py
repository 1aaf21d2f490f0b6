"""Progress lines while a search runs: supernet steps, candidates scored, best so far."""

from __future__ import annotations

import sys
import time

from ray.tune import Callback

from raynas.rowlog import unpack


class Progress(Callback):
    """A Tune callback printing one short line per meaningful event (``verbose=0``: silent)."""

    def __init__(self, verbose: int = 1, total_steps: int | None = None) -> None:
        # no stream attribute: Tune pickles its callbacks with the run config
        self.verbose = verbose
        self.total_steps = total_steps
        self.scored = 0
        self.best: tuple[float, str] | None = None
        self.start = time.perf_counter()

    def _say(self, text: str) -> None:
        if self.verbose:
            print(f"[raynas {time.perf_counter() - self.start:6.0f}s] {text}", file=sys.stderr, flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        # a batch (a slice of a cohort) is one line at most, however many candidates it holds
        before = self.scored
        for row in unpack(result):
            self._row(row)
        if self.scored // 10 > before // 10 or (self.verbose >= 2 and self.scored > before):
            if result.get("kind") == "score":
                self._say(f"scored {self.scored} candidates; best so far {self.best[0]:.4f} {self.best[1]}")
            elif result.get("kind") == "proxy":
                self._say(f"round {result.get('round', '?')}: {self.scored} training-free proxy scores so far")

    def _row(self, result: dict) -> None:
        kind = result.get("kind")
        if kind == "train":
            total = f"/{self.total_steps}" if self.total_steps else ""
            self._say(
                f"supernet {result.get('supernet', 0)}: step {result.get('version')}{total}  "
                f"loss {result.get('train_loss', float('nan')):.3f}  "
                f"{result.get('samples_per_s', 0):.0f} img/s"
            )
        elif kind == "score":
            self.scored += 1
            acc = result.get("valid_acc", 0.0)
            if self.best is None or acc > self.best[0]:
                self.best = (acc, result.get("arch", "?"))
        elif kind == "proxy":
            self.scored += 1
        elif kind == "standalone":
            self._say(
                f"standalone {result.get('arch')}: epoch {result.get('epoch')}/{result.get('epochs')}  "
                f"valid acc {result.get('valid_acc', float('nan')):.4f}"
                + (f"  test acc {result['test_acc']:.4f}" if "test_acc" in result else "")
            )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._say(f"work unit {trial.config.get('unit')} ({trial.config.get('kind')}) failed; see {trial.path}")
