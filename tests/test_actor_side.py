"""The actor side of exact resume: chunks addressed by (start, until), per-version snapshots,
replays and rewinds, scoring at a version, weights-only snapshots, divergence, settings checks,
and the worker running without Ray."""

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raynas import policies
from raynas.spaces import get_space
from raynas.worker import plain, settings_difference, version_file, worker_settings
from tests.test_worker import make

ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
#: row keys that measure time, not results
TIMING = ("seconds", "samples_per_s")
SETN = {"name": "setn", "seed": 0}




def results(row):
    return {k: v for k, v in row.items() if k not in TIMING}


def weights(worker):
    return {k: v.clone() for k, v in worker.supernet.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical, not close


def files(path):
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("policy", ["uniform", SETN])
def test_a_re_issued_chunk_is_replayed_or_retrained_bit_identically(tmp_path, policy):
    chunks = [(0, 8), (8, 16), (16, 24)]
    straight = make(seed=5)  # no snapshots at all: the reference
    expected, at = [], {}
    for f, u in chunks:
        expected.append(straight.train(policy, until=u, start=f))
        at[u] = weights(straight)

    worker = make(tmp_path, seed=5)
    for (f, u), want in zip(chunks, expected):
        assert results(worker.train(policy, until=u, start=f)) == results(want)
    assert_same_weights(weights(worker), at[24])

    # a stale searcher re-issues 8 -> 16: the stored end state and row come back
    replayed = worker.train(policy, until=16, start=8)
    assert replayed["replayed"] is True and worker.version == 16
    assert results(replayed) == {**results(expected[1]), "replayed": True}
    assert_same_weights(weights(worker), at[16])
    # ... and the next re-issued chunk too, though the supernet now sits at its start
    assert worker.train(policy, until=24, start=16)["replayed"] is True
    assert_same_weights(weights(worker), at[24])

    # the end state of 8 -> 16 is gone: the snapshot of 8 is loaded and the chunk trained again
    (tmp_path / version_file(16)).unlink()
    again = worker.train(policy, until=16, start=8)
    assert "replayed" not in again and again["steps"] == 8
    assert results(again) == results(expected[1])
    assert_same_weights(weights(worker), at[16])
    assert worker.snapshot_versions() == [8, 16]  # 24 belonged to the history before the rewind
    assert results(worker.train(policy, until=24, start=16)) == results(expected[2])
    assert_same_weights(weights(worker), at[24])
    # the optimizer's and the policy's state came back too: a further chunk matches the reference
    assert results(worker.train(policy, until=30, start=24)) == results(straight.train(policy, until=30, start=24))
    assert_same_weights(weights(worker), weights(straight))


def test_a_chunk_without_its_start_snapshot_is_refused(tmp_path):
    worker = make(tmp_path)
    worker.train("uniform", until=5, start=0)
    with pytest.raises(ValueError, match=r"supernet is at version 5 .* no snapshot of version 3 in .*"
                                         r"supernets/ folder is incomplete"):
        worker.train("uniform", until=9, start=3)
    with pytest.raises(ValueError, match="no snapshot of version 2"):
        make().train("uniform", until=4, start=2)  # no snapshot_dir at all
    with pytest.raises(ValueError, match="until="):
        worker.train("uniform", steps=3, start=5)
    with pytest.raises(ValueError, match="start <= until"):
        worker.train("uniform", until=4, start=5)
    assert worker.version == 5


def test_another_policy_or_chunk_at_the_same_version_is_trained_not_replayed(tmp_path):
    worker = make(tmp_path)
    worker.train("uniform", until=6, start=0)
    worker.train("uniform", until=12, start=6)
    row = worker.train("per_cell", until=12, start=6)  # same chunk, other policy: the stored one is not it
    assert "replayed" not in row and row["steps"] == 6 and worker.policy.name == "per_cell"
    assert worker.train("per_cell", until=12, start=6)["replayed"] is True  # now it is
    with pytest.raises(ValueError, match="no snapshot of version 0"):
        worker.train("uniform", until=12, start=0)  # 0 -> 12 was never one chunk; 0 is never snapshotted
    with pytest.raises(ValueError, match="no snapshot of version 4"):
        worker.train("uniform", until=6, start=4)  # the file of 6 holds the chunk 0 -> 6, not 4 -> 6


def test_score_at_a_version_repeats_the_original_scores(tmp_path):
    worker = make(tmp_path, seed=2)
    archs = [ARCH, 0, 7]
    worker.train("uniform", until=10)
    at10 = worker.score(archs, batches=2, start=3)
    whole10 = worker.score([ARCH], batches=None)
    worker.train("uniform", until=20)
    at20 = worker.score(archs, batches=2, start=3)
    assert [r["valid_loss"] for r in at20] != [r["valid_loss"] for r in at10]
    rows = worker.score(archs, batches=2, start=3, version=10)
    assert worker.version == 10
    assert [results(r) for r in rows] == [results(r) for r in at10]
    assert results(worker.score([ARCH], batches=None, version=10)[0]) == results(whole10[0])
    assert [results(r) for r in worker.score(archs, batches=2, start=3, version=20)] == [results(r) for r in at20]
    with pytest.raises(ValueError, match="no snapshot of version 15"):
        worker.score(archs, version=15)
    # a train unit addressed from 20 continues from there, wherever scoring left the supernet
    worker.score(archs, version=10)
    assert worker.train("uniform", until=25, start=20)["version"] == 25


def test_version_files_hold_the_row_and_only_the_newest_are_kept(tmp_path):
    worker = make(tmp_path, keep_versions=2)
    rows = [worker.train("uniform", until=u) for u in (3, 6, 9, 12)]
    assert files(tmp_path) == ["snapshot.pt", version_file(9), version_file(12)] == [
        "snapshot.pt", "v00000009.pt", "v00000012.pt"]
    state = torch.load(tmp_path / version_file(12), weights_only=True)
    assert state["version"] == 12 and state["row"] == rows[-1]
    assert torch.load(tmp_path / "snapshot.pt", weights_only=True)["version"] == 12
    assert os.path.samefile(tmp_path / "snapshot.pt", tmp_path / version_file(12))  # one write, one link
    worker.train("uniform", until=12)  # nothing done: nothing written
    assert worker.info()["snapshot_versions"] == [9, 12]

    everything = make(tmp_path / "all", keep_versions=None, snapshot_every=2)
    for u in range(1, 21):
        everything.train("uniform", until=u)
    assert everything.snapshot_versions() == list(range(1, 21))
    everything.train("uniform", until=23)  # a snapshot_every snapshot mid-call, then the end of the call
    assert torch.load(tmp_path / "all" / "snapshot.pt", weights_only=True)["version"] == 23
    assert not [n for n in files(tmp_path / "all") if n.endswith(".tmp")]
    with pytest.raises(ValueError, match="keep_versions"):
        make(tmp_path / "x", keep_versions=0)


def test_a_replay_leaves_snapshot_pt_where_the_supernet_is(tmp_path):
    worker = make(tmp_path)
    worker.train("uniform", until=4, start=0)
    worker.train("uniform", until=8, start=4)
    worker.train("uniform", until=4, start=0)  # replayed
    restarted = make(tmp_path)  # an actor restart resumes from snapshot.pt
    assert restarted.version == 4 and restarted.train("uniform", until=8, start=4)["replayed"]


def test_a_resumed_run_without_its_snapshot_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"supernet snapshot .*snapshot.pt is missing; a resumed run needs its "
                                         r"supernets/ folder"):
        make(tmp_path, expect_snapshot=True)
    make(tmp_path).train("uniform", until=3)
    resumed = make(tmp_path, expect_snapshot=True)
    assert resumed.version == 3 and resumed.restored_from


