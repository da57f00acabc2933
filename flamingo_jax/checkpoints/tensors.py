"""Lazy, read-only access to the tensors of a Hugging Face checkpoint directory.

A directory holds `model.safetensors` or `pytorch_model.bin`, or either sharded with an index
(`model.safetensors.index.json` / `pytorch_model.bin.index.json`, whose `weight_map` names each
tensor's file). Opening reads only headers; a tensor is read when asked for, so a checkpoint
larger than host memory is walked one tensor at a time. PyTorch files are memory-mapped by
`torch.load(mmap=True, weights_only=True)` and need torch installed, except those in the legacy
(pre-1.6, non-zip) format, which torch_legacy.py reads without it. A TensorView gathers
tensors of several files (an OpenFlamingo checkpoint, its LM's directory, its CLIP checkpoint)
under one interface.
"""

import json
import pathlib
import struct

import ml_dtypes
import numpy as np
import safetensors

from flamingo_jax.checkpoints.torch_legacy import LegacyTorchFile

# Safetensors dtypes that numpy lacks: read as a memory map of the file's bytes.
RAW_DTYPES = {
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
}

# (index, single file) of each format, in the order they are looked for.
LAYOUTS = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


class SafetensorsFile:
  """One .safetensors file: numpy dtypes through `safe_open`, bfloat16 and float8 from the
  offsets in the file's header."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self.handle = safetensors.safe_open(str(path), framework="numpy")
    with open(path, "rb") as f:
      (size,) = struct.unpack("<Q", f.read(8))
      self.header = json.loads(f.read(size))
    self.data_start = 8 + size

  def keys(self) -> list[str]:
    return [k for k in self.header if k != "__metadata__"]

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self.header[key]["shape"])

  def get(self, key: str) -> np.ndarray:
    info = self.header[key]
    if info["dtype"] not in RAW_DTYPES:
      return self.handle.get_tensor(key)
    begin, _ = info["data_offsets"]
    return np.memmap(self.path, RAW_DTYPES[info["dtype"]], "r", self.data_start + begin,
                     tuple(info["shape"]))


class TorchFile:
  """One PyTorch state dict file, memory-mapped."""

  def __init__(self, path: pathlib.Path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"Reading {path} needs PyTorch (pip install torch); safetensors "
                        "checkpoints do not.") from e
    self.torch = torch
    self.state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)

  def keys(self) -> list[str]:
    return list(self.state)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self.state[key].shape)

  def get(self, key: str) -> np.ndarray:
    t = self.state[key]
    if t.dtype == self.torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits.
      return t.view(self.torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def open_file(path: pathlib.Path):
  """A .safetensors file, or a PyTorch one: zip (torch.save since 1.6) or legacy."""
  if path.suffix == ".safetensors":
    return SafetensorsFile(path)
  with open(path, "rb") as f:
    is_zip = f.read(4) == b"PK\x03\x04"  # How torch.load tells the two formats apart.
  return TorchFile(path) if is_zip else LegacyTorchFile(path)


class CheckpointTensors:
  """name -> tensor of a checkpoint directory; files are opened on first use.

  keys() and shape() read headers only (for PyTorch files: the memory-mapped state dict);
  get(name) returns a numpy array (a memory map where the format allows).
  """

  def __init__(self, directory):
    self.directory = pathlib.Path(directory)
    self.files = {}
    for index, single in LAYOUTS:
      if (self.directory / index).exists():
        self.weight_map = json.loads((self.directory / index).read_text())["weight_map"]
        return
      if (self.directory / single).exists():
        self.weight_map = {k: single for k in self._file(single).keys()}
        return
    raise FileNotFoundError(
        f"{directory} holds no Hugging Face checkpoint: expected one of "
        f"{[name for layout in LAYOUTS for name in layout]}.")

  def _file(self, name: str):
    if name not in self.files:
      self.files[name] = open_file(self.directory / name)
    return self.files[name]

  def keys(self) -> list[str]:
    return list(self.weight_map)

  def __contains__(self, key: str) -> bool:
    return key in self.weight_map

  def shape(self, key: str) -> tuple[int, ...]:
    return self._file(self.weight_map[key]).shape(key)

  def get(self, key: str) -> np.ndarray:
    return self._file(self.weight_map[key]).get(key)


class TensorView:
  """Tensors gathered under names of one's choosing from any files (open_file's) or
  CheckpointTensors: name -> (holder, its key). The interface of CheckpointTensors; nothing is
  read until get(name)."""

  def __init__(self, entries: dict):
    self.entries = entries

  @classmethod
  def of(cls, holder, rename=lambda key: key):
    """Every tensor of `holder`, named rename(key); a None name leaves it out."""
    return cls({name: (holder, key) for key in holder.keys()
                if (name := rename(key)) is not None})

  def __or__(self, other: "TensorView") -> "TensorView":
    """Both views' tensors; `other`'s where both have a name."""
    return TensorView(self.entries | other.entries)

  def keys(self) -> list[str]:
    return list(self.entries)

  def __contains__(self, name: str) -> bool:
    return name in self.entries

  def shape(self, name: str) -> tuple[int, ...]:
    holder, key = self.entries[name]
    return holder.shape(key)

  def get(self, name: str) -> np.ndarray:
    holder, key = self.entries[name]
    return holder.get(key)
