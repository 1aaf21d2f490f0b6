"""Every method's presets, Ray-free and torch-free: method -> preset name -> ``{"supernet": {...},
"searcher": {...}, "resources": {...}}`` (each section optional).

Read by :func:`raynas.searchers.get_presets` and :func:`raynas.settings.make_config` without
importing the searcher modules (``ray.tune``, torch); each searcher module re-exports its own
(``raynas.searchers.rsps.PRESETS`` is :data:`RSPS_PRESETS`). The searcher sections must pass the
declared checks of :mod:`raynas.searchers.arguments` (tests/test_searcher_arguments.py).

Off-path weights (``supernet.offpath``): every preset trains with the settings' default ``"decay"``
(weight decay and momentum move the weights of the ops off a step's path, as the official
PyTorch 1.x code did); the ``paper`` presets also state it, so a changed default cannot change them.
``small`` follows ``paper`` rather than PyTorch's current ``zero_grad``: a small run is the paper's
protocol scaled down. ``--set supernet.offpath=frozen`` leaves off-path weights untouched.
"""

from __future__ import annotations

# --- rsps (rsps.py) ----------------------------------------------------------------------
RSPS_PRESETS = {
    # finishes on 2 CPU cores in a few minutes on digits (the README's main job)
    "small": {
        "supernet": dict(C=8, N=1, batch_size=64, valid_batch_size=128, epochs=30, lr=0.025, lr_min=0.001,
                         weight_decay=5e-4, grad_clip=5.0),
        "searcher": dict(chunk_steps=160, num_candidates=30, cohort_size=30, score_batches=1, top_k=2,
                         standalone=dict(C=8, N=1, epochs=15, batch_size=64)),
    },
    # ranking runs against truth/fashion-mnist16.parquet (same data and network: run it with
    # --dataset fashion-mnist --data-option resolution=16 --data-option train_size=6000 and
    # --candidates TRUTH): 30 epochs of 93 steps, every candidate on the whole valid split
    "rank": {
        "supernet": dict(C=8, N=1, batch_size=64, valid_batch_size=500, epochs=30, lr=0.025, lr_min=0.001,
                         weight_decay=5e-4, grad_clip=5.0),
        # cohorts of 250: each candidate is scored on the whole split, so a cohort's size changes
        # no score, and a unit per 250 candidates keeps Tune's per-unit cost out of the way
        # (the whole NB201 space is 63 units)
        "searcher": dict(chunk_steps=470, num_candidates=None, cohort_size=250, score_batches=None, top_k=0),
    },
    # the benchmark's settings (SETN paper's RSPS): 250 epochs, batch 64, 100 candidates on one batch of 512;
    # off-path weights decay and keep their momentum every step, as in the official PyTorch 1.x loop
    "paper": {
        "supernet": dict(C=16, N=5, batch_size=64, valid_batch_size=512, epochs=250, lr=0.025, lr_min=0.001,
                         weight_decay=5e-4, grad_clip=5.0, offpath="decay"),
        "searcher": dict(chunk_steps=500, num_candidates=100, cohort_size=100, score_batches=1, top_k=1,
                         standalone=dict(C=16, N=5, epochs=200, batch_size=256)),
    },
    # the official few-shot NAS protocol (few-shot-NAS code, NB201, METHODS.md): the one-shot
    # supernet 600 epochs (each cell its own path), then each of the 5 sub-supernets (split on edge
    # 1<-0) 300 more from it; batch 48, SGD 0.025 cosine to 0.001 Nesterov, wd 1e-4, no clip, BN on
    # batch statistics; supernets on the whole train set, every arch of the space scored on the
    # whole test split (the Kendall-tau protocol); the best one trained standalone as the benchmark
    # does (200 epochs on the whole train set, seeds 777/888/999: its headline numbers)
    "few-shot-paper": {
        "supernet": dict(C=16, N=5, bn_mode="batch", batch_size=48, valid_batch_size=512, epochs=600, lr=0.025,
                         lr_min=0.001, momentum=0.9, nesterov=True, weight_decay=1e-4, grad_clip=None,
                         train_split="train+valid", score_split="test", offpath="decay"),
        "searcher": dict(policy="per_cell", few_shot="1<-0", sub_supernet_budget=0.5, few_shot_variant="continue",
                         chunk_steps=500, num_candidates=15625, cohort_size=625, score_batches=None, top_k=1,
                         standalone=dict(C=16, N=5, epochs=200, batch_size=256, seeds=[777, 888, 999],
                                         train_split="train+valid")),
    },
}