class _Exploit:
    """Unpickling this runs ``open(marker, "w")``: what a crafted snapshot could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_snapshot_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "run").mkdir()
    torch.save({"format": 1, "version": 3, "x": _Exploit(marker)}, tmp_path / "run" / "snapshot.pt")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        make(tmp_path / "run")
    with pytest.raises(ValueError, match="refusing to unpickle"):
        make(tmp_path / "child", init_from=str(tmp_path / "run" / "snapshot.pt")).train("uniform", steps=1)
    worker = make(tmp_path / "w")
    worker.train("uniform", until=2)
    torch.save({"format": 1, "x": _Exploit(marker)}, tmp_path / "w" / version_file(7))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        worker.score([ARCH], version=7)
    assert not marker.exists()


def _policy_specs():
    space = get_space("nb201")
    specs = {
        "uniform": "uniform",
        "per_cell": "per_cell",
        # archs as arch objects and weights as numpy: what an in-process caller may hand in
        "pool": {"name": "pool", "archs": [space.parse(ARCH), 0], "weights": [np.float64(3.0), 1]},
        "balanced": {"name": "balanced"},
        "setn": SETN,
        "evnas": {"name": "evnas", "archs": [ARCH, 0, 9], "start": 0},
    }
    # every registered policy (and any still imported lazily from a method's module) is checked
    names = set(policies.POLICIES) | set(getattr(policies, "POLICY_MODULES", {}))
    assert set(specs) == names, "a policy without a weights-only check here"
    return specs


@pytest.mark.parametrize("name", sorted(_policy_specs()))
def test_every_policy_state_loads_weights_only(tmp_path, name):
    spec = _policy_specs()[name]
    worker = make(tmp_path)
    worker.train(spec, until=3)
    for f in ("snapshot.pt", version_file(3)):
        torch.load(tmp_path / f, weights_only=True)
    resumed = make(tmp_path)
    assert resumed.version == 3 and resumed.policy.name == name
    assert resumed.policy.export().get("alpha") == worker.policy.export().get("alpha")


def test_plain_refuses_what_would_not_load():
    assert plain({"a": (np.float32(1.5), [np.int64(2)]), "b": np.zeros(2)})["a"] == (1.5, [2])
    with pytest.raises(TypeError, match=r"state\['x'\] is a .*object"):
        plain({"x": object()})


class _NaNAt:
    """A criterion whose loss is NaN (or inf) at one call."""

    def __init__(self, call, value=float("nan")):
        self.calls, self.call, self.value = 0, call, value

    def __call__(self, logits, y):
        self.calls += 1
        loss = F.cross_entropy(logits, y)
        return loss * self.value if self.calls == self.call else loss


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_loss_stops_the_call_without_a_step_or_snapshot(tmp_path, value):
    worker = make(tmp_path)
    worker.train("uniform", until=5)
    worker.criterion = _NaNAt(4, value)  # the 4th step of the next call: step 9
    row = worker.train("uniform", until=20)
    word = "nan" if value != value else "inf"
    assert row["diverged"] is True and row["version"] == 8 and row["steps"] == 3
    assert row["train_loss"] != row["train_loss"]  # NaN
    assert row["message"].startswith(f"supernet loss became {word} at step 9 (lr 0.02")
    assert row["message"].endswith("; lower supernet.lr or check the data")
    assert worker.snapshot_versions() == [5]  # nothing of the broken call
    assert torch.load(tmp_path / "snapshot.pt", weights_only=True)["version"] == 5
    reference = make()
    reference.train("uniform", until=5)
    reference.train("uniform", until=8)
    # no optimizer step on the NaN batch (its forward did move the BN running statistics)
    assert_same_weights(dict(worker.supernet.named_parameters()), dict(reference.supernet.named_parameters()))


def test_settings_compare_what_defines_the_supernet():
    worker = make(device="cpu", num_threads=1)
    same = dict(dataset="digits", C=4, N=1, epochs=2, valid_batch_size=64, seed=0)
    assert settings_difference(worker.settings(), worker_settings(same)) is None
    assert settings_difference(worker.settings(), worker_settings({**same, "device": "cuda", "num_threads": 8,
                                                                     "expect_snapshot": True})) is None
    assert settings_difference(worker.settings(), worker_settings({**same, "C": 8})) == "C"
    assert settings_difference(worker.settings(), worker_settings({**same, "lr": 0.1, "seed": 3})) == "lr"
    assert worker_settings({"allowed_ops": ((1, 2), range(5))})["allowed_ops"] == [[1, 2], [0, 1, 2, 3, 4]]
    with pytest.raises(TypeError, match="unexpected settings"):
        worker_settings({"snapshot_directory": "x"})


RAY_FREE = """
import os, sys
sys.modules["ray"] = None  # any import of ray now fails
from raynas.worker import SupernetWorker
policies = {policies!r}
for i, policy in enumerate(policies):
    where = sys.argv[1] if len(policies) == 1 else os.path.join(sys.argv[1], str(i))
    worker = SupernetWorker(dataset="digits", C=4, N=1, total_steps=10, valid_batch_size=64, snapshot_dir=where)
    row = worker.train(policy, until=3, start=0)
    assert row["version"] == 3, (policy, row)
    assert worker.score([0], batches=1, start=0)[0]["version"] == 3, policy
    print("ray-free ok", policy, flush=True)
