"""EfficientNet-Lite (the mobile variants of Tan & Le 2019, arXiv 1905.11946, in
tensorflow/tpu models/official/efficientnet/lite), as a frozen image encoder.

Lite is EfficientNet made for integer-only mobile accelerators: no squeeze-excite, ReLU6 for
swish (which quantises badly), and the stem (32) and head (1280) widths fixed whatever the
scaling. BatchNorm runs in inference
mode on the checkpoint's running statistics. Convolutions pad like TensorFlow's "SAME" (more at
the bottom / right when the total is odd), as the PyTorch port's static same-padding does.
images [N, H, W, 3] -> tokens [N, ceil(H/32) * ceil(W/32), 1280], the final grid flattened row
by row; or ImageNet logits [N, 1000] with `classify=True`.
"""

import functools
from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from flamingo_jax.layers.mlp import dense


def conv(features: int, kernel: int, stride: int = 1, groups: int = 1, **kw) -> nn.Conv:
  """A bias-free conv (BatchNorm follows every one) with TensorFlow "SAME" padding."""
  init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # TensorFlow reference's.
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding="SAME",
                 feature_group_count=groups, use_bias=False,
                 kernel_init=nn.with_logical_partitioning(init, (None, None, None, "embed")), **kw)


class FrozenBatchNorm(nn.Module):
  """Inference BatchNorm, (x - mean) / sqrt(var + eps) * scale + bias. x: [..., C].

  The running statistics are parameters, not `batch_stats`: the tower is frozen, and a Flamingo's
  variables are its parameters only.
  """
  eps: float = 1e-3
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    def param(name, init):
      return self.param(name, nn.with_logical_partitioning(init, ("embed",)), (x.shape[-1],),
                        self.param_dtype)
    scale, bias = param("scale", nn.initializers.ones), param("bias", nn.initializers.zeros)
    mean, var = param("mean", nn.initializers.zeros), param("var", nn.initializers.ones)
    # Folded in float32, then one multiply-add in the compute dtype.
    mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var.astype(jnp.float32) + self.eps)
    shift = bias.astype(jnp.float32) - mean.astype(jnp.float32) * mul
    return x * mul.astype(self.dtype) + shift.astype(self.dtype)


class MBConv(nn.Module):
  """Inverted residual: 1x1 expand (none at ratio 1) -> depthwise kxk (stride) -> 1x1 project,
  each followed by BatchNorm, the first two by ReLU6; plus x when the shape is kept.

  x: [N, H, W, Cin] -> [N, ceil(H / stride), ceil(W / stride), features].
  """
  features: int
  kernel: int
  stride: int
  expand_ratio: int
  eps: float = 1e-3
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bn = functools.partial(FrozenBatchNorm, self.eps, **kw)
    hidden = x.shape[-1] * self.expand_ratio
    h = x
    if self.expand_ratio != 1:
      h = jax.nn.relu6(bn(name="expand_bn")(conv(hidden, 1, name="expand_conv", **kw)(h)))
    h = conv(hidden, self.kernel, self.stride, hidden, name="depthwise_conv", **kw)(h)
    h = jax.nn.relu6(bn(name="depthwise_bn")(h))
    h = bn(name="project_bn")(conv(self.features, 1, name="project_conv", **kw)(h))
    if self.stride == 1 and x.shape[-1] == self.features:
      h = h + x
    return h


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite with the given stages (configs.base.LITE0 for Lite0), up to its head conv.

  __call__(images [N, H, W, 3]) -> tokens [N, ceil(H/32) * ceil(W/32), head_width];
  with classify=True -> logits [N, num_classes] float32 of the mean-pooled grid (dropout is
  training-only), which adds the `classifier` parameters.
  """
  repeats: Sequence[int]
  widths: Sequence[int]
  kernels: Sequence[int]
  strides: Sequence[int]
  expand_ratios: Sequence[int]
  stem_width: int = 32
  head_width: int = 1280
  num_classes: int = 1000
  eps: float = 1e-3
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images, *, classify: bool = False):
    chex.assert_rank(images, 4)
    chex.assert_axis_dimension(images, -1, 3)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    bn = functools.partial(FrozenBatchNorm, self.eps, **kw)
    x = conv(self.stem_width, 3, 2, name="stem_conv", **kw)(images.astype(self.dtype))
    x = jax.nn.relu6(bn(name="stem_bn")(x))
    index = 0
    for repeats, width, kernel, stride, expand in zip(
        self.repeats, self.widths, self.kernels, self.strides, self.expand_ratios, strict=True):
      for j in range(repeats):
        x = MBConv(width, kernel, stride if j == 0 else 1, expand, self.eps, **kw,
                   name=f"blocks_{index}")(x)
        x = nn.with_logical_constraint(x, ("batch", None, None, "embed"))
        index += 1
    x = jax.nn.relu6(bn(name="head_bn")(conv(self.head_width, 1, name="head_conv", **kw)(x)))
    if classify:
      pooled = x.astype(jnp.float32).mean(axis=(1, 2))
      return dense(self.num_classes, ("embed", "vocab"), use_bias=True, dtype=jnp.float32,
                   param_dtype=self.param_dtype, name="classifier")(pooled)
    n, h, w, d = x.shape
    return nn.with_logical_constraint(x.reshape(n, h * w, d), ("batch", "length", "embed"))