# --- random (random_search.py) -----------------------------------------------------------
RANDOM_PRESETS = {
    "small": {"searcher": dict(num_samples=4, standalone=dict(C=8, N=1, epochs=15, batch_size=64))},
    "paper": {"searcher": dict(num_samples=100, standalone=dict(C=16, N=5, epochs=200, batch_size=256))},
}

# --- tenas (tenas.py) --------------------------------------------------------------------
TENAS_PRESETS = {
    # digits on 2 CPU cores in a few minutes: smaller NTK batch, 2 repeats, fewer crops
    "small": {"searcher": dict(ntk_batch=16, repeats=2, region_samples=500, region_batches=2,
                               standalone=dict(C=8, N=1, epochs=15, batch_size=64))},
    # the official launcher's settings: batch 72, 3 repeats, 3 x 1000 crops, precision 3; PyTorch's default
    # init (what the official code ran: its init names match nothing), behind the paper's 93.9
    "paper": {"searcher": dict(ntk_batch=72, repeats=3, region_samples=1000, region_batches=3, init="default",
                               standalone=dict(C=16, N=5, epochs=200, batch_size=256))},
}

# --- evnas (evnas.py) --------------------------------------------------------------------
EVNAS_PRESETS = {
    # digits on 2 CPU cores in a few minutes: 10 generations of 2 epochs (16 steps each), 8 individuals;
    # running-statistics BN as the official launcher (the method's own setting, not a cost saving)
    "small": {
        "supernet": dict(C=8, N=1, batch_size=64, valid_batch_size=512, epochs=20, lr=0.025, lr_min=0.001,
                         weight_decay=3e-4, grad_clip=5.0, bn_mode="running"),
        "searcher": dict(population_size=8, generations=10, tournament_size=3, num_elites=1, mutation_rate=0.1,
                         score_batches=None, standalone=dict(C=8, N=1, epochs=15, batch_size=64)),
    },
    # the official NB201 script: 50 generations = 50 epochs, population 50, tournaments of 10; its launcher
    # (searchNAS201.sh) passes --track_running_stats on all three runs: cell BNs keep running statistics
    "paper": {
        "supernet": dict(C=16, N=5, batch_size=64, valid_batch_size=1024, epochs=50, lr=0.025, lr_min=0.001,
                         weight_decay=3e-4, grad_clip=5.0, bn_mode="running", offpath="decay"),
        "searcher": dict(population_size=50, generations=50, tournament_size=10, num_elites=1, mutation_rate=0.1,
                         score_batches=None, standalone=dict(C=16, N=5, epochs=200, batch_size=256)),
    },
}

