"""The supernet actor's body in plain torch: training, scoring, snapshots, policies (no Ray)."""

import numpy as np
import pytest
import torch

from raynas.policies import make_policy
from raynas.spaces import get_space
from raynas.worker import SupernetWorker, cosine_lr

ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


def make(tmp_path=None, **kw):
    args = dict(dataset="digits", C=4, N=1, epochs=2, valid_batch_size=64, seed=0)
    if tmp_path is not None:
        args["snapshot_dir"] = str(tmp_path)
    args.update(kw)
    return SupernetWorker(**args)


def test_train_is_addressed_by_version_and_learns():
    worker = make(total_steps=60, epochs=None, lr=0.05)
    first = worker.train("uniform", until=30)
    assert first["version"] == 30 and first["steps"] == 30
    again = worker.train("uniform", until=30)  # a re-run unit does nothing
    assert again["steps"] == 0 and again["version"] == 30
    last = worker.train("uniform", steps=30)
    assert last["version"] == 60
    assert last["train_loss"] < first["train_loss"]
    assert np.isclose(last["lr"], 0.001)


def test_score_rows_and_advancing_batches():
    worker = make()
    rows = worker.score([ARCH, ARCH, 0], batches=1)
    assert [r["arch"] for r in rows][1] == ARCH and rows[2]["arch"].startswith("|none~0|")
    assert all(r["batches"] == 1 and 0 <= r["valid_acc"] <= 1 and r["version"] == 0 for r in rows)
    # the same arch on the next batch of the stream: different samples, (almost surely) different loss
    assert rows[0]["valid_loss"] != rows[1]["valid_loss"]
    whole = worker.score([ARCH], batches=None)[0]
    assert whole["samples"] == len(worker.splits.valid)


def test_snapshot_resume_continues_identically(tmp_path):
    straight = make(seed=3)
    straight.train("uniform", until=20)
    expected = straight.train("uniform", until=40)

    first = make(tmp_path, seed=3)
    first.train("uniform", until=20)  # snapshots at the end of the call
    resumed = make(tmp_path, seed=3)
    assert resumed.version == 20 and resumed.restored_from
    got = resumed.train("uniform", until=40)
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)
    for a, b in zip(straight.supernet.parameters(), resumed.supernet.parameters()):
        torch.testing.assert_close(a, b)


def test_snapshot_every_n_steps(tmp_path):
    worker = make(tmp_path, snapshot_every=7)
    worker.train("uniform", until=10)
    state = torch.load(tmp_path / "snapshot.pt", weights_only=True)
    assert state["version"] == 10  # the end-of-call snapshot follows the one at step 7


def test_policies_draw_what_they_say():
    space = get_space("nb201")
    rng = np.random.default_rng(0)
    per_cell = make_policy("per_cell", space, num_cells=3).path(rng, 0)
    assert isinstance(per_cell, list) and len(per_cell) == 3
    pool = make_policy({"name": "pool", "archs": [ARCH, 0], "weights": [3, 1]}, space, num_cells=3)
    draws = [str(pool.path(rng, s)) for s in range(4000)]
    assert abs(draws.count(ARCH) / 4000 - 0.75) < 0.03
    with pytest.raises(ValueError, match="unknown training policy 'nope'"):
        make_policy("nope", space, 3)
    with pytest.raises(ValueError, match="weights"):
        make_policy({"name": "pool", "archs": [ARCH], "weights": [-1]}, space, 3)


