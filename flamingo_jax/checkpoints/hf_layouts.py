"""Where each DecoderLM parameter lives in a Hugging Face checkpoint, per model family.

`layout(model_type, config, names)` maps every parameter path of `DecoderLM(config)`
("layers_0/attention/query/kernel") to a `Source`: the checkpoint tensors it is made of, the
shapes those must have, and the function that turns them into the parameter. Checkpoint
conventions undone here:
- torch `Linear` weights are [out, in]; Dense kernels are [in, out]. GPT-2's `Conv1D` weights
  are already [in, out].
- Attention kernels are per head: q/k/v [D, H, Dh], out [H, Dh, D].
- Fused QKV projections: GPT-2 `c_attn` and MPT `Wqkv` stack [q | k | v] along the output
  features; GPT-NeoX `query_key_value` interleaves them per head ([H, 3, Dh]).

The public helpers (`Source`, `same`, `linear`, `layer_norm`, `heads_kernel`, ...) describe
torch layouts of any model: the vision towers' and OpenFlamingo's layouts use them too.
"""

import dataclasses
import functools
from typing import Callable, Collection

import numpy as np

from flamingo_jax.lm.model import LMConfig

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Source:
  """A parameter is `fn(*tensors)` of the checkpoint tensors `keys`, of shapes `shapes`."""
  keys: tuple[str, ...]
  shapes: tuple[Shape, ...]
  fn: Callable[..., np.ndarray]


def identity(x):
  return x


def same(key: str, shape: Shape) -> Source:
  return Source((key,), (shape,), identity)


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


def _norm(target: str, key: str, c: LMConfig) -> dict[str, Source]:
  return layer_norm(target, key, c.embed_dim, bias=c.norm == "layer" and c.norm_bias)


def heads_kernel(w, heads, dh):
  """[heads * Dh, D] -> [D, heads, Dh]."""
  return w.T.reshape(w.shape[1], heads, dh)


def heads_bias(b, heads, dh):
  return b.reshape(heads, dh)


def _separate_qkv(target: str, prefix: str, names: tuple[str, str, str], c: LMConfig
                  ) -> dict[str, Source]:
  """q, k, v Linear projections `prefix + name` (weights [heads * Dh, D])."""
  out = {}
  for ours, theirs, heads in zip(("query", "key", "value"), names,
                                 (c.num_heads, c.kv_heads, c.kv_heads)):
    key = f"{prefix}{theirs}"
    out[f"{target}/{ours}/kernel"] = Source(
        (f"{key}.weight",), ((heads * c.dh, c.embed_dim),),
        functools.partial(heads_kernel, heads=heads, dh=c.dh))
    if c.qkv_bias:
      out[f"{target}/{ours}/bias"] = Source(
          (f"{key}.bias",), ((heads * c.dh,),),
          functools.partial(heads_bias, heads=heads, dh=c.dh))
  return out


def fused_part(x, part, heads, dh, per_head, conv1d, parts=3):
  """Query (part 0), key (1) or value (2) of a fused projection: weight -> [D, H, Dh],
  bias -> [H, Dh]. With parts=2, key (0) or value (1) of a fused [k | v] projection."""
  if conv1d:
    x = x.T  # [3 H Dh, D] like a Linear weight.
  split = (heads, parts, dh) if per_head else (parts, heads, dh)
  x = x.reshape(split + x.shape[1:])
  x = x[:, part] if per_head else x[part]
  return x if x.ndim == 2 else x.transpose(2, 0, 1)


def _fused_qkv(target: str, key: str, c: LMConfig, per_head: bool,
               conv1d: bool = False) -> dict[str, Source]:
  """One projection to [q | k | v] (per_head=False) or to heads of [q | k | v] (True)."""
  d, h, dh = c.embed_dim, c.num_heads, c.dh
  if c.kv_heads != h:
    raise ValueError(f"{key} projects queries, keys and values for {h} heads each, but the LM "
                     f"config has num_kv_heads={c.kv_heads}.")
  out = {}
  for part, ours in enumerate(("query", "key", "value")):
    split = dict(part=part, heads=h, dh=dh, per_head=per_head)
    out[f"{target}/{ours}/kernel"] = Source(
        (f"{key}.weight",), ((d, 3 * h * dh) if conv1d else (3 * h * dh, d),),
        functools.partial(fused_part, conv1d=conv1d, **split))
    if c.qkv_bias:
      out[f"{target}/{ours}/bias"] = Source(
          (f"{key}.bias",), ((3 * h * dh,),), functools.partial(fused_part, conv1d=False, **split))
  return out


def out_kernel(w, heads, dh, conv1d):
  """Output projection, Linear [D, H Dh] or Conv1D [H Dh, D] -> [H, Dh, D]."""
  w = w if conv1d else w.T
  return w.reshape(heads, dh, w.shape[-1])


def _out_proj(target: str, key: str, c: LMConfig, conv1d: bool = False) -> dict[str, Source]:
  d, hd = c.embed_dim, c.num_heads * c.dh
  out = {f"{target}/kernel": Source(
      (f"{key}.weight",), ((hd, d) if conv1d else (d, hd),),
      functools.partial(out_kernel, heads=c.num_heads, dh=c.dh, conv1d=conv1d))}
  if c.out_bias:
    out[f"{target}/bias"] = same(f"{key}.bias", (d,))
  return out


