"""raynas.storage.Location on a local disk, ``file://`` and a real S3-protocol server (moto's),
and datasets read from a bucket (copied once to a node-local cache)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import uuid

import pytest
import torch

from raynas.data import DatasetError, load_dataset
from raynas.storage import Location, is_uri
from tests.conftest import make_bucket
from tests.test_data import make_fmnist


def _bucket() -> str:
    return make_bucket(f"raynas-{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["local", "file", "s3", "s3-query"])
def root(request, tmp_path):
    """An empty folder of each kind: a local path, a ``file://`` URI, an S3 prefix, and an S3
    prefix whose URI names its endpoint in the query (pyarrow's options, kept for every child)."""
    if request.param == "local":
        return Location(str(tmp_path / "root"))
    if request.param == "file":
        return Location(f"file://{tmp_path}/root")
    env = request.getfixturevalue("s3_server")
    bucket = _bucket()
    if request.param == "s3":
        return Location(f"{bucket}/runs/r1")
    endpoint = env["AWS_ENDPOINT_URL"].removeprefix("http://")
    return Location(f"{bucket}/runs/r1?endpoint_override={endpoint}&scheme=http")


def test_children_names_and_strings(root):
    child = root / "supernets" / "0" / "snapshot.pt"
    assert child.name == "snapshot.pt" and child.parent.parent == root / "supernets"
    assert Location(str(child)) == child and Location(child) == child
    if root.is_local:
        assert not is_uri(str(root)) and os.fspath(child) == str(child.local_path)
    else:
        assert str(child).startswith("s3://") and str(child).split("?")[0].endswith("/runs/r1/supernets/0/snapshot.pt")
        assert ("?" in str(child)) == ("?" in str(root))  # the query travels to every child
        with pytest.raises(TypeError, match="not a local path"):
            os.fspath(child)


def test_read_write_list_copy_unlink_rmtree(root):
    a = root / "d" / "a.bin"
    assert not a.exists() and not root.is_dir() and root.iterdir() == []
    a.write_bytes(b"one")
    a.write_bytes(b"two")  # overwrite
    (root / "d" / "sub" / "b.txt").write_text("bee")
    assert a.read_bytes() == b"two" and (root / "d" / "sub" / "b.txt").read_text() == "bee"
    assert a.is_file() and not a.is_dir() and (root / "d").is_dir() and (root / "d" / "sub").exists()
    assert [p.name for p in (root / "d").iterdir()] == ["a.bin", "sub"]
    assert (root / "nothing").iterdir() == []

    copy = root / "e" / "copy.bin"
    a.copy_to(copy)
    assert copy.read_bytes() == b"two"
    if root.is_local:
        assert os.path.samefile(a.local_path, copy.local_path)  # a hard link, not a second write
    a.write_bytes(b"three")  # a new file replaces the name: the copy keeps its own content
    assert copy.read_bytes() == b"two"

    copy.unlink()
    copy.unlink()  # missing_ok
    assert not copy.exists()
    with pytest.raises(FileNotFoundError):
        copy.unlink(missing_ok=False)
    (root / "d").rmtree()
    (root / "d").rmtree()  # nothing there: nothing done
    assert not a.exists() and not (root / "d" / "sub" / "b.txt").exists() and not (root / "d").is_dir()
    assert [p.name for p in root.iterdir()] in (["e"], [])  # an empty folder (a prefix) may be left or not
    if root.is_local:
        assert not [p for p in root.local_path.rglob("*") if p.name.endswith(".tmp")]


def test_bytes_are_stored_as_given_whatever_the_name(s3_server):
    """pyarrow's streams (de)compress by file extension unless told not to: a ``.gz`` written
    through a Location is the very bytes given, as another S3 client sees it."""
    import boto3
    import gzip

    bucket = _bucket()
    data = gzip.compress(b"idx bytes")
    (Location(bucket) / "d" / "x.gz").write_bytes(data)
    raw = boto3.client("s3").get_object(Bucket=bucket.removeprefix("s3://"), Key="d/x.gz")["Body"].read()
    assert raw == data and (Location(bucket) / "d" / "x.gz").read_bytes() == data


def test_a_failed_write_leaves_the_old_file(root):
    f = root / "state.json"
    f.write_text("old")
    with pytest.raises(TypeError):
        f.write_bytes(object())  # not bytes-like: refused before anything is opened
    assert f.read_text() == "old"
    if root.is_local:
        assert [p.name for p in root.iterdir()] == ["state.json"]  # no temporary left behind


def test_a_missing_file_is_named(root):
    missing = root / "supernets" / "0" / "snapshot.pt"
    with pytest.raises(FileNotFoundError, match=r"snapshot\.pt") as err:
        missing.read_bytes()
    if not root.is_local:
        assert str(missing) in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        missing.copy_to(root / "x.pt")
    assert "snapshot.pt" in str(err.value)


def test_a_location_pickles_as_its_uri_and_reads_in_another_process(root):
    f = root / "a" / "b.txt"
    f.write_text("hello")
    back = pickle.loads(pickle.dumps(f))
    assert back == f and str(back) == str(f) and back.read_text() == "hello"
    if root.is_local:
        return
    # a fresh process opens its own filesystem from the URI (credentials from its environment)
    script = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read()).read_text())"
    done = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(f), capture_output=True, timeout=120)
    assert done.returncode == 0 and done.stdout.decode().strip() == "hello", done.stderr.decode()[-2000:]


