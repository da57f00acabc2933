"""NFNet-F0..F7 (Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without
Normalization", arXiv 2102.06171), as a frozen image encoder.

Follows deepmind-research/nfnets (NFNet, NFBlock, WSConv2D, SqueezeExcite) with "SAME" padding
everywhere, but stops before the head: no pooling, classifier, dropout or stochastic depth.
images [N, H, W, 3] -> grid [N, ceil(H/32), ceil(W/32), 3072].
"""

import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from flamingo_jax.layers.mlp import activation, dense

WIDTHS = (256, 512, 1536, 1536)
STRIDES = (1, 2, 2, 2)
DEPTH_PATTERN = (1, 2, 6, 3)  # F0; variant Fk repeats each stage (k + 1) times.
STEM_WIDTHS = (16, 32, 64, WIDTHS[0] // 2)
STEM_STRIDES = (2, 1, 1, 2)
FINAL_WIDTH = 2 * WIDTHS[-1]
# (train, test) resolutions of the paper's table 1 (and F7 of the reference code).
RESOLUTIONS = {"F0": (192, 256), "F1": (224, 320), "F2": (256, 352), "F3": (320, 416),
               "F4": (384, 512), "F5": (416, 544), "F6": (448, 576), "F7": (480, 608)}
# 1 / std(gelu(z)) for z ~ N(0, 1): keeps the activations at unit variance.
GELU_GAMMA = 1.7015043497085571


def gelu(x):
  # The reference's jax.nn.gelu, whose default is the tanh approximation.
  return activation("gelu_tanh")(x) * GELU_GAMMA


def variant_depths(variant: str) -> tuple[int, ...]:
  """Blocks per stage of NFNet-`variant`, e.g. "F6" -> (7, 14, 42, 21)."""
  if variant not in RESOLUTIONS:
    raise ValueError(f"Unknown NFNet variant {variant!r}; choose from {sorted(RESOLUTIONS)}.")
  return tuple(d * (int(variant[1:]) + 1) for d in DEPTH_PATTERN)


def standardize(kernel, gain, eps: float = 1e-4):
  """Scaled weight standardisation: gain * (W - mean) / sqrt(fan_in * var), per output channel.

  kernel: [kh, kw, in, out]; gain: [out]. Statistics are over the fan-in (kh * kw * in).
  """
  kernel = kernel.astype(jnp.float32)
  mean = jnp.mean(kernel, axis=(0, 1, 2), keepdims=True)
  var = jnp.var(kernel, axis=(0, 1, 2), keepdims=True)
  fan_in = math.prod(kernel.shape[:-1])
  return (kernel - mean) * jax.lax.rsqrt(jnp.maximum(var * fan_in, eps)) * gain


class WSConv(nn.Module):
  """Conv2D with scaled weight standardisation, a learned gain and a bias (always on).

  x: [N, H, W, C] -> [N, ceil(H / stride), ceil(W / stride), features].
  """
  features: int
  kernel_size: int = 1
  stride: int = 1
  groups: int = 1
  eps: float = 1e-4
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, "fan_in", "normal"), (None, None, None, "embed")),
        (k, k, x.shape[-1] // self.groups, self.features), self.param_dtype)
    gain = self.param("gain", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                      (self.features,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                      (self.features,), self.param_dtype)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), standardize(kernel, gain, self.eps).astype(self.dtype),
        window_strides=(self.stride, self.stride), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)
    return y + bias.astype(self.dtype)


class SqueezeExcite(nn.Module):
  """Channel gates sigmoid(fc1(relu(fc0(mean_hw(x))))). x: [N, H, W, C] -> [N, 1, 1, C]."""
  hidden_dim: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype)
    h = jnp.mean(x, axis=(1, 2))
    h = jax.nn.relu(dense(self.hidden_dim, ("embed", "mlp"), name="fc0", **kw)(h))
    h = dense(x.shape[-1], ("mlp", "embed"), name="fc1", **kw)(h)
    return jax.nn.sigmoid(h)[:, None, None, :]


