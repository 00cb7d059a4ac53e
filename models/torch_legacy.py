"""Reads a PyTorch state_dict saved in the legacy (pre-1.6, non-zip) torch.save format with the
standard library and numpy only: no torch needed.

The file is a run of pickles: a magic number, a protocol version, system info, the object itself
(tensors refer to storages by persistent id), the list of storage keys, then each storage's
raw bytes (an 8-byte little-endian element count, then the elements).
"""
import collections
import pickle
import struct

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C

DTYPES = {
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


class _Storage:
    def __init__(self, dtype, key):
        self.dtype, self.key, self.data = dtype, key, None


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def numpy(self):
        item = np.dtype(self.storage.dtype).itemsize
        if not self.size:
            return self.storage.data[self.offset].copy()
        return np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset:], shape=self.size, strides=[s * item for s in self.stride]
        ).copy()


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _Tensor(storage, offset, size, stride)


class _StorageType:
    def __init__(self, name):
        self.name = name


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, storages):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected class {module}.{name} in a state_dict")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _size = pid[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(DTYPES[storage_type.name], key)
        return self.storages[key]


def load_state_dict(path):
    """The state_dict as an ordered mapping of names to numpy arrays."""
    with open(path, "rb") as f:
        if pickle.load(f) != MAGIC:
            raise ValueError(f"{path} is not a legacy torch.save file")
        pickle.load(f)  # protocol version
        pickle.load(f)  # system info
        storages = {}
        obj = _Unpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            (count,) = struct.unpack("<q", f.read(8))
            s = storages[key]
            s.data = np.frombuffer(f.read(count * np.dtype(s.dtype).itemsize), dtype=s.dtype)
    return collections.OrderedDict((k, v.numpy()) for k, v in obj.items() if isinstance(v, _Tensor))
