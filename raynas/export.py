"""The found network of a finished run, as files a user loads without raynas.

:func:`export_run` reads a complete run directory (local or a storage URI), finds the standalone
training of its final arch (the winner of ``summary.parquet``; under several final seeds, the
lowest seed's training unless one is named), loads that training's last checkpoint
(``RUN_DIR/checkpoints/<sha1 of its unit key>.pt``, see :func:`raynas.trainable.checkpoint_path`)
and writes into a new folder (local or a URI):

- ``model.pt2``: a ``torch.export`` program of the network in eval mode (BN on its running
  statistics), any batch size; ``torch.export.load(path).module()(x)`` gives the logits.
- ``state_dict.pt``: the network's weights, loadable with ``torch.load(..., weights_only=True)``
  into :class:`raynas.spaces.nb201_nets.NB201Network` (the ``network`` block of export.json holds
  its arguments).
- ``export.json``: the arch (string, op indices, benchmark index, raynas's arch code), the input
  the program expects (shape, normalisation mean/std), the recipe that trained it (network size,
  epochs, batch size, optimizer and schedule, seed, split trained on, augmentation, data set, its
  options and content fingerprint), its accuracies as the run measured them and where it came
  from. Written last: a folder with export.json is a finished export.

Refused with :class:`raynas.errors.UsageError` before anything is written: a run that is not
complete, one without a final training or its checkpoint, an ``output`` that exists and is not an
empty folder, data here that are not the data the run trained on. Prints nothing.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any

from raynas.errors import UsageError, first_line
from raynas.storage import Location

#: the files of an export folder; export.json names them too
PROGRAM, STATE_DICT, METADATA = "model.pt2", "state_dict.pt", "export.json"
EXPORT_FORMAT = 1
#: how raynas measures an accuracy (raynas.standalone.evaluate): eval mode, the split in order
EVAL_BATCH_SIZE = 512
#: the seed of a standalone training whose unit named none (raynas.trainable's default, 777)
_DEFAULT_SEED = 777


def export_run(run_dir: "str | os.PathLike | Location", output: "str | os.PathLike | Location", *,
               train_seed: int | None = None, data_dir: str | None = None) -> dict:
    """Export the final network of the complete run in ``run_dir`` into the new folder ``output``.

    ``train_seed``: which final training to export when the winner was trained with several
    seeds (default: the lowest seed). ``data_dir``: where the run's data set is on this machine, if not
    where the run read it (the data give the normalisation and are checked against the run's
    fingerprint). Returns what was written: ``{"output", "files", "metadata"}``."""
    output = _new_output(output)
    source = _final_training(Location(run_dir), train_seed)
    splits = _run_data(source, data_dir)
    net = _network(source, splits.info)
    metadata = _metadata(source, splits, net)
    program = _program(net, splits)
    files = _write(output, {PROGRAM: program, STATE_DICT: _saved(net.state_dict()),
                            METADATA: (json.dumps(metadata, indent=2) + "\n").encode()})
    return {"output": str(output), "files": files, "metadata": metadata}


# --- what is read ----------------------------------------------------------------------------

def _new_output(output) -> Location:
    try:
        where = Location(output)
        where.filesystem  # an unknown URI scheme fails here, before anything is read
        if where.is_file() or (where.is_dir() and where.iterdir()):
            raise UsageError(f"--output {output}: exists and is not an empty folder; expected a new folder")
    except (ValueError, OSError) as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(f"--output {output}: cannot use it ({first_line(err)}); expected a new folder or URI") from None
    return where


def _final_training(run_dir: Location, train_seed: int | None) -> dict:
    """The run's config, manifest and summary row, and the final training to export: its last
    row and its checkpoint."""
    from raynas.results import read_json, read_parquet
    from raynas.rowlog import read_rows
    from raynas.trainable import checkpoint_path, load_checkpoint

    try:
        if not (run_dir / "raynas.json").is_file():
            raise UsageError(f"{run_dir}: not a raynas run directory (no raynas.json); expected a RUN_DIR that "
                             "`raynas search` made")
        config = read_json(run_dir / "raynas.json")
        if not (run_dir / "summary.parquet").is_file():
            raise UsageError(f"{run_dir}: the run has no summary.parquet (it never finished a session); "
                             "expected a complete run")
        summary = read_parquet(run_dir / "summary.parquet").iloc[0].to_dict()
    except (ValueError, OSError) as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(f"{run_dir}: cannot read it ({first_line(err)}); expected a raynas run directory") from None
    status = summary.get("status") if isinstance(summary.get("status"), str) else "unknown"  # NaN: an old table
    if status != "complete":
        raise UsageError(f"{run_dir}: the run is {status}, not complete; `raynas search --resume {run_dir}` "
                         "finishes it, then export it")
    arch = summary.get("final_arch")
    if not isinstance(arch, str) or not arch:
        raise UsageError(f"{run_dir}: the run trained no final network (a ranking run?); expected a search "
                         "with a final standalone training")
    finished = {}
    for row in read_rows(run_dir):
        if (row.get("kind") == "standalone" and row.get("role", "final") == "final" and row.get("arch") == arch
                and row.get("epoch", 0) >= row.get("epochs", math.inf)):
            finished[row["key"]] = row
    standalone = (config.get("searcher") or {}).get("standalone") or {}
    seed_of = lambda row: int(row.get("train_seed", standalone.get("seed", _DEFAULT_SEED)))  # noqa: E731
    trainings = sorted(finished.values(), key=lambda row: (seed_of(row), row.get("unit", 0)))
    if train_seed is not None:
        trainings = [row for row in trainings if seed_of(row) == train_seed]
    if not trainings:
        seeds = sorted({seed_of(row) for row in finished.values()})
        which = f"with seed {train_seed} (it has seeds {seeds})" if train_seed is not None and seeds else "in its row log"
        raise UsageError(f"{run_dir}: no finished final training of {arch} {which}; expected a complete run")
    row = trainings[0]
    path = checkpoint_path(run_dir, row["key"])
    try:
        checkpoint = load_checkpoint(path)
    except ValueError as err:  # more than tensors and plain values: never unpickled
        raise UsageError(f"{path}: {first_line(err)}") from None
    if checkpoint is None or checkpoint.get("key") != row["key"]:
        raise UsageError(f"{run_dir}: no final checkpoint of {arch} ({path} is missing); expected a complete run "
                         "with its checkpoints/ folder")
    training = checkpoint["training"]
    if training.get("epoch") != row.get("epochs"):
        raise UsageError(f"{path}: the checkpoint is at epoch {training.get('epoch')}, not the last "
                         f"({row.get('epochs')}); expected the finished training's checkpoint")
    manifest = read_json(run_dir / "manifest.json") if (run_dir / "manifest.json").is_file() else {}
    return {"run_dir": run_dir, "config": config, "manifest": manifest, "summary": summary, "row": row,
            "seed": seed_of(row), "seeds": sorted({seed_of(r) for r in finished.values()}),
            "checkpoint": path, "weights": training["net"]}


def _run_data(source: dict, data_dir: str | None):
    """The run's data set as raynas loads it (for its normalisation), checked against the
    fingerprint the run recorded."""
    from raynas.data import DatasetError, load_dataset

    config = source["config"]
    where = data_dir if data_dir is not None else config.get("data_dir")
    try:
        splits = load_dataset(config["dataset"], where, **(config.get("data_options") or {}))
    except (DatasetError, ValueError, OSError) as err:
        raise UsageError(f"the run's data set {config['dataset']} is needed for its normalisation and did not load "
                         f"({first_line(err)}); pass --data-dir with its files") from None
    recorded = (source["manifest"].get("dataset") or {}).get("fingerprint")
    if recorded and splits.fingerprint() != recorded:
        raise UsageError(f"the data set {config['dataset']} here (fingerprint {splits.fingerprint()[:12]}...) is not the "
                         f"one the run trained on ({recorded[:12]}...); pass --data-dir with the run's files")
    return splits


# --- what is built -----------------------------------------------------------------------------

def _net_args(source: dict, info) -> dict:
    standalone = (source["config"].get("searcher") or {}).get("standalone") or {}
    return dict(C=int(standalone.get("C", 16)), N=int(standalone.get("N", 5)), num_classes=int(info.num_classes),
                in_channels=int(info.in_channels))


def _network(source: dict, info):
    """The final network with the checkpoint's weights, in eval mode, on the CPU."""
    from raynas.spaces import get_space

    space = get_space(source["config"]["space"])
    net = space.build_network(space.parse(source["summary"]["final_arch"]), **_net_args(source, info))
    try:
        net.load_state_dict(source["weights"])
    except RuntimeError as err:
        raise UsageError(f"{source['checkpoint']}: its weights do not fit the run's network "
                         f"({first_line(err)}); expected the run's own checkpoint") from None
    return net.eval()


