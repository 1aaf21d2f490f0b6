"""Light trials: what a trial process loads to call an actor, batched rows, compute shares.

A trial that only calls a supernet actor imports ``raynas.trainable`` (its function) and, when
Ray deserialises the actor's handle, the actor's class module ``raynas.actor``: neither may load
torch (each trial process would cost ~0.5 GB and seconds more). A batch of rows reads as one row
per candidate everywhere, and a standalone unit's task holds its share less the trial's.
"""

import subprocess
import sys

from raynas.rowlog import unpack
from raynas.trainable import compute_resources, unit_resources


def test_a_trial_that_calls_an_actor_loads_no_torch():
    code = ("import sys, pickle; import raynas.trainable, raynas.actor, raynas.naming; "
            "pickle.loads(pickle.dumps(raynas.actor._SupernetActor)); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
    # the actor's own process does load the worker (and torch) when the actor is made
    code = "import sys, raynas.worker; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


def test_a_batch_unpacks_to_one_row_per_candidate_each_with_the_shared_fields():
    batch = {"kind": "score", "key": "score/0/c0", "supernet": 0, "arch": "b", "valid_acc": 0.2, "position": 1,
             "rows": [{"arch": "a", "valid_acc": 0.5, "position": 0}, {"arch": "b", "valid_acc": 0.2, "position": 1}]}
    rows = unpack(batch)
    assert [r["arch"] for r in rows] == ["a", "b"] and [r["valid_acc"] for r in rows] == [0.5, 0.2]
    assert all(r["key"] == "score/0/c0" and r["kind"] == "score" and "rows" not in r for r in rows)
    assert unpack({"kind": "train", "version": 3}) == [{"kind": "train", "version": 3}]


def test_a_compute_unit_holds_its_share_in_trial_and_task_together():
    total = unit_resources({"kind": "standalone"}, trial_cpus=0.25, standalone_cpus=4.0, standalone_gpus=1.0)
    task = compute_resources(total, trial_cpus=0.25)
    assert task == {"CPU": 3.75, "GPU": 1.0, "threads": 4}
    assert compute_resources({"CPU": 0.2}, trial_cpus=0.25) == {"CPU": 0.0, "GPU": 0.0, "threads": 1}
    assert unit_resources({"kind": "score"}, trial_cpus=0.25, standalone_cpus=4.0, standalone_gpus=1.0) == {"CPU": 0.25}