def _mlp(target: str, prefix: str, names: tuple[str, ...], c: LMConfig,
         conv1d: bool = False) -> dict[str, Source]:
  """(gate, up, down) or (in, out) projections named `prefix + name`."""
  d, f = c.embed_dim, c.mlp_dim
  ours = (("gate", d, f), ("up", d, f), ("wo", f, d)) if c.gated_mlp else (
      ("wi", d, f), ("wo", f, d))
  out = {}
  for (name, n_in, n_out), theirs in zip(ours, names):
    out |= linear(f"{target}/{name}", prefix + theirs, n_in, n_out, c.mlp_bias, conv1d)
  return out


def _embeddings(c: LMConfig, embed: str, head: str, positions: str | None = None
                ) -> dict[str, Source]:
  out = {"embedder/embedding": same(embed, (c.vocab_size, c.embed_dim))}
  if not c.tie_embeddings:
    out |= linear("unembed", head, c.embed_dim, c.vocab_size, False)
  if positions is not None and c.position == "learned":
    out["position_embedder/embedding"] = same(positions, (c.max_length, c.embed_dim))
  return out


def _prefix(names: Collection[str], prefix: str, probe: str) -> str:
  """`prefix` unless the checkpoint stores the bare model (`probe` without it)."""
  return "" if probe in names and prefix + probe not in names else prefix


def _llama(c: LMConfig, names: Collection[str]) -> dict[str, Source]:
  """LLaMA 1/2/3, Mistral, Qwen2, SmolLM, TinyLlama (`LlamaForCausalLM` and relatives)."""
  p = _prefix(names, "model.", "embed_tokens.weight")
  out = _embeddings(c, f"{p}embed_tokens.weight", "lm_head")
  for i in range(c.num_layers):
    hf, ours = f"{p}layers.{i}.", f"layers_{i}/"
    out |= _norm(ours + "attention_norm", hf + "input_layernorm", c)
    out |= _separate_qkv(ours + "attention", hf + "self_attn.", ("q_proj", "k_proj", "v_proj"), c)
    out |= _out_proj(ours + "attention/out", hf + "self_attn.o_proj", c)
    out |= _norm(ours + "mlp_norm", hf + "post_attention_layernorm", c)
    out |= _mlp(ours + "mlp", hf + "mlp.", ("gate_proj", "up_proj", "down_proj"), c)
  return out | _norm("final_norm", f"{p}norm", c)


def _gpt2(c: LMConfig, names: Collection[str]) -> dict[str, Source]:
  p = _prefix(names, "transformer.", "wte.weight")
  out = _embeddings(c, f"{p}wte.weight", "lm_head", f"{p}wpe.weight")
  for i in range(c.num_layers):
    hf, ours = f"{p}h.{i}.", f"layers_{i}/"
    out |= _norm(ours + "attention_norm", hf + "ln_1", c)
    out |= _fused_qkv(ours + "attention", hf + "attn.c_attn", c, per_head=False, conv1d=True)
    out |= _out_proj(ours + "attention/out", hf + "attn.c_proj", c, conv1d=True)
    out |= _norm(ours + "mlp_norm", hf + "ln_2", c)
    out |= _mlp(ours + "mlp", hf + "mlp.", ("c_fc", "c_proj"), c, conv1d=True)
  return out | _norm("final_norm", f"{p}ln_f", c)


def _gpt_neox(c: LMConfig, names: Collection[str]) -> dict[str, Source]:
  p = _prefix(names, "gpt_neox.", "embed_in.weight")
  # transformers >= 5 names the head lm_head in memory; checkpoints keep embed_out.
  head = "lm_head" if "lm_head.weight" in names else "embed_out"
  out = _embeddings(c, f"{p}embed_in.weight", head)
  for i in range(c.num_layers):
    hf, ours = f"{p}layers.{i}.", f"layers_{i}/"
    out |= _norm(ours + "attention_norm", hf + "input_layernorm", c)
    out |= _fused_qkv(ours + "attention", hf + "attention.query_key_value", c, per_head=True)
    out |= _out_proj(ours + "attention/out", hf + "attention.dense", c)
    out |= _norm(ours + "mlp_norm", hf + "post_attention_layernorm", c)
    out |= _mlp(ours + "mlp", hf + "mlp.", ("dense_h_to_4h", "dense_4h_to_h"), c)
  return out | _norm("final_norm", f"{p}final_layer_norm", c)


def _mpt(c: LMConfig, names: Collection[str]) -> dict[str, Source]:
  p = _prefix(names, "transformer.", "wte.weight")
  out = _embeddings(c, f"{p}wte.weight", "lm_head")
  for i in range(c.num_layers):
    hf, ours = f"{p}blocks.{i}.", f"layers_{i}/"
    out |= _norm(ours + "attention_norm", hf + "norm_1", c)
    out |= _fused_qkv(ours + "attention", hf + "attn.Wqkv", c, per_head=False)
    out |= _out_proj(ours + "attention/out", hf + "attn.out_proj", c)
    out |= _norm(ours + "mlp_norm", hf + "norm_2", c)
    out |= _mlp(ours + "mlp", hf + "ffn.", ("up_proj", "down_proj"), c)
  return out | _norm("final_norm", f"{p}norm_f", c)


LAYOUTS = {
    "llama": _llama,
    "mistral": _llama,
    "qwen2": _llama,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "mpt": _mpt,
}


def layout(model_type: str, config: LMConfig, names: Collection[str]) -> dict[str, Source]:
  """{parameter path: Source} of a `model_type` checkpoint whose tensors are `names`."""
  if model_type not in LAYOUTS:
    raise ValueError(f"Unsupported model_type {model_type!r}; supported: {sorted(LAYOUTS)}.")
  return LAYOUTS[model_type](config, set(names))