class NFBlock(nn.Module):
  """Pre-activation bottleneck: 1x1 -> grouped 3x3 (stride) -> grouped 3x3 -> 1x1 -> SE.

  out = shortcut + alpha * skip_gain * residual(beta * gelu(x)), where beta = 1 / (expected std
  of x) gives the branch a unit-variance input. A block that changes shape (a transition) takes
  its shortcut from that normalised input, avg-pooled if strided, through a 1x1 conv; any other
  block's shortcut is x itself. skip_gain starts at 0 (SkipInit), so at init every block is its
  shortcut. x: [N, H, W, Cin] -> [N, ceil(H / stride), ceil(W / stride), features].
  """
  features: int
  stride: int
  beta: float
  alpha: float
  bottleneck_ratio: float = 0.5
  group_width: int = 128
  se_ratio: float = 0.5
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(WSConv, dtype=self.dtype, param_dtype=self.param_dtype)
    width = int(self.features * self.bottleneck_ratio)
    groups = width // self.group_width
    out = gelu(x) * self.beta
    shortcut = x
    if self.stride > 1:
      # count_include_pad=False matches haiku's SAME avg_pool on odd-sized grids.
      out_pooled = nn.avg_pool(out, (self.stride, self.stride), (self.stride, self.stride),
                               padding="SAME", count_include_pad=False)
      shortcut = conv(self.features, name="conv_shortcut")(out_pooled)
    elif x.shape[-1] != self.features:
      shortcut = conv(self.features, name="conv_shortcut")(out)

    out = conv(width, name="conv0")(out)
    out = conv(width, 3, self.stride, groups, name="conv1")(gelu(out))
    out = conv(width, 3, 1, groups, name="conv1b")(gelu(out))
    out = conv(self.features, name="conv2")(gelu(out))
    # The 2 undoes the sigmoid gates' mean of about 1/2, keeping the branch's variance.
    se = SqueezeExcite(int(self.features * self.se_ratio), dtype=self.dtype,
                       param_dtype=self.param_dtype, name="se")
    out = 2.0 * se(out) * out
    skip_gain = self.param("skip_gain", nn.with_logical_partitioning(nn.initializers.zeros, ()),
                           (), self.param_dtype)
    return shortcut + out * skip_gain.astype(self.dtype) * self.alpha


class NFNet(nn.Module):
  """NFNet-`variant` up to its final 1x1 conv (to 3072 channels) and activation.

  images: [N, H, W, 3] -> features [N, ceil(H/32), ceil(W/32), 3072].
  """
  variant: str
  alpha: float = 0.2
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    chex.assert_rank(images, 4)
    chex.assert_axis_dimension(images, -1, 3)
    conv = functools.partial(WSConv, dtype=self.dtype, param_dtype=self.param_dtype)
    x = images.astype(self.dtype)
    for i, (features, stride) in enumerate(zip(STEM_WIDTHS, STEM_STRIDES)):
      # No activation after the last stem conv: every block starts with one.
      x = conv(features, 3, stride, name=f"stem_conv{i}")(gelu(x) if i else x)

    expected_std, index = 1.0, 0
    for features, depth, stride in zip(WIDTHS, variant_depths(self.variant), STRIDES):
      for j in range(depth):
        x = NFBlock(features, stride if j == 0 else 1, beta=1.0 / expected_std, alpha=self.alpha,
                    dtype=self.dtype, param_dtype=self.param_dtype, name=f"blocks_{index}")(x)
        x = nn.with_logical_constraint(x, ("batch", None, None, "embed"))
        # A transition's shortcut is a conv of a unit-variance input: the variance restarts at 1.
        expected_std = math.sqrt((1.0 if j == 0 else expected_std ** 2) + self.alpha ** 2)
        index += 1

    x = gelu(conv(FINAL_WIDTH, name="final_conv")(x))
    chex.assert_shape(x, (images.shape[0], None, None, FINAL_WIDTH))
    return nn.with_logical_constraint(x, ("batch", None, None, "embed"))
