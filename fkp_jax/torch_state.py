"""Read PyTorch checkpoints (``torch.save`` files) into NumPy arrays without PyTorch and safely.

Both on-disk formats are supported: the zip archive of PyTorch >= 1.6 (``FKP_x*.pt``, the golden
state dicts) and the legacy stream of magic number + pickles + raw storages (``usrnet_tiny.pth``).
The pickle is read by a restricted unpickler that resolves only the handful of globals a state
dict needs (tensor rebuild, storage types, OrderedDict); anything else raises, so a malicious file
cannot execute code. Tensors saved on CUDA load as host arrays (the device tag is ignored).

``load_state_dict(path, lazy=True)`` streams a zip-format file: its values are ``LazyTensor``s (shape and
dtype known, data read from the archive only when asked for, one tensor at a time, nothing cached), so a
multi-GB checkpoint converts within the memory of its largest tensor plus what the caller keeps.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class CheckpointError(ValueError):
    """A file that is not a readable PyTorch state-dict checkpoint."""


class _StorageType:
    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    """torch._utils._rebuild_tensor_v2 on a flat NumPy storage (element strides)."""
    if isinstance(storage, _StorageRef):  # legacy format: the data follows the main pickle
        return _PendingTensor(storage.key, (offset, size, stride))
    if isinstance(storage, _LazyStorage):  # zip format read lazily: data read on demand
        return LazyTensor(storage.path, storage.member, storage.dtype, offset, size, stride)
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(storage[offset])
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(s * itemsize for s in stride))
    return np.array(view)  # own the memory


class _Unpickler(pickle.Unpickler):
    """Resolves only what a state dict of tensors needs; everything else is refused."""

    def __init__(self, file, load_storage):
        super().__init__(file)
        self._load_storage = load_storage

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "torch" and name == "device":
            return str
        raise CheckpointError(f"refusing to load {module}.{name} from a checkpoint (not a plain state dict)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        return self._load_storage(storage_type, key)


class LazyTensor:
    """A tensor of a zip-format checkpoint not read yet: ``shape``, ``dtype``, ``load()`` / ``np.asarray(t)``
    reads it (fresh each time; the archive is opened per read, so nothing stays open or cached)."""

    def __init__(self, path: Path, member: str, dtype, offset, size, stride):
        self.path, self.member, self.dtype = path, member, np.dtype(dtype)
        self.shape, self._args = tuple(size), (offset, tuple(size), tuple(stride))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def load(self) -> np.ndarray:
        try:
            with zipfile.ZipFile(self.path) as zf:
                storage = np.frombuffer(zf.read(self.member), dtype=self.dtype)
            return _rebuild_tensor(storage, *self._args)
        except Exception as exc:  # truncated / changed file
            raise CheckpointError(f"{self.path}: cannot read tensor data {self.member} "
                                  f"({type(exc).__name__}: {exc})") from None

    def __array__(self, dtype=None, copy=None):
        a = self.load()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self):
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"


class _LazyStorage:
    def __init__(self, path: Path, member: str, dtype):
        self.path, self.member, self.dtype = path, member, dtype


def _load_zip_lazy(path: Path) -> object:
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl")]
        if not pkl:
            raise CheckpointError(f"{path}: zip file without data.pkl (not a PyTorch checkpoint)")
        prefix = pkl[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")

        def load_storage(storage_type, key):
            member = f"{prefix}data/{key}"
            if member not in names:
                raise CheckpointError(f"{path}: missing tensor data {member}")
            return _LazyStorage(path, member, storage_type.dtype)

        return _Unpickler(io.BytesIO(zf.read(pkl[0])), load_storage).load()


def _load_zip(path: Path) -> object:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl")]
        if not pkl:
            raise CheckpointError(f"{path}: zip file without data.pkl (not a PyTorch checkpoint)")
        prefix = pkl[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in names and zf.read(order).strip() != b"little":
            raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
        cache: dict[str, np.ndarray] = {}

        def load_storage(storage_type, key):
            if key not in cache:
                raw = zf.read(f"{prefix}data/{key}")
                cache[key] = np.frombuffer(raw, dtype=storage_type.dtype)
            return cache[key]

        return _Unpickler(io.BytesIO(zf.read(pkl[0])), load_storage).load()


def _load_legacy(path: Path) -> object:
    data = path.read_bytes()
    f = io.BytesIO(data)

    def plain_load():
        return _Unpickler(f, lambda *_: (_ for _ in ()).throw(CheckpointError("storage in header"))).load()

    if plain_load() != _LEGACY_MAGIC:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    plain_load()  # protocol version
    plain_load()  # sys info
    dtypes: dict[str, np.dtype] = {}

    def load_storage(storage_type, key):
        dtypes[key] = storage_type.dtype
        return _StorageRef(key)

    obj = _Unpickler(f, load_storage).load()
    keys = _Unpickler(f, None).load()
    arrays = {}
    for key in map(str, keys):
        (numel,) = struct.unpack("<q", f.read(8))
        arrays[key] = np.frombuffer(f.read(numel * dtypes[key].itemsize), dtype=dtypes[key])
    return _resolve(obj, arrays)


class _StorageRef:
    def __init__(self, key):
        self.key = key


class _PendingTensor:
    def __init__(self, key, args):
        self.key, self.args = key, args


def _resolve(obj, arrays):
    if isinstance(obj, _PendingTensor):
        return _rebuild_tensor(arrays[obj.key], *obj.args)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, arrays)) for k, v in obj.items())
    return obj


def load_state_dict(path: str | Path, lazy: bool = False) -> dict[str, np.ndarray]:
    """Read a ``torch.save`` file; return its (possibly nested) dict with NumPy arrays for tensors.

    ``lazy=True``: for zip-format files the tensors are ``LazyTensor``s (read one at a time on demand, see
    the module docstring); legacy-format files are read whole as without it (plain arrays).
    Raises ``CheckpointError`` (a ``ValueError``) with a one-line message for anything that is not a
    PyTorch checkpoint of plain tensors, and ``FileNotFoundError`` for a missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip_lazy(path) if lazy else _load_zip(path)
        return _load_legacy(path)
    except CheckpointError:
        raise
    except Exception as exc:  # truncated file, random bytes, text, ...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
