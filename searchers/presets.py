"""Every method's presets, Ray-free and torch-free: method -> preset name -> ``{"supernet": {...},
"searcher": {...}, "resources": {...}}`` (each section optional).

Read by :func:`raynas.searchers.get_presets` and :func:`raynas.settings.make_config` without
importing the searcher modules (``ray.tune``, torch); each searcher module re-exports its own
(``raynas.searchers.rsps.PRESETS`` is :data:`RSPS_PRESETS`). The searcher sections must pass the
declared checks of :mod:`raynas.searchers.arguments` (tests/test_searcher_arguments.py).
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
        "searcher": dict(chunk_steps=470, num_candidates=None, cohort_size=10, score_batches=None, top_k=0),
    },
    # the benchmark's settings (SETN paper's RSPS): 250 epochs, batch 64, 100 candidates on one batch of 512
    "paper": {
        "supernet": dict(C=16, N=5, batch_size=64, valid_batch_size=512, epochs=250, lr=0.025, lr_min=0.001,
                         weight_decay=5e-4, grad_clip=5.0),
        "searcher": dict(chunk_steps=500, num_candidates=100, cohort_size=100, score_batches=1, top_k=1,
                         standalone=dict(C=16, N=5, epochs=200, batch_size=256)),
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
    # the official launcher's settings: batch 72, 3 repeats, 3 x 1000 crops, precision 3
    "paper": {"searcher": dict(ntk_batch=72, repeats=3, region_samples=1000, region_batches=3,
                               standalone=dict(C=16, N=5, epochs=200, batch_size=256))},
}

# --- evnas (evnas.py) --------------------------------------------------------------------
EVNAS_PRESETS = {
    # digits on 2 CPU cores in a few minutes: 10 generations of 2 epochs (16 steps each), 8 individuals
    "small": {
        "supernet": dict(C=8, N=1, batch_size=64, valid_batch_size=512, epochs=20, lr=0.025, lr_min=0.001,
                         weight_decay=3e-4, grad_clip=5.0),
        "searcher": dict(population_size=8, generations=10, tournament_size=3, num_elites=1, mutation_rate=0.1,
                         score_batches=None, standalone=dict(C=8, N=1, epochs=15, batch_size=64)),
    },
    # the official NB201 script: 50 generations = 50 epochs, population 50, tournaments of 10
    "paper": {
        "supernet": dict(C=16, N=5, batch_size=64, valid_batch_size=1024, epochs=50, lr=0.025, lr_min=0.001,
                         weight_decay=3e-4, grad_clip=5.0),
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
                         momentum=0.9, nesterov=True, weight_decay=5e-4, grad_clip=None),
        "searcher": dict(chunk_steps=500, num_candidates=100, cohort_size=100, score_batches=1, top_k=1,
                         arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3, arch_eps=1e-8,
                         standalone=dict(C=16, N=5, epochs=200, batch_size=256)),
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
                         lr_min=0.001, momentum=0.9, nesterov=False, weight_decay=3e-4, grad_clip=5.0),
        "searcher": dict(iterations=4, seed_archs=1000, new_archs=300, top_archs=100, chunk_steps=500,
                         cohort_size=100, score_batches=1, top_k=5, epd_epochs=1000, expand=10,
                         standalone=dict(C=16, N=5, epochs=10, batch_size=64, lr=0.025, lr_min=0.001,
                                         nesterov=False, weight_decay=3e-4)),
    },
}

#: method -> its presets (the keys of raynas.searchers.SEARCHERS)
PRESETS: dict[str, dict] = {"rsps": RSPS_PRESETS, "random": RANDOM_PRESETS, "tenas": TENAS_PRESETS, "evnas": EVNAS_PRESETS, "setn": SETN_PRESETS, "nao": NAO_PRESETS}

__all__ = ["RSPS_PRESETS", "RANDOM_PRESETS", "TENAS_PRESETS", "EVNAS_PRESETS", "SETN_PRESETS", "NAO_PRESETS", "PRESETS"]
