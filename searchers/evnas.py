"""EvNAS: evolving neural architecture search with a one-shot supernet (Sinha & Chen, 2020),
on NAS-Bench-201 as the official code (``train_searchNAS201.py``, ``gaNAS201.py``) runs it.

An individual is a real ``(6, 5)`` chromosome drawn from U[0, 1). Its arch is the per-edge argmax;
the supernet runs it *decoded*: the one-hot of the argmax through a softmax, so the chosen op
weighs e/(e+4) ~ 0.405 and each other op 1/(e+4) ~ 0.149, and every op runs
(:func:`raynas.policies.decoded_weights`). One generation:

1. train the shared supernet for one epoch, batch ``s`` of the generation on individual ``s mod P``
   (the population inherits the weights of all earlier generations): a ``train`` unit under the
   ``"evnas"`` policy (:class:`raynas.policies.EvNASPolicy`, run inside the actor);
2. fitness: the top-1 accuracy of each decoded individual on the whole valid split in eval mode
   (``score_batches=None``; a number of batches is allowed): a ``score`` unit with
   ``path_mode="decoded"``, a barrier before evolving;
3. evolve: sort by fitness; keep ``num_elites`` (1) unchanged; each child crosses the winners of two
   tournaments of ``tournament_size`` (10) drawn without replacement, taking each edge row from
   either parent with probability 1/2; each non-elite's edge rows are redrawn from U[0, 1)^5 with
   probability ``mutation_rate`` (0.1).

After the last generation the fittest individual's argmax arch is trained standalone (role
``"final"``); that is the result.

Deviations:
- Fitness is computed once per *distinct* arch of a generation, not once per individual: two
  individuals with the same argmax decode to the same weights, and raynas reads the valid split
  in a fixed order, so scoring both would give equal fitness at twice the cost (in the official
  loop, which reshuffles the split per individual, their fitness differed only by batch noise).
- An arch whose supernet score was ever non-finite (a broken unit) gets fitness 0 in every later
  generation too and is not picked as the final arch unless no other arch was ever scored.
- A generation trains ``total_steps / generations`` steps (boundaries rounded down), so a preset
  may give a generation several epochs; the paper preset gives exactly one epoch (50 and 50).
- The learning rate follows the cosine per step (the official scheduler steps per epoch).
- On a sub-space (few-shot style ``allowed_ops``) the softmax runs over the edge's allowed ops only.
- The official ``--cutout`` flag passes ``cutout=True`` (length 1, so ``length // 2 == 0``) and the
  cutout mask is empty: cutout is silently off there. raynas has no cutout, which matches what the
  official search actually ran.
- The whole valid split is read in a fixed order (the official loader reshuffles it for every
  individual). With the presets' running-statistics BN (``bn_mode="running"``: the official
  launcher ``searchNAS201.sh`` passes ``--track_running_stats`` on all three runs) eval-mode
  fitness does not depend on the order; only ``bn_mode="batch"`` makes the batch composition move
  accuracies slightly.
- Work is cut into units: per generation one ``train`` unit (``train/0/U``) and one ``score``
  cohort (``score/gG``) addressed by the generation's end version, so a resumed search scores each
  generation at the same version as an uninterrupted one; a cohort that comes back short
  re-issues its missing archs (``score/gG/restN``).
"""

from __future__ import annotations

import math

import numpy as np

from raynas.checks import require_at_least_one
# the policy runs inside the actor, so it lives with the actor side (Ray-free); re-exported here
from raynas.policies import EvNASPolicy, decoded_weights
from raynas.searchers.base import SupernetSearcher

from raynas.searchers.presets import EVNAS_PRESETS as PRESETS  # defined Ray-free there (raynas.settings reads them)


# --- the genetic operators (pure functions of numpy arrays and a Generator) -----------------------
def tournament(fitness: np.ndarray, size: int, rng: np.random.Generator) -> int:
    """Index of the fittest of ``size`` individuals drawn without replacement (ties: first drawn)."""
    drawn = rng.choice(len(fitness), size=size, replace=False)
    return int(drawn[int(np.argmax(fitness[drawn]))])


