#!/usr/bin/env bash
# Sets raynas up in ./.venv and runs the main job: an RSPS search on the embedded default
# dataset (scikit-learn's digits) with an embedded local Ray. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[dev]'
# Fashion-MNIST (the realistic small benchmark) comes from Debian's package; needs root.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist; fashion-mnist runs and tests will be skipped" >&2
  else
    echo "setup: to use fashion-mnist, run as root: apt-get install dataset-fashion-mnist" >&2
  fi
fi
.venv/bin/raynas search --method rsps --dataset digits --storage runs
