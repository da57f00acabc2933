"""The legacy (non-zip) torch.save format, read without torch (checkpoints/torch_legacy.py)."""

import collections
import pickle

import numpy as np
import pytest

from flamingo_jax.checkpoints import tensors
from flamingo_jax.checkpoints.efficientnet import efficientnet_lite0_path
from flamingo_jax.checkpoints.torch_legacy import LegacyTorchFile

torch = pytest.importorskip("torch")


def as_numpy(t):
  return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def save_legacy(obj, path):
  torch.save(obj, path, _use_new_zipfile_serialization=False)
  return path


def test_dtypes_views_and_shared_storages(tmp_path):
  x = torch.arange(12.0).reshape(3, 4)
  state = {"matrix": x, "transposed": x.t(), "row": x[1], "empty": torch.zeros(0),
           "bf16": torch.randn(3, dtype=torch.bfloat16), "half": torch.randn(2, 2).half(),
           "scalar": torch.tensor(5), "mask": torch.tensor([True, False]),
           "int8": torch.tensor([-3, 4], dtype=torch.int8)}
  file = LegacyTorchFile(save_legacy(state, tmp_path / "state.pth"))
  assert file.keys() == list(state)
  for key, t in state.items():
    assert file.shape(key) == tuple(t.shape)
    np.testing.assert_array_equal(np.asarray(file.get(key), as_numpy(t).dtype), as_numpy(t))


def test_checkpoint_directory_with_a_legacy_bin(tmp_path):
  state = collections.OrderedDict(w=torch.randn(4, 3), b=torch.randn(4))
  save_legacy(state, tmp_path / "pytorch_model.bin")
  ckpt = tensors.CheckpointTensors(tmp_path)
  assert isinstance(ckpt._file("pytorch_model.bin"),  # pylint: disable=protected-access
                    LegacyTorchFile)
  np.testing.assert_array_equal(ckpt.get("w"), state["w"].numpy())


def test_the_efficientnet_file_reads_as_torch_reads_it():
  path = efficientnet_lite0_path()
  file, state = tensors.open_file(path), torch.load(path, map_location="cpu", weights_only=True)
  assert file.keys() == list(state)
  for key, t in state.items():
    np.testing.assert_array_equal(file.get(key), t.numpy())


def test_refuses_other_globals(tmp_path):
  path = save_legacy({"w": torch.zeros(1), "counts": collections.Counter("ab")},
                     tmp_path / "x.pth")
  with pytest.raises(pickle.UnpicklingError, match="collections.Counter"):
    LegacyTorchFile(path)


def test_truncated_file_is_named(tmp_path):
  path = save_legacy({"w": torch.zeros(1000)}, tmp_path / "x.pth")
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(ValueError, match="truncated"):
    LegacyTorchFile(path)
