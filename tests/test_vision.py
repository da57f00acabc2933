"""Frozen vision encoders: NFNet-F0..F7 and CLIP / SigLIP-layout ViTs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flamingo_jax.configs.base import nfnet_vision
from flamingo_jax.vision import make_vision_encoder, nfnet
from flamingo_jax.vision.vit import ViT

LOGICAL_AXES = {"embed", "mlp", "heads", "kv", "patches", None}
NFNET_HEAD = 3072 * 1000 + 1000  # The ImageNet classifier the NFNet paper's counts include.


def count(module, size=64):
  """Parameter count from shapes alone (jax.eval_shape: nothing is allocated)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  return sum(x.size for x in jax.tree.leaves(nn.meta.unbox(shapes["params"])))


def tiny_vit(**kw):
  return ViT(**dict(image_size=32, patch_size=8, width=48, depth=2, num_heads=3, mlp_dim=96) | kw)


@pytest.fixture(scope="module")
def f0():
  """NFNet-F0 at init, run on unit-Gaussian images [2, 64, 96, 3] with every block's output."""
  model = nfnet.NFNet("F0")
  images = jax.random.normal(jax.random.key(0), (2, 64, 96, 3))
  # unsafe_rbg compiles the 68M-parameter init in a third of threefry's time on the CPU.
  params = jax.jit(model.init)(jax.random.key(1, impl="unsafe_rbg"), images)
  apply = jax.jit(lambda p, x: model.apply(p, x, capture_intermediates=True,
                                           mutable=["intermediates"]))
  out, state = apply(params, images)
  return out, state["intermediates"]


def test_nfnet_returns_the_final_grid(f0):
  out, _ = f0
  assert out.shape == (2, 2, 3, 3072)  # ceil(64 / 32), ceil(96 / 32); no pooling, no head.
  assert np.isfinite(out).all()


def test_nfnet_parameter_counts_match_the_papers():
  # Flamingo (arXiv 2204.14198, sec. 3): NFNet-F6, 435M. NFNet paper (arXiv 2102.06171,
  # table 1): F6 438.4M and F0 71.5M, both including the 3.07M ImageNet head we leave out.
  f6 = count(nfnet.NFNet("F6"))
  assert abs(f6 / 435e6 - 1) < 0.02, f6
  assert abs((f6 + NFNET_HEAD) / 438.4e6 - 1) < 0.02, f6
  f0 = count(nfnet.NFNet("F0"))
  assert abs(f0 / (71.5e6 - NFNET_HEAD) - 1) < 0.02, f0


def test_vit_l14_parameter_count():
  # CLIP ViT-L/14 visual tower at 224 px WITHOUT its 1024x768 output projection (which we do not
  # build): patch conv 3*14*14*1024 + class token 1024 + positions 257*1024 + ln_pre 2048
  # + 24 blocks * 12,596,224 + ln_post 2048 = 303,179,776 (303.97M with the projection).
  vit = ViT(image_size=224, patch_size=14, width=1024, depth=24, num_heads=16, mlp_dim=4096)
  n = count(vit, 224)
  assert abs(n / 303.18e6 - 1) < 0.005, n


