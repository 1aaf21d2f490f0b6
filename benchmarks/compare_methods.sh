#!/usr/bin/env bash
# Issue-4 report: each seed method on its small preset, 3 seeds, at an equal supernet budget
# (20 epochs of supernet weight steps) and an equal standalone recipe (15 epochs, C=8, N=1),
# against RSPS. Usage: benchmarks/compare_methods.sh [STORAGE]   (default runs/compare)
set -euo pipefail
storage=${1:-runs/compare}
raynas=${RAYNAS:-.venv/bin/raynas}
standalone="searcher.standalone={'C': 8, 'N': 1, 'epochs': 15, 'batch_size': 64}"
for seed in 0 1 2; do
  for method in rsps setn evnas nao; do
    name="$method-s$seed"
    [ -e "$storage/$name/summary.parquet" ] && continue
    "$raynas" search --method "$method" --dataset digits --seed "$seed" --num-cpus 2 -q \
      --storage "$storage" --name "$name" --set supernet.epochs=20 --set "$standalone"
  done
done
"$raynas" compare "$storage" --format markdown
"$raynas" compare "$storage" --runs-table --format csv