def _program(net, splits) -> bytes:
    """``torch.export`` of the eval-mode network with a free batch size, checked against the
    network on test images."""
    import torch

    sample = splits.test.images[:EVAL_BATCH_SIZE].cpu()
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (sample[:2],), dynamic_shapes=({0: batch},))
    with torch.no_grad():
        expected, got = net(sample), program.module()(sample)
    if not torch.allclose(expected, got, rtol=1e-5, atol=1e-5):
        raise RuntimeError(f"the exported program differs from the network by {(expected - got).abs().max().item():.3g}")
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _saved(state: dict) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    return buffer.getvalue()


def _metadata(source: dict, splits, net) -> dict:
    import torch

    from raynas import __version__
    from raynas.spaces import get_space
    from raynas.standalone import RECIPE

    config, summary, row, info = source["config"], source["summary"], source["row"], splits.info
    space = get_space(config["space"])
    arch = space.parse(summary["final_arch"])
    standalone = (config.get("searcher") or {}).get("standalone") or {}
    recipe = {**RECIPE, **{k: v for k, v in standalone.items() if k in RECIPE}}
    run_dir = source["run_dir"]
    return {
        "format": "raynas-export",
        "format_version": EXPORT_FORMAT,
        "files": {"program": PROGRAM, "state_dict": STATE_DICT},
        "arch": str(arch),
        "space": config["space"],
        "ops": [space.op_names[o] for o in arch.ops],
        "edges": list(space.edge_names),
        # the benchmark's own index (NAS-Bench-201 / NATS-Bench order), and raynas's base-5 code
        "benchmark_index": int(space.benchmark_index(arch)),
        "arch_code": int(space.index_of(arch)),
        "network": {"class": f"{type(net).__module__}.{type(net).__qualname__}", **_net_args(source, info),
                    "parameters": int(sum(p.numel() for p in net.parameters()))},
        "input": {
            "shape": ["batch", info.in_channels, info.input_size, info.input_size], "dtype": "float32",
            # raynas's loaders scale pixels to [0, 1] (digits: value / 16; image files: value / 255) first
            "normalise": "x in [0, 1], then (x - mean) / std per channel",
            "mean": list(info.mean), "std": list(info.std),
            "output": f"logits, shape [batch, {info.num_classes}]",
        },
        "recipe": {
            "C": _net_args(source, info)["C"], "N": _net_args(source, info)["N"],
            "epochs": int(recipe["epochs"]), "batch_size": int(recipe["batch_size"]),
            "optimizer": {"name": "SGD", "lr": recipe["lr"], "momentum": recipe["momentum"],
                          "nesterov": recipe["nesterov"], "weight_decay": recipe["weight_decay"]},
            "schedule": {"name": "cosine, per step", "lr": recipe["lr"], "lr_min": recipe["lr_min"]},
            "seed": source["seed"],
            "train_split": row.get("train_split", standalone.get("train_split", "train")),
            "train_size": int(row.get("train_size", len(splits.train))),
            "augmentation": {"crop_padding": info.pad, "horizontal_flip": info.flip},
            "data": {"name": config["dataset"], "options": config.get("data_options") or {},
                     "data_dir": config.get("data_dir"), "fingerprint": splits.fingerprint(),
                     "sizes": splits.sizes()},
        },
        "accuracy": {
            # this training's own figures; the run's table averages the winner's seeds
            "test": _number(row.get("test_acc")), "valid": _number(row.get("valid_acc")),
            "table_test": _number(summary.get("standalone_test_acc")),
            "table_valid": _number(summary.get("standalone_valid_acc")),
            "final_seeds": source["seeds"],
            "evaluation": f"eval mode (BN running statistics), the split in order, batches of {EVAL_BATCH_SIZE}, "
                          "argmax of the logits",
        },
        # the benchmark's figures of the arch, where the run looked it up (search --benchmark)
        "benchmark": {k: _plain(v) for k, v in summary.items() if k.startswith("bench_")},
        "source": {
            "run_dir": str(run_dir), "run_id": config.get("run_id"), "method": config.get("method"),
            "search_seed": config.get("seed"), "preset": config.get("preset"), "unit_key": row["key"],
            "checkpoint": f"checkpoints/{source['checkpoint'].name}",
            "device": row.get("device"),
        },
        "versions": {"raynas": __version__, "torch": torch.__version__,
                     "trained_with": (source["manifest"].get("versions") or {})},
    }


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


# --- what is written ---------------------------------------------------------------------------

def _write(output: Location, contents: dict[str, bytes]) -> list[str]:
    """Each file into ``output`` (metadata last); on a failure, what was written is removed."""
    made = not output.exists()
    written: list[Location] = []
    try:
        output.mkdir()
        for name in sorted(contents, key=lambda n: n == METADATA):
            (output / name).write_bytes(contents[name])
            written.append(output / name)
    except BaseException:
        for path in written:
            path.unlink()
        if made:
            output.rmtree()
        raise
    return [str(path) for path in written]
