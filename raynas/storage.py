"""Where a run lives: a local path, or a URI of any filesystem pyarrow knows (``s3://``,
``gs://``, ``hdfs://``, ``file://``, ...).

:class:`Location` is the one way raynas reads and writes a run's files (row log, searcher state,
tables, supernet snapshots, standalone checkpoints), so no node needs a shared POSIX disk: on a
cluster the run directory is a bucket prefix that the driver, the actors and the trials each
reach on their own. A ``Location`` pickles as its URI and opens its filesystem again where it is
unpickled (each node takes credentials from its own environment: the standard ``AWS_*``
variables, ``AWS_ENDPOINT_URL`` for an S3-protocol server such as MinIO, an instance profile, a
GCS service account). Query parameters of a URI (``s3://b/runs?endpoint_override=host:9000&scheme=http``)
are pyarrow's filesystem options and are kept for every child.

Writes are atomic: a local file goes to a temporary name first and is renamed; an object store
publishes an object only when its upload completes (the object is written from memory in one
call, so a failed upload publishes nothing and the old object stays).
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import shutil
import threading
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(where: str | os.PathLike) -> bool:
    """Whether ``where`` is a URI (``scheme://...``) rather than a local path."""
    return isinstance(where, str) and bool(_SCHEME.match(where))


@functools.lru_cache(maxsize=16)
def _filesystem(root: str):
    """The pyarrow filesystem of a URI's scheme, authority and options (one per process)."""
    from pyarrow import fs as pafs

    try:
        filesystem, _ = pafs.FileSystem.from_uri(root)
    except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{root}: not a storage URI pyarrow can open ({err})") from None
    return filesystem


class Location:
    """A file or directory, local or in object storage. ``loc / "name"`` is a child;
    ``str(loc)`` is the path or URI a user would type; a local one is also path-like."""

    __slots__ = ("_local", "_scheme", "_netloc", "_path", "_query")

    def __init__(self, where: "str | os.PathLike | Location") -> None:
        if isinstance(where, Location):
            self._local, self._scheme, self._netloc, self._path, self._query = (
                where._local, where._scheme, where._netloc, where._path, where._query)
            return
        if is_uri(where):
            parts = urlsplit(where)
            if parts.scheme == "file":
                self._local, self._scheme, self._netloc, self._path, self._query = Path(parts.path), "", "", "", ""
                return
            self._local = None
            self._scheme, self._netloc, self._query = parts.scheme, parts.netloc, parts.query
            self._path = parts.path.strip("/")
        else:
            self._local, self._scheme, self._netloc, self._path, self._query = Path(where), "", "", "", ""

    # --- identity -------------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return self._local is not None

    @property
    def local_path(self) -> Path | None:
        """The local path (``None`` in object storage)."""
        return self._local

    @property
    def filesystem(self):
        """The pyarrow filesystem and the path in it (``None`` for a local location)."""
        if self._local is not None:
            return None
        return _filesystem(self._root())

    @property
    def fs_path(self) -> str:
        """The path inside :attr:`filesystem` (``bucket/key`` for object stores)."""
        if self._local is not None:
            return str(self._local)
        return posixpath.join(self._netloc, self._path) if self._path else self._netloc

    def _root(self) -> str:
        return f"{self._scheme}://{self._netloc}" + (f"?{self._query}" if self._query else "")

    def _child(self, path: str) -> "Location":
        out = Location.__new__(Location)
        out._local, out._scheme, out._netloc, out._query, out._path = None, self._scheme, self._netloc, self._query, path
        return out

    def __truediv__(self, name: str | os.PathLike) -> "Location":
        if self._local is not None:
            return Location(self._local / name)
        name = str(name).strip("/")
        return self._child(posixpath.join(self._path, name) if self._path else name)

    @property
    def name(self) -> str:
        return self._local.name if self._local is not None else posixpath.basename(self._path)

    @property
    def parent(self) -> "Location":
        if self._local is not None:
            return Location(self._local.parent)
        return self._child(posixpath.dirname(self._path))

    def resolve(self) -> "Location":
        """An absolute location (a local path resolved; a URI as it is)."""
        return Location(self._local.resolve()) if self._local is not None else self

    def __str__(self) -> str:
        if self._local is not None:
            return str(self._local)
        return f"{self._scheme}://{self._netloc}/{self._path}" + (f"?{self._query}" if self._query else "")

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __fspath__(self) -> str:
        if self._local is None:
            raise TypeError(f"{self} is in object storage, not a local path")
        return str(self._local)

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __reduce__(self):
        # the URI travels, never an open filesystem: each process opens its own with its own credentials
        return (Location, (str(self),))

    # --- queries --------------------------------------------------------------------------------
    def _info(self):
        return self.filesystem.get_file_info(self.fs_path)

    def exists(self) -> bool:
        if self._local is not None:
            return self._local.exists()
        from pyarrow.fs import FileType

        return self._info().type != FileType.NotFound

    def is_file(self) -> bool:
        if self._local is not None:
            return self._local.is_file()
        from pyarrow.fs import FileType

        return self._info().type == FileType.File

    def is_dir(self) -> bool:
        """A directory; in object storage, a prefix that holds at least one object."""
        if self._local is not None:
            return self._local.is_dir()
        from pyarrow.fs import FileType

        return self._info().type == FileType.Directory

    def iterdir(self) -> list["Location"]:
        """The direct children (none if the directory does not exist)."""
        if self._local is not None:
            return sorted(Location(p) for p in self._local.iterdir()) if self._local.is_dir() else []
        from pyarrow.fs import FileSelector

        infos = self.filesystem.get_file_info(FileSelector(self.fs_path, allow_not_found=True))
        return sorted(self / posixpath.basename(i.path) for i in infos)

    def __lt__(self, other: "Location") -> bool:
        return str(self) < str(other)

    # --- reads and writes -----------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        if self._local is not None:
            return self._local.read_bytes()
        try:
            with self.filesystem.open_input_stream(self.fs_path, compression=None) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self}: no such file") from None
        except OSError as err:
            if not self.exists():
                raise FileNotFoundError(f"{self}: no such file") from None
            raise OSError(f"{self}: {err}") from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file atomically (a reader sees the old file or the new one)."""
        # not bytes-like: refused before anything is opened (an object store's stream, once
        # opened, publishes whatever it holds when it is closed, even by an exception)
        data = memoryview(data)
        if self._local is not None:
            self._local.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temporary(self._local)
            try:
                tmp.write_bytes(data)
                os.replace(tmp, self._local)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return
        try:
            with self.filesystem.open_output_stream(self.fs_path, compression=None) as f:
                f.write(data)
        except OSError as err:
            raise OSError(f"{self}: cannot write ({err})") from None

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def copy_to(self, target: "Location") -> None:
        """``target`` becomes a copy of this file (a hard link where a local file system has them;
        a server-side copy in an object store), atomically."""
        target = Location(target)
        if self._local is not None and target._local is not None:
            if not self._local.is_file():
                raise FileNotFoundError(f"{self}: no such file")
            tmp = _temporary(target._local)
            target._local.parent.mkdir(parents=True, exist_ok=True)
            try:
                try:
                    os.link(self._local, tmp)
                except OSError:  # no hard links here (another device, a file system without them)
                    shutil.copyfile(self._local, tmp)
                os.replace(tmp, target._local)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        elif self._local is None and target._local is None and self._root() == target._root():
            try:
                self.filesystem.copy_file(self.fs_path, target.fs_path)
            except OSError as err:
                if not self.is_file():
                    raise FileNotFoundError(f"{self}: no such file") from None
                raise OSError(f"{self} -> {target}: cannot copy ({err})") from None
        else:
            target.write_bytes(self.read_bytes())

    def mkdir(self) -> None:
        """Make the directory and its parents (a no-op in object storage: prefixes need no making)."""
        if self._local is not None:
            self._local.mkdir(parents=True, exist_ok=True)

    def unlink(self, missing_ok: bool = True) -> None:
        if self._local is not None:
            self._local.unlink(missing_ok=missing_ok)
            return
        try:
            self.filesystem.delete_file(self.fs_path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        """Delete the directory and all below it (nothing if it does not exist)."""
        if self._local is not None:
            shutil.rmtree(self._local, ignore_errors=True)
            return
        try:
            if self._path:
                self.filesystem.delete_dir(self.fs_path)
            else:  # a bucket's root: empty it, never delete the bucket itself
                self.filesystem.delete_dir_contents(self.fs_path, missing_dir_ok=True)
        except OSError:  # gone already, or never there (a bucket that does not exist): as shutil's ignore_errors
            pass

    def local_copy(self, cache: str | os.PathLike) -> Path:
        """A local copy of this directory (all below it) or file, under ``cache``; a local location
        is returned as it is. For inputs such as a dataset folder in a bucket.

        Copied once per content: the copy's folder is named by the URI and the listing (every
        file's relative path, size and modification time), so a changed source is copied again
        and an unchanged one never. Safe for concurrent processes on one node: each downloads to
        its own staging folder and renames it into place; the first rename wins, the others drop
        their copy, and nobody ever sees a partial one. Raises ``FileNotFoundError`` naming the URI
        when nothing is there."""
        if self._local is not None:
            return self._local
        import hashlib
        import tempfile

        from pyarrow import fs as pafs

        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{self}: no such file or directory")
        if info.type == pafs.FileType.File:
            listing = [(self.name, info.size, info.mtime_ns)]
        else:
            base = self.fs_path.rstrip("/") + "/"
            found = self.filesystem.get_file_info(pafs.FileSelector(self.fs_path, recursive=True))
            listing = sorted((i.path[len(base):], i.size, i.mtime_ns) for i in found if i.type == pafs.FileType.File)
        digest = hashlib.sha1(repr((str(self), listing)).encode()).hexdigest()[:16]
        target = Path(cache).expanduser() / digest / (self.name or self._netloc)
        if target.exists():  # only ever a finished copy: it appears by one rename
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging.", dir=target.parent))
        try:
            item = staging / target.name
            if info.type == pafs.FileType.File:
                item.write_bytes(self.read_bytes())
            else:
                item.mkdir()
                pafs.copy_files(self.fs_path, str(item), source_filesystem=self.filesystem,
                                destination_filesystem=pafs.LocalFileSystem())
            try:
                os.rename(item, target)
            except OSError:
                if not target.exists():  # not another process's finished copy: a real failure
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _temporary(path: Path) -> Path:
    """A temporary sibling of ``path`` that no other process or thread uses."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def locations(paths: Iterable[str | os.PathLike]) -> list[Location]:
    return [Location(p) for p in paths]