def test_restricted_worker_refuses_archs_outside_its_region():
    worker = make(allowed_ops=[[3], *[range(5)] * 5])
    assert worker.train("uniform", until=5)["version"] == 5
    with pytest.raises(ValueError, match="outside"):
        worker.score(["|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="bn_mode"):
        make(bn_mode="sometimes")
    with pytest.raises(ValueError, match="exactly one"):
        make(total_steps=10, epochs=1)


def test_cosine_schedule_ends():
    assert cosine_lr(0, 100, 0.1, 0.0) == 0.1
    assert cosine_lr(50, 100, 0.1, 0.0) == pytest.approx(0.05)
    assert cosine_lr(100, 100, 0.1, 0.001) == pytest.approx(0.001)


def test_sub_supernet_starts_from_its_parents_weights_at_its_first_step(tmp_path):
    parent = make(tmp_path / "0")
    parent.train("uniform", until=12)
    child = make(tmp_path / "1", allowed_ops=[[3], *[range(5)] * 5], init_from=str(tmp_path / "0" / "snapshot.pt"))
    assert child.initialized_from is None  # the parent may still be training when children are made
    arch = "|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|"
    before = child.score([arch])[0]
    child.train("uniform", steps=0)
    assert child.initialized_from and child.version == 0
    for (name, a), b in zip(parent.supernet.state_dict().items(), child.supernet.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)  # every op, the split edge's conv included
    child.train("uniform", until=4)
    resumed = make(tmp_path / "1", allowed_ops=[[3], *[range(5)] * 5], init_from="/nonexistent")
    assert resumed.version == 4 and resumed.initialized_from  # a restart reads its own snapshot
    assert before["arch"] == arch


def test_scoring_with_a_start_is_fixed_by_position_not_by_call_order():
    worker = make(seed=4)
    archs = [ARCH, 0, ARCH]
    first = worker.score(archs, batches=1, start=10)
    worker.score([ARCH], batches=2)  # the advancing stream moves; positions do not
    worker.score([ARCH], batches=1, start=99)
    again = worker.score(archs, batches=1, start=10)
    assert [r["valid_loss"] for r in first] == [r["valid_loss"] for r in again]
    assert first[0]["valid_loss"] != first[2]["valid_loss"]  # same arch, next position: another batch
    tail = worker.score(archs[2:], batches=1, start=12)  # a slice of the cohort: the same batch
    assert tail[0]["valid_loss"] == first[2]["valid_loss"]


def test_sub_supernet_continues_its_parents_setn_alpha(tmp_path):
    spec = {"name": "setn", "seed": 0}
    parent = make(tmp_path / "0")
    parent.train(spec, until=6)
    alpha = parent.policy.export()["alpha"]
    child = make(tmp_path / "1", allowed_ops=[[3], *[range(5)] * 5], init_from=str(tmp_path / "0" / "snapshot.pt"))
    child.train(spec, steps=0)
    assert child.policy.export()["alpha"] == alpha
    uniform_child = make(tmp_path / "2", allowed_ops=[[2], *[range(5)] * 5], init_from=str(tmp_path / "0" / "snapshot.pt"))
    uniform_child.train("uniform", steps=1)  # another policy: nothing to continue, weights still inherited
    assert uniform_child.initialized_from


# --- snapshots in object storage (a real S3-protocol server: tests/conftest.py's s3_server) ---

def _bucket_dir(name):
    import uuid

    from tests.conftest import make_bucket

    return f"{make_bucket(f'raynas-{uuid.uuid4().hex[:12]}')}/runs/r1/supernets/{name}"


def test_snapshots_in_a_bucket_resume_identically(s3_server):
    from raynas.storage import Location

    straight = make(seed=3)
    straight.train("uniform", until=20)
    expected = straight.train("uniform", until=40)

    uri = _bucket_dir("0")
    first = make(snapshot_dir=uri, seed=3)
    first.train("uniform", until=20)
    assert [p.name for p in Location(uri).iterdir()] == ["snapshot.pt", "v00000020.pt"]
    resumed = make(snapshot_dir=uri, seed=3)  # a restarted actor, on any node: no shared disk
    assert resumed.version == 20 and resumed.restored_from == f"{uri}/snapshot.pt"
    assert resumed.snapshot_versions() == [20]
    for a, b in zip(first.supernet.state_dict().values(), resumed.supernet.state_dict().values()):
        assert torch.equal(a, b)
    got = resumed.train("uniform", until=40)
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-5)
    for a, b in zip(straight.supernet.parameters(), resumed.supernet.parameters()):
        torch.testing.assert_close(a, b)
    assert make(snapshot_dir=Location(uri), seed=3).version == 40  # a Location works as well as its URI


def test_a_sub_supernet_starts_from_its_parents_snapshot_in_a_bucket(s3_server):
    parent_dir = _bucket_dir("0")
    parent = make(snapshot_dir=parent_dir)
    parent.train("uniform", until=6)
    init_from = f"{parent_dir}/snapshot.pt"
    child_dir = parent_dir[:-1] + "1"
    child = make(snapshot_dir=child_dir, allowed_ops=[[3], *[range(5)] * 5], init_from=init_from)
    child.train("uniform", steps=0)
    assert child.initialized_from == init_from and child.version == 0
    for (name, a), b in zip(parent.supernet.state_dict().items(), child.supernet.state_dict().values()):
        assert torch.equal(a, b), name
    child.train("uniform", until=2)
    restarted = make(snapshot_dir=child_dir, allowed_ops=[[3], *[range(5)] * 5], init_from=init_from)
    assert restarted.version == 2 and restarted.initialized_from == init_from
    missing = parent_dir[:-1] + "9/snapshot.pt"
    orphan = make(snapshot_dir=parent_dir[:-1] + "2", init_from=missing)
    with pytest.raises(FileNotFoundError, match=rf"init_from='{missing}': the parent supernet's snapshot does not exist"):
        orphan.train("uniform", steps=1)
