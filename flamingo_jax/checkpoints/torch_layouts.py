"""The vocabulary the families' tables are written in: torch modules' weights as this library's
Flax parameters (engine.Source), and transformers' names of activations.

Conventions undone here:
- torch `Linear` weights are [out, in]; Dense kernels are [in, out]. GPT-2's `Conv1D` weights
  are already [in, out].
- torch `Conv2d` weights are [O, I / groups, H, W]; Flax Conv kernels [H, W, I / groups, O].
- Attention kernels are per head: q/k/v [D, H, Dh], out [H, Dh, D]. Fused projections stack
  [q | k | v] along the output features (GPT-2 `c_attn`, MPT `Wqkv`, torch's
  MultiheadAttention `in_proj`) or interleave them per head (GPT-NeoX `query_key_value`).
"""

import numpy as np

from flamingo_jax.checkpoints.engine import Source, identity, same

# transformers' activation names (config.json's hidden_act) -> flamingo_jax.layers.mlp's.
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def linear(target: str, key: str, n_in: int, n_out: int, bias: bool,
           conv1d: bool = False) -> dict[str, Source]:
  """A torch Linear (weight [out, in]) or GPT-2 Conv1D ([in, out]) -> Dense kernel [in, out]."""
  out = {f"{target}/kernel": Source((f"{key}.weight",), ((n_in, n_out),), identity) if conv1d
         else Source((f"{key}.weight",), ((n_out, n_in),), np.transpose)}
  if bias:
    out[f"{target}/bias"] = same(f"{key}.bias", (n_out,))
  return out


def layer_norm(target: str, key: str, dim: int, bias: bool = True) -> dict[str, Source]:
  """A torch LayerNorm or RMSNorm (weight, bias) -> scale, bias."""
  out = {f"{target}/scale": same(f"{key}.weight", (dim,))}
  if bias:
    out[f"{target}/bias"] = same(f"{key}.bias", (dim,))
  return out


def conv_kernel(w):
  """torch Conv2d weight [O, I, H, W] -> Flax Conv kernel [H, W, I, O]."""
  return w.transpose(2, 3, 1, 0)


def conv(target: str, key: str, n_out: int, n_in: int, size: int,
         bias: bool = False) -> dict[str, Source]:
  """A torch Conv2d of `size` x `size` from `n_in` (per group) to `n_out` channels."""
  out = {f"{target}/kernel": Source((f"{key}.weight",), ((n_out, n_in, size, size),),
                                    conv_kernel, change="[O, I, H, W] -> [H, W, I, O]")}
  if bias:
    out[f"{target}/bias"] = same(f"{key}.bias", (n_out,))
  return out


def heads_kernel(w, heads, dh):
  """[heads * Dh, D] -> [D, heads, Dh]."""
  return w.T.reshape(w.shape[1], heads, dh)


def heads_bias(b, heads, dh):
  return b.reshape(heads, dh)


def fused_part(x, part, heads, dh, per_head, conv1d, parts=3):
  """Query (part 0), key (1) or value (2) of a fused projection: weight -> [D, H, Dh],
  bias -> [H, Dh]. With parts=2, key (0) or value (1) of a fused [k | v] projection."""
  if conv1d:
    x = x.T  # [3 H Dh, D] like a Linear weight.
  split = (heads, parts, dh) if per_head else (parts, heads, dh)
  x = x.reshape(split + x.shape[1:])
  x = x[:, part] if per_head else x[part]
  return x if x.ndim == 2 else x.transpose(2, 0, 1)


def out_kernel(w, heads, dh, conv1d):
  """Output projection, Linear [D, H Dh] or Conv1D [H Dh, D] -> [H, Dh, D]."""
  w = w if conv1d else w.T
  return w.reshape(heads, dh, w.shape[-1])