assert sys.modules["ray"] is None
assert not [m for m in sys.modules if m.startswith("ray.")]
"""
POLICIES = ["uniform", SETN, {"name": "evnas", "archs": [ARCH]}]


def _run_without_ray(where, policies):
    """``policies`` each trained and scored by a worker in one process without Ray (snapshots in
    ``where``, or in its subfolders 0, 1, ... for several)."""
    script = textwrap.dedent(RAY_FREE.format(policies=list(policies)))
    return subprocess.run([sys.executable, "-c", script, str(where)], capture_output=True, text=True, timeout=300)


def test_the_worker_runs_without_ray(tmp_path):
    # one process for every policy (a fresh interpreter each would only repeat the imports)
    done = _run_without_ray(tmp_path, POLICIES)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [f"ray-free ok {policy}" for policy in POLICIES], done.stdout


def test_a_named_actor_is_reused_only_with_the_same_settings(ray_session, tmp_path):
    from raynas.actor import create_supernet_actor

    ray = ray_session
    kwargs = dict(dataset="digits", C=4, N=1, total_steps=10, valid_batch_size=64, device="cpu")
    first = create_supernet_actor("settings-check", 0, kwargs, num_cpus=0.5)
    try:
        assert ray.get(first.train.remote("uniform", until=2))["version"] == 2
        again = create_supernet_actor("settings-check", 0, {**kwargs, "num_threads": 1}, num_cpus=0.5)
        assert ray.get(again.info.remote())["version"] == 2  # the same actor
        with pytest.raises(ValueError, match=r"already runs with C=4; this run asks for C=8"):
            create_supernet_actor("settings-check", 0, {**kwargs, "C": 8}, num_cpus=0.5)
    finally:
        ray.kill(first)


# --- the actor side with its files in object storage (tests/conftest.py's s3_server) ---

def _bucket_dir():
    import uuid

    from tests.conftest import make_bucket

    return f"{make_bucket(f'raynas-{uuid.uuid4().hex[:12]}')}/runs/r1/supernets/0"


def test_replays_and_rewinds_read_the_version_files_in_a_bucket(s3_server):
    from raynas.storage import Location

    uri = _bucket_dir()
    worker = make(snapshot_dir=uri, seed=5, keep_versions=2)
    chunks = [(0, 4), (4, 8), (8, 12), (12, 16)]
    rows, at = {}, {}
    for f, u in chunks:
        rows[u] = worker.train("uniform", until=u, start=f)
        at[u] = weights(worker)
    assert [p.name for p in Location(uri).iterdir()] == ["snapshot.pt", version_file(12), version_file(16)]
    state = torch.load(io.BytesIO((Location(uri) / version_file(16)).read_bytes()), weights_only=True)
    assert state["version"] == 16 and state["row"] == rows[16]

    replayed = worker.train("uniform", until=16, start=12)  # a re-issued chunk: the stored state
    assert replayed["replayed"] is True and results(replayed) == {**results(rows[16]), "replayed": True}
    (Location(uri) / version_file(16)).unlink()  # its end state is gone: rewound to 12 and trained again
    again = worker.train("uniform", until=16, start=12)
    assert "replayed" not in again and results(again) == results(rows[16])
    assert_same_weights(weights(worker), at[16])
    rescored = worker.score([ARCH], batches=None, version=12)  # scoring at a version loads its file
    assert worker.version == 12 and rescored[0]["version"] == 12
    assert_same_weights(weights(worker), at[12])
    restarted = make(snapshot_dir=uri, seed=5, keep_versions=2)  # snapshot.pt: where the supernet last was
    assert restarted.version == 16 and restarted.train("uniform", until=16, start=12)["replayed"] is True
    with pytest.raises(ValueError, match=rf"no snapshot of version 4 in {uri}; the run's supernets/ folder"):
        restarted.train("uniform", until=8, start=4)  # pruned (keep_versions=2)


def test_a_resumed_run_without_its_snapshot_in_a_bucket_is_refused(s3_server, tmp_path):
    from raynas.storage import Location

    uri = _bucket_dir()
    with pytest.raises(ValueError, match=rf"^supernet snapshot {uri}/snapshot.pt is missing; a resumed run needs "
                                         r"its supernets/ folder$"):
        make(snapshot_dir=uri, expect_snapshot=True)
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"format": 1, "version": 3, "x": _Exploit(marker)}, buffer)
    (Location(uri) / "snapshot.pt").write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=rf"snapshot '{uri}/snapshot.pt' holds more .* refusing to unpickle"):
        make(snapshot_dir=uri, expect_snapshot=True)
    assert not marker.exists()


def test_a_standalone_checkpoint_round_trips_through_a_bucket(s3_server):
    from raynas.data import load_dataset
    from raynas.standalone import StandaloneTraining
    from raynas.trainable import checkpoint_path, load_checkpoint
    from raynas.worker import atomic_torch_save

    run_dir = _bucket_dir().rsplit("/supernets/", 1)[0]
    splits = load_dataset("digits")

    def training():
        return StandaloneTraining(get_space("nb201"), ARCH, splits, C=4, N=1, seed=1, epochs=2, batch_size=128)

    straight = training()
    straight.run_epoch()
    want = straight.run_epoch()
    path = checkpoint_path(run_dir, "standalone/final/0")
    assert str(path).startswith(f"{run_dir}/checkpoints/") and str(path).endswith(".pt")
    assert load_checkpoint(path) is None  # none yet
    first = training()
    row = first.run_epoch()
    atomic_torch_save({"key": "standalone/final/0", "training": first.state_dict(), "row": row}, path)
    saved = load_checkpoint(path)  # weights-only, from the object's bytes
    assert saved["row"] == row
    resumed = training()
    resumed.load_state_dict(saved["training"])
    got = resumed.run_epoch()
    assert {k: v for k, v in got.items() if k != "seconds"} == {k: v for k, v in want.items() if k != "seconds"}
    assert_same_weights(dict(resumed.net.state_dict()), dict(straight.net.state_dict()))


def test_the_worker_runs_without_ray_on_a_bucket(s3_server):
    from raynas.worker import SupernetWorker

    uri = _bucket_dir()
    done = _run_without_ray(uri, ["uniform"])  # another process: credentials from its environment
    assert done.returncode == 0 and "ray-free ok" in done.stdout, done.stderr[-3000:]
    here = SupernetWorker(dataset="digits", C=4, N=1, total_steps=10, valid_batch_size=64, snapshot_dir=uri)
    assert here.version == 3 and here.restored_from == f"{uri}/snapshot.pt"
