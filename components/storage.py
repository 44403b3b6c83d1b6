"""Scratch files of multi-step stages on a local disk, a shared filesystem or ``s3://``.

S3 goes through s3fs, which (through botocore) takes the endpoint and credentials from the standard
environment: ``AWS_ENDPOINT_URL`` (MinIO, moto, any S3-compatible store; unset for AWS itself),
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or a profile, ``~/.aws``) and ``AWS_DEFAULT_REGION``.
No S3 setting lives in params.yaml except per-source ``storage_options`` (see docs/storage.md).

Arrays are ``.npy`` files. Locally they are memory-mapped; on an object store a row range is one ranged
GET, so a worker reads one band of MinHash signatures without fetching the whole file.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import uuid
from collections.abc import Iterator

import numpy as np
from numpy.lib import format as npy_format

from components.shards import filesystem

#: Bytes that always hold a ``.npy`` header (format 1.0: at most 10 + 65535).
NPY_HEADER_MAX_BYTES = 65_546
_NPY_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


def is_remote(path: str) -> bool:
    """Whether ``path`` is an object-store URL (``s3://``…) rather than a local path."""
    return "://" in path and not path.startswith("file://")


@contextlib.contextmanager
def work_directory(base: str | None, prefix: str) -> Iterator[str]:
    """A fresh scratch directory, removed afterwards, even on failure.

    Under ``base`` (a path every worker can read: a shared filesystem or ``s3://bucket/prefix``), or a local
    temporary directory when ``base`` is ``None``.
    """
    if base is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as local:
            yield local
        return
    base = base if is_remote(base) else os.path.abspath(base)
    path = f"{base.rstrip('/')}/{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fs, fs_path = filesystem(path)
    fs.makedirs(fs_path, exist_ok=True)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(fs_path, recursive=True)


def save_array(path: str, array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file (local or remote)."""
    if not is_remote(path):
        np.save(path, array, allow_pickle=False)
        return
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    fs, fs_path = filesystem(path)
    fs.pipe_file(fs_path, buffer.getvalue())


def load_array(path: str) -> np.ndarray:
    """A ``.npy`` file: memory-mapped when local (pages are read on use), read whole when remote."""
    if not is_remote(path):
        return np.load(path, mmap_mode="r")
    fs, fs_path = filesystem(path)
    return np.load(io.BytesIO(fs.cat_file(fs_path)), allow_pickle=False)


def load_rows(path: str, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` (first axis) of a C-ordered ``.npy`` file; remote: two ranged reads only."""
    if not is_remote(path):
        return np.load(path, mmap_mode="r")[start:stop]
    fs, fs_path = filesystem(path)
    header = io.BytesIO(fs.cat_file(fs_path, start=0, end=NPY_HEADER_MAX_BYTES))
    version = npy_format.read_magic(header)
    if version not in _NPY_HEADER_READERS:
        raise ValueError(f"{path}: unsupported .npy format version {version}")
    shape, fortran_order, dtype = _NPY_HEADER_READERS[version](header)
    if fortran_order or not shape:
        raise ValueError(f"{path}: expected a C-ordered array with at least one axis")
    start, stop = min(start, shape[0]), min(stop, shape[0])
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    count = max(stop - start, 0)
    if count == 0 or row_bytes == 0:
        return np.empty((count, *shape[1:]), dtype=dtype)
    offset = header.tell() + start * row_bytes
    data = fs.cat_file(fs_path, start=offset, end=offset + count * row_bytes)
    return np.frombuffer(data, dtype=dtype).reshape((count, *shape[1:]))
