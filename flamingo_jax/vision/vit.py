"""ViT image encoder in the CLIP / OpenCLIP / SigLIP layout (pre-norm blocks), without a head.

Settings: OpenAI CLIP: class_token, pre_norm, patch_bias=False, activation="quick_gelu";
OpenCLIP: the same with "gelu"; SigLIP: no class token or pre_norm, patch_bias=True,
"gelu_tanh", norm_eps=1e-6.
images [N, H, W, 3] -> patch tokens [N, (H/p)*(W/p), D] after final_norm, class token dropped
(OpenFlamingo's use of open_clip), or kept first (`keep_class_token`: IDEFICS reads CLIP's
last_hidden_state, [N, 1 + (H/p)*(W/p), D]).
"""

import functools

import chex
import flax.linen as nn
import jax.numpy as jnp

from flamingo_jax.layers.attention import MultiHeadAttention
from flamingo_jax.layers.mlp import Mlp
from flamingo_jax.layers.norms import make_norm


class EncoderBlock(nn.Module):
  """x + attn(norm1(x)), then x + mlp(norm2(x)); all tokens see each other. x: [N, S, D]."""
  num_heads: int
  mlp_dim: int
  activation: str
  norm_eps: float
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(make_norm, "layer", eps=self.norm_eps, **kw)
    _, s, d = x.shape
    h = norm(name="norm1")(x)
    h = MultiHeadAttention(self.num_heads, d // self.num_heads, qkv_bias=True, out_bias=True,
                           name="attn", **kw)(h, h, jnp.ones((1, 1, s, s), bool))
    x = x + h
    x = x + Mlp(self.mlp_dim, self.activation, use_bias=True, name="mlp", **kw)(
        norm(name="norm2")(x))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class ViT(nn.Module):
  """images: [N, image_size, image_size, 3] -> tokens [N, (image_size // patch_size)**2, width],
  the class token's first when `keep_class_token`."""
  image_size: int
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  class_token: bool = True
  pre_norm: bool = True
  final_norm: bool = True
  activation: str = "quick_gelu"
  norm_eps: float = 1e-5
  patch_bias: bool = False
  keep_class_token: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    if self.width % self.num_heads:
      raise ValueError(f"ViT width {self.width} is not divisible by num_heads {self.num_heads}.")
    chex.assert_shape(images, (None, self.image_size, self.image_size, 3))
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(make_norm, "layer", eps=self.norm_eps, **kw)
    d = self.width
    x = nn.Conv(
        d, (self.patch_size, self.patch_size), strides=self.patch_size, padding="VALID",
        use_bias=self.patch_bias,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (None, None, None, "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name="patch_embed", **kw)(images.astype(self.dtype))
    n, gh, gw, _ = x.shape
    x = x.reshape(n, gh * gw, d)

    # CLIP's initialisation scale for both the class token and the position embeddings.
    init = nn.initializers.normal(stddev=d ** -0.5)
    if self.class_token:
      cls = self.param("cls_token", nn.with_logical_partitioning(init, ("embed",)), (d,),
                       self.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, d)), x], axis=1)
    pos = self.param("pos_embed", nn.with_logical_partitioning(init, ("patches", "embed")),
                     (x.shape[1], d), self.param_dtype)
    x = x + pos.astype(self.dtype)
    if self.pre_norm:
      x = norm(name="pre_norm")(x)

    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.activation, self.norm_eps,
                       name=f"blocks_{i}", **kw)(x)
    if self.final_norm:
      x = norm(name="final_norm")(x)
    if self.keep_class_token:
      return x
    return x[:, int(self.class_token):]
