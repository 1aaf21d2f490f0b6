"""P3: K sub-supernets trained in parallel (one actor each) vs the same K one after another.

Speed-up = sequential seconds / parallel seconds, reported against the usable parallelism
(min(K, physical cores) on one machine). Both orders run on the same actors in one run, after
a warm-up, alternating. ``--nodes 2`` runs on a simulated 2-node local cluster
(``ray.cluster_utils.Cluster``) with the actors in a SPREAD placement group.

    python benchmarks/few_shot_parallel.py --subs 2
    python benchmarks/few_shot_parallel.py --subs 2 --nodes 2

:func:`measure` is the measurement itself, on whatever Ray the process joined
(``benchmarks/few_shot_cluster.py`` runs it on real ``ray start`` nodes).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subs", type=int, default=2, help="sub-supernets K (regions of edge 1<-0: at most 5)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-option", action="append", default=["resolution=16", "train_size=6000"])
    parser.add_argument("--C", type=int, default=8)
    parser.add_argument("--N", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    options = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in args.data_option)}

    import ray

    cluster = None
    if args.nodes > 1:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        for _ in range(args.nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="raynas", log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=max(2, args.subs), namespace="raynas", include_dashboard=False,
                 log_to_driver=False)
    result = measure(subs=args.subs, dataset=args.dataset, options=options, C=args.C, N=args.N, steps=args.steps,
                     repeats=args.repeats, usable=min(args.subs, os.cpu_count() or 1))
    print(json.dumps({"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
                      "setting": vars(args), **result}, indent=2))
    ray.shutdown()
    if cluster is not None:
        cluster.shutdown()


def measure(*, subs: int, dataset: str, options: dict, C: int, N: int, steps: int, repeats: int, usable: int) -> dict:
    """P3 on the Ray this process joined: ``subs`` sub-supernet actors of 1 CPU each in a SPREAD
    placement group, a warm-up, then ``repeats`` times one after another and all at once."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from raynas.actor import create_supernet_actor
    from raynas.spaces import get_space

    regions = get_space("nb201").split([0])[:subs]
    group = placement_group([{"CPU": 1}] * subs, strategy="SPREAD")
    ray.get(group.ready())
    actors = [
        create_supernet_actor("p3", k, dict(dataset=dataset, data_options=options, C=C, N=N,
                                            total_steps=10**9, seed=k, allowed_ops=r.allowed_ops),
                              num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(group, k - 1))
        for k, r in enumerate(regions, start=1)
    ]
    ray.get([a.train.remote("uniform", steps=20) for a in actors])  # warm-up
    nodes = ray.get([a.node_id.remote() for a in actors])
    sequential, parallel = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for actor in actors:
            ray.get(actor.train.remote("uniform", steps=steps))
        sequential.append(time.perf_counter() - start)
        start = time.perf_counter()
        ray.get([actor.train.remote("uniform", steps=steps) for actor in actors])
        parallel.append(time.perf_counter() - start)
    for actor in actors:
        ray.kill(actor)
    remove_placement_group(group)
    speedup = statistics.median(sequential) / statistics.median(parallel)
    return {
        "nodes_used": len(set(nodes)),
        "sequential_s": [round(v, 2) for v in sequential],
        "parallel_s": [round(v, 2) for v in parallel],
        "speedup": round(speedup, 3),
        "usable_parallelism": usable,
        "P3_ratio": round(speedup / usable, 3),
    }


if __name__ == "__main__":
    main()