def _fill(folder: Location) -> dict[str, bytes]:
    files = {"a.bin": b"a" * 1000, "sub/b.bin": os.urandom(5000), "sub/deeper/c.txt": b"see"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def _tree(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_local_copy_of_a_folder_once_per_content(s3_server, tmp_path):
    folder = Location(_bucket()) / "data" / "set"
    files = _fill(folder)
    cache = tmp_path / "cache"
    got = folder.local_copy(cache)
    assert got.name == "set" and _tree(got) == files
    assert folder.local_copy(cache) == got  # unchanged: the same copy
    (folder / "a.bin").write_bytes(b"changed")
    again = folder.local_copy(cache)
    assert again != got and _tree(again)["a.bin"] == b"changed"
    single = (folder / "sub" / "b.bin").local_copy(cache)
    assert single.name == "b.bin" and single.read_bytes() == files["sub/b.bin"]
    assert not [p for p in cache.rglob(".staging*")]
    with pytest.raises(FileNotFoundError, match=r"s3://.*/data/nothing: no such file or directory"):
        (folder.parent / "nothing").local_copy(cache)
    local = Location(tmp_path / "here")
    assert local.local_copy(cache) == tmp_path / "here"  # a local location is used where it is


COPY = """
import sys, time
from pathlib import Path
from raynas.storage import Location
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.01)
print(Location(sys.argv[1]).local_copy(sys.argv[2]))
"""


def test_concurrent_local_copies_do_not_corrupt_each_other(s3_server, tmp_path):
    folder = Location(_bucket()) / "data" / "set"
    files = {f"part{i:02d}.bin": os.urandom(200_000) for i in range(12)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    cache, go = tmp_path / "cache", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(COPY), str(folder), str(cache), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    go.touch()  # both start copying at once
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1
    assert _tree(Location(paths.pop()).local_path) == files
    assert not [p for p in cache.rglob(".staging*")]


def test_a_dataset_in_a_bucket_loads_as_the_same_files_on_disk(s3_server, tmp_path, monkeypatch):
    monkeypatch.setenv("RAYNAS_CACHE", str(tmp_path / "cache"))
    local = make_fmnist(tmp_path / "fm")
    uri = Location(_bucket()) / "data" / "fashion-mnist"
    for f in local.iterdir():
        (uri / f.name).write_bytes(f.read_bytes())
    want = load_dataset("fashion-mnist", root=local, holdout=10)
    got = load_dataset("fashion-mnist", root=str(uri), holdout=10)
    assert got.fingerprint() == want.fingerprint() and got.sizes() == want.sizes()
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(got, split).images, getattr(want, split).images)
        assert torch.equal(getattr(got, split).labels, getattr(want, split).labels)
    assert [p.name for p in (tmp_path / "cache" / "data").iterdir()]  # the node-local copy
    assert load_dataset("fashion-mnist", root=uri, holdout=10).fingerprint() == want.fingerprint()  # a Location too

    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", root=str(uri.parent / "nope"), holdout=10)
    assert str(uri.parent / "nope") in str(err.value) and "\n" not in str(err.value)
    (uri / "t10k-labels-idx1-ubyte").unlink()  # a missing file: the error names the URI, not the cache
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion-mnist", root=str(uri), holdout=10)
    assert f"{uri} has no t10k-labels-idx1-ubyte" in str(err.value) and str(tmp_path / "cache") not in str(err.value)
    file_uri = load_dataset("fashion-mnist", root=f"file://{local}", holdout=10)
    assert file_uri.fingerprint() == want.fingerprint()
