"""PyTorch's legacy (pre-1.6, non-zip) `torch.save` format, read without torch.

The file is five pickles and the raw storages: a magic number, a protocol version, system info
(byte order), the object itself, whose tensors name their storages by key through persistent
ids, and the list of storage keys in the order their bytes follow, each as an int64 element count
and the elements. The object's pickle is read with only the few globals a state dict needs (as
`torch.load(weights_only=True)` restricts it); the storages are memory-mapped, so nothing is read
before a tensor is asked for. torch itself cannot memory-map this format.
"""

import collections
import pathlib
import pickle
import struct

import ml_dtypes
import numpy as np

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001

STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _Storage:
  """A storage named by the object's pickle, placed in the file once its key list is read."""

  def __init__(self, dtype, numel: int):
    self.dtype, self.numel, self.offset = np.dtype(dtype), numel, None


class _Tensor:
  """`torch._utils._rebuild_tensor_v2`'s arguments, kept until the storages are placed."""

  def __init__(self, storage: _Storage, offset: int, size, stride, *unused):
    del unused  # requires_grad, backward hooks, metadata: nothing a frozen weight needs.
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), stride


class _Unpickler(pickle.Unpickler):
  """The object's pickle: OrderedDicts, tensors and storage types, and nothing else."""

  def __init__(self, file, path):
    super().__init__(file)
    self.path, self.storages = path, {}

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _Tensor
    if module == "torch" and name in STORAGE_DTYPES:
      return STORAGE_DTYPES[name]
    raise pickle.UnpicklingError(
        f"{self.path} pickles {module}.{name}, which a state dict of tensors does not need; "
        "refusing to run it.")

  def persistent_load(self, pid):
    kind, dtype, key, _, numel, view = pid
    if kind != "storage" or view is not None:
      raise pickle.UnpicklingError(f"{self.path}: unsupported persistent id {pid!r}.")
    return self.storages.setdefault(key, _Storage(dtype, numel))


def _load(path: pathlib.Path):
  """The unpickled object, with _Tensor leaves whose storages are placed in the file."""
  with open(path, "rb") as f:
    header = [pickle.load(f) for _ in range(3)]
    if header[:2] != [MAGIC_NUMBER, PROTOCOL_VERSION]:
      raise ValueError(f"{path} is not a legacy PyTorch file (it starts with {header[:2]}).")
    if not header[2].get("little_endian", False):
      raise ValueError(f"{path} was saved on a big-endian machine, which is not supported.")
    unpickler = _Unpickler(f, path)
    obj = unpickler.load()
    for key in pickle.load(f):
      storage = unpickler.storages[key]
      count = f.read(8)
      if len(count) != 8 or struct.unpack("<q", count)[0] != storage.numel:
        raise ValueError(f"{path} is truncated or corrupt: storage {key} should start with its "
                         f"element count, {storage.numel}.")
      storage.offset = f.tell()
      f.seek(storage.numel * storage.dtype.itemsize, 1)
    end = f.tell()
  if end > path.stat().st_size:
    raise ValueError(f"{path} is truncated: its storages end at byte {end}, the file at "
                     f"{path.stat().st_size}.")
  return obj


class LegacyTorchFile:
  """One legacy PyTorch state dict file, memory-mapped; the same interface as TorchFile."""

  def __init__(self, path):
    self.path = pathlib.Path(path)
    state = _load(self.path)
    self.state = {k: v for k, v in state.items() if isinstance(v, _Tensor)}

  def keys(self) -> list[str]:
    return list(self.state)

  def shape(self, key: str) -> tuple[int, ...]:
    return self.state[key].size

  def get(self, key: str) -> np.ndarray:
    t = self.state[key]
    storage = np.memmap(self.path, t.storage.dtype, "r", t.storage.offset, (t.storage.numel,))
    itemsize = t.storage.dtype.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[t.offset:], t.size, tuple(s * itemsize for s in t.stride), writeable=False)