def crossover(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform crossover per edge row: each row of the child is ``a``'s or ``b``'s with probability 1/2."""
    take_a = rng.random(a.shape[0]) >= 0.5
    return np.where(take_a[:, None], a, b)


def mutate(chromosome: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each edge row redrawn from U[0, 1) with probability ``rate`` (a new array)."""
    redraw = rng.random(chromosome.shape[0]) < rate
    fresh = rng.random(chromosome.shape)
    return np.where(redraw[:, None], fresh, chromosome)


def evolve(population: np.ndarray, fitness: np.ndarray, *, num_elites: int, tournament_size: int,
           mutation_rate: float, rng: np.random.Generator) -> np.ndarray:
    """The next population: the ``num_elites`` fittest unchanged (first, best first), then children
    of two tournament winners, crossed over and mutated (``gaNAS201.GeneticAlgorithm.evolve``)."""
    order = np.argsort(-np.asarray(fitness, dtype=np.float64), kind="stable")
    ranked, fit = population[order], np.asarray(fitness, dtype=np.float64)[order]
    children = [ranked[i] for i in range(num_elites)]
    while len(children) < len(population):
        a = ranked[tournament(fit, tournament_size, rng)]
        b = ranked[tournament(fit, tournament_size, rng)]
        children.append(mutate(crossover(a, b, rng), mutation_rate, rng))
    return np.stack(children)


# --- the searcher ---------------------------------------------------------------------------------
class EvNASSearcher(SupernetSearcher):
    """Evolves a population of chromosomes on a shared supernet; the fittest is trained standalone."""

    method = "evnas"
    _state_keys = SupernetSearcher._state_keys + ("population_", "generation_", "diverged_", "history_",
                                                  "final_arch_")

    def __init__(
        self,
        *,
        total_steps: int,
        population_size: int = 50,
        generations: int = 50,
        tournament_size: int = 10,
        num_elites: int = 1,
        mutation_rate: float = 0.1,
        score_batches: int | None = None,
        standalone: dict | None = None,
        supernet: int = 0,
        space: str = "nb201",
        seed: int = 0,
        max_concurrent: int = 4,
    ) -> None:
        super().__init__(standalone=standalone, space=space, seed=seed, max_concurrent=max_concurrent)
        require_at_least_one(total_steps=total_steps, population_size=population_size, generations=generations,
                             tournament_size=tournament_size)
        if tournament_size > population_size:
            raise ValueError(f"tournament_size={tournament_size} > population_size={population_size}; "
                             "must be <= population_size (tournaments draw without replacement)")
        if not 0 <= int(num_elites) < population_size:
            raise ValueError(f"num_elites={num_elites!r}; must be in 0..population_size-1={population_size - 1}")
        if not 0.0 <= float(mutation_rate) <= 1.0:
            raise ValueError(f"mutation_rate={mutation_rate!r}; must be in [0, 1]")
        if int(total_steps) < int(generations):
            raise ValueError(f"total_steps={total_steps} < generations={generations}; each generation trains "
                             "at least one step (raise the supernet's epochs or lower generations)")
        if score_batches is not None and int(score_batches) < 1:
            raise ValueError(f"score_batches={score_batches!r}; must be >= 1, or None for the whole valid split")
        self.total_steps = int(total_steps)
        self.population_size = int(population_size)
        self.generations = int(generations)
        self.tournament_size = int(tournament_size)
        self.num_elites = int(num_elites)
        self.mutation_rate = float(mutation_rate)
        self.score_batches = score_batches
        self.supernet = supernet
        self.trained_ = {self.supernet: 0}
        shape = (self.population_size, self.space_.num_edges, self.space_.num_ops)
        self.population_: np.ndarray = self.rng_.random(shape)
        self.generation_ = 0
        self.diverged_: set[str] = set()
        #: per generation: {"generation", "archs" (population order), "fitness"}
        self.history_: list[dict] = []
        self.final_arch_: str | None = None

    # --- helpers --------------------------------------------------------------------------
    def archs(self, population: np.ndarray | None = None) -> list[str]:
        """The argmax arch (string) of each individual, in population order."""
        population = self.population_ if population is None else population
        return [str(self.space_.decode(c)) for c in population]

    def _boundary(self, generation: int) -> int:
        return generation * self.total_steps // self.generations

    # --- the loop -------------------------------------------------------------------------
    def _next_unit(self):
        if self.phase_ == "train":
            start, until = self._boundary(self.generation_), self._boundary(self.generation_ + 1)
            if self.trained_[self.supernet] < until:
                if self._pending():
                    return None  # every phase is a barrier: training, fitness, evolving are sequential
                return self._train_unit(self.supernet, until,
                                        {"name": "evnas", "archs": self.archs(), "start": start})
            if self._pending():
                return None
            self.phase_ = "score"
            # each distinct arch once, on the whole valid split (or from batch 0): one cohort per generation
            self._start_round(self._make_cohorts(list(dict.fromkeys(self.archs())), key=f"score/g{self.generation_}",
                                                 supernet=self.supernet, batches=self.score_batches,
                                                 path_mode="decoded"))
        if self.phase_ == "score":
            unit = self._next_cohort()
            if unit is not None:
                return unit
            if not self._round_scored():
                return None  # a barrier (a short cohort's missing archs come back through the base)
            self._end_generation()
            return self._next_unit()  # the next generation's training, or the final standalone
        if self.phase_ == "standalone":
            return self._final_units(self.picks_)
        return None

    def _end_generation(self) -> None:
        archs = self.archs()
        fitness = np.array([0.0 if a in self.diverged_ else self.scores_[a] for a in archs])
        self.history_.append({"generation": self.generation_, "archs": archs, "fitness": fitness.tolist()})
        if self.generation_ + 1 < self.generations:
            self.population_ = evolve(self.population_, fitness, num_elites=self.num_elites,
                                      tournament_size=self.tournament_size, mutation_rate=self.mutation_rate,
                                      rng=self.rng_)
            self.generation_ += 1
            self.phase_ = "train"
            return
        self.final_arch_ = self._pick_final(archs, fitness)
        self.picks_ = [self.final_arch_]
        self.phase_ = "standalone"

    def _pick_final(self, archs: list[str], fitness: np.ndarray) -> str:
        healthy = [i for i, a in enumerate(archs) if a not in self.diverged_]
        if healthy:
            return archs[max(healthy, key=lambda i: fitness[i])]
        # every individual of the last generation once scored non-finite: the best healthy arch
        # of any generation (by its latest fitness), else the last generation's first
        latest = {a: f for g in self.history_ for a, f in zip(g["archs"], g["fitness"]) if a not in self.diverged_}
        return max(latest, key=latest.get) if latest else archs[0]

    # --- results --------------------------------------------------------------------------
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        unit = self.live_.get(trial_id)
        value = result.get("valid_acc")
        if unit is not None and unit["kind"] == "score" and "arch" in result:
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                self.diverged_.add(result["arch"])
        super().on_trial_result(trial_id, result)

    @property
    def best_arch(self) -> str | None:
        """The final arch (the last generation's fittest), once the generations are done."""
        return self.final_arch_

    def _progress(self) -> str:
        line = super()._progress()
        if self.phase_ in ("train", "score"):
            return f"generation {self.generation_ + 1}/{self.generations}, {line}"
        return line

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(population_size={self.population_size}, generations={self.generations}, "
                f"tournament_size={self.tournament_size}, seed={self.seed!r})")


__all__ = ["PRESETS", "EvNASPolicy", "EvNASSearcher", "crossover", "decoded_weights", "evolve", "mutate",
           "tournament"]