# --- setn (setn.py) ----------------------------------------------------------------------
SETN_PRESETS = {
    # finishes on 2 CPU cores in a few minutes on digits; the supernet schedule is RSPS's small one, so
    # the two compare side by side (a SETN step costs ~3x: the alpha step's joint forward runs every op)
    "small": {
        "supernet": dict(C=8, N=1, batch_size=64, valid_batch_size=128, epochs=30, lr=0.025, lr_min=0.001,
                         weight_decay=5e-4, grad_clip=None),
        "searcher": dict(chunk_steps=160, num_candidates=30, cohort_size=30, score_batches=1, top_k=2,
                         standalone=dict(C=8, N=1, epochs=15, batch_size=64)),
    },
    # the paper's settings: 250 epochs (NATS-Bench's rerun: 100), batch 64, template top-100 scored on
    # one valid batch of 512 each, the best one trained standalone
    "paper": {
        "supernet": dict(C=16, N=5, batch_size=64, valid_batch_size=512, epochs=250, lr=0.025, lr_min=0.001,
                         momentum=0.9, nesterov=True, weight_decay=5e-4, grad_clip=None, offpath="decay"),
        "searcher": dict(chunk_steps=500, num_candidates=100, cohort_size=100, score_batches=1, top_k=1,
                         arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3, arch_eps=1e-8,
                         standalone=dict(C=16, N=5, epochs=200, batch_size=256)),
    },
    # the official few-shot SETN (METHODS.md): 5 independent SETN searches from scratch, one per
    # sub-supernet of the split on edge 1<-0, 300 epochs each at batch 48; SETN's own data roles
    # (weights on train, alpha and scoring on valid: it learns on the score split); each region's
    # template top-100 scored, the best trained standalone as the benchmark does (whole train
    # set, seeds 777/888/999)
    "few-shot-paper": {
        "supernet": dict(C=16, N=5, batch_size=48, valid_batch_size=512, epochs=300, lr=0.025, lr_min=0.001,
                         momentum=0.9, nesterov=True, weight_decay=5e-4, grad_clip=None, offpath="decay"),
        "searcher": dict(few_shot="1<-0", few_shot_variant="independent", sub_supernet_budget=1.0, chunk_steps=500,
                         num_candidates=100, cohort_size=100, score_batches=1, top_k=1,
                         arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3, arch_eps=1e-8,
                         standalone=dict(C=16, N=5, epochs=200, batch_size=256, seeds=[777, 888, 999],
                                         train_split="train+valid")),
    },
}

# --- nao (nao.py) ------------------------------------------------------------------------
NAO_PRESETS = {
    # finishes on 2 CPU cores in a few minutes on digits
    "small": {
        "supernet": dict(C=8, N=1, batch_size=64, valid_batch_size=200, epochs=20, lr_restarts=2, lr=0.025,
                         lr_min=0.001, momentum=0.9, nesterov=False, weight_decay=3e-4, grad_clip=5.0),
        "searcher": dict(iterations=2, seed_archs=60, new_archs=20, top_archs=20, chunk_steps=80, cohort_size=40,
                         score_batches=1, top_k=5, epd_epochs=50, expand=4,
                         standalone=dict(C=8, N=1, epochs=6, batch_size=64)),
    },
    # the paper: 4 iterations of 50 epochs, 1000 seed archs then 300 new ones, EPD 1000 epochs,
    # top 5 re-ranked by 10 epochs of standalone training (the official re-ranking recipe)
    "paper": {
        "supernet": dict(C=16, N=5, batch_size=64, valid_batch_size=500, epochs=200, lr_restarts=4, lr=0.025,
                         lr_min=0.001, momentum=0.9, nesterov=False, weight_decay=3e-4, grad_clip=5.0,
                         offpath="decay"),
        "searcher": dict(iterations=4, seed_archs=1000, new_archs=300, top_archs=100, chunk_steps=500,
                         cohort_size=100, score_batches=1, top_k=5, epd_epochs=1000, expand=10,
                         standalone=dict(C=16, N=5, epochs=10, batch_size=64, lr=0.025, lr_min=0.001,
                                         nesterov=False, weight_decay=3e-4)),
    },
}

#: method -> its presets (the keys of raynas.searchers.SEARCHERS)
PRESETS: dict[str, dict] = {"rsps": RSPS_PRESETS, "random": RANDOM_PRESETS, "tenas": TENAS_PRESETS, "evnas": EVNAS_PRESETS, "setn": SETN_PRESETS, "nao": NAO_PRESETS}

__all__ = ["RSPS_PRESETS", "RANDOM_PRESETS", "TENAS_PRESETS", "EVNAS_PRESETS", "SETN_PRESETS", "NAO_PRESETS", "PRESETS"]