def test_scaled_weight_standardisation():
  """Per output channel the kernel has zero mean and variance gain^2 / fan_in."""
  kernel = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (3, 3, 16, 8))
  gain = jax.random.uniform(jax.random.key(1), (8,), minval=0.5, maxval=2.0)
  w = nfnet.standardize(kernel, gain)
  fan_in = 3 * 3 * 16
  np.testing.assert_allclose(w.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
  np.testing.assert_allclose(w.var(axis=(0, 1, 2)) * fan_in, gain ** 2, rtol=1e-4)

  # So a WSConv cannot tell its raw kernel from any per-channel affine transform of it.
  conv = nfnet.WSConv(8, kernel_size=3, stride=2, groups=2)
  x = jax.random.normal(jax.random.key(2), (2, 9, 9, 32))
  params = nn.meta.unbox(conv.init(jax.random.key(3), x))
  out = conv.apply(params, x)
  assert out.shape == (2, 5, 5, 8)
  kernel = params["params"]["kernel"] * jnp.arange(1.0, 9.0) - 4.0
  transformed = {"params": params["params"] | {"kernel": kernel}}
  np.testing.assert_allclose(conv.apply(transformed, x), out, atol=1e-4)


def test_nfnet_blocks_are_their_shortcuts_at_init(f0):
  """skip_gain starts at 0, so a block that keeps the shape returns its input exactly and only the
  four transitions change the signal."""
  _, inter = f0
  outputs = [inter[f"blocks_{i}"]["__call__"][0] for i in range(sum(nfnet.variant_depths("F0")))]
  transitions = np.cumsum((0,) + nfnet.variant_depths("F0")[:-1])
  for i in range(1, len(outputs)):
    if i not in transitions:
      np.testing.assert_array_equal(outputs[i], outputs[i - 1])
  # Weight-standardised convs and gamma-scaled GELUs keep the stem's output at unit scale.
  stem = inter["stem_conv3"]["__call__"][0]
  assert 0.5 < float(jnp.var(stem)) < 2.0


@pytest.mark.parametrize("std", [1.0, 3.0])
def test_nfnet_transition_restores_unit_variance(std):
  """beta = 1 / (expected std of the input) gives a transition's shortcut a unit-variance input,
  and a weight-standardised conv keeps it there, whatever the scale the stage ended at."""
  block = nfnet.NFBlock(256, stride=1, beta=1.0 / std, alpha=0.2)
  x = std * jax.random.normal(jax.random.key(0), (4, 16, 16, 128))
  params = jax.jit(block.init)(jax.random.key(1), x)
  assert 0.8 < float(jnp.var(jax.jit(block.apply)(params, x))) < 1.25


def test_vit_clip_and_siglip_layouts():
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  clip = tiny_vit(activation="quick_gelu")
  params = nn.meta.unbox(jax.jit(clip.init)(jax.random.key(1), images)["params"])
  assert jax.jit(clip.apply)({"params": params}, images).shape == (2, 16, 48)  # Class token dropped.
  assert set(params) == {"patch_embed", "cls_token", "pos_embed", "pre_norm", "blocks_0",
                         "blocks_1", "final_norm"}
  assert set(params["blocks_0"]) == {"norm1", "attn", "norm2", "mlp"}
  assert "bias" not in params["patch_embed"] and params["pos_embed"].shape == (17, 48)

  siglip = tiny_vit(class_token=False, pre_norm=False, patch_bias=True, activation="gelu_tanh",
                    norm_eps=1e-6)
  params = nn.meta.unbox(jax.jit(siglip.init)(jax.random.key(1), images)["params"])
  assert jax.jit(siglip.apply)({"params": params}, images).shape == (2, 16, 48)
  assert "bias" in params["patch_embed"] and params["pos_embed"].shape == (16, 48)
  assert "cls_token" not in params and "pre_norm" not in params


@pytest.mark.parametrize("module,size", [(tiny_vit(), 32), (nfnet.NFNet("F0"), 64)])
def test_every_parameter_has_logical_axis_names(module, size):
  boxed = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
  for leaf in jax.tree.leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned)):
    assert isinstance(leaf, nn.Partitioned), leaf
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= LOGICAL_AXES, leaf.names


def test_make_vision_encoder(tiny_config):
  vit_cfg = tiny_config.model.vision
  assert isinstance(make_vision_encoder(vit_cfg, jnp.bfloat16, jnp.float32), ViT)
  nf_cfg = ml_collections.ConfigDict(nfnet_vision("F6", 320))
  assert make_vision_encoder(nf_cfg, jnp.bfloat16, jnp.float32).variant == "F6"


@pytest.mark.parametrize("fields,bad", [
    (dict(kind="resnet", image_size=224), "'resnet'"),
    (dict(kind="nfnet", variant="F9", image_size=224), "'F9'"),
    (dict(kind="nfnet", variant="F0", image_size=224, widht=3), "widht"),
])
def test_bad_vision_config_names_the_value(fields, bad):
  cfg = ml_collections.ConfigDict(fields)
  with pytest.raises(ValueError, match=bad):
    make_vision_encoder(cfg, jnp.float32, jnp.float32)
