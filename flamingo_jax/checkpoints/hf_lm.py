"""Hugging Face decoder-only LMs (LLaMA 1/2/3, Mistral, Qwen2, SmolLM, TinyLlama, GPT-2,
GPT-NeoX, MPT) into `DecoderLM` parameters, with the tokenizer that belongs to each.

    params, report = import_lm("path/to/Llama-2-7b-hf", shardings=param_shardings)
    print(report)
    tokenizer = load_tokenizer("path/to/Llama-2-7b-hf")

The config comes from the checkpoint's own config.json (`lm_config_from_hf`) unless one is
given. `layout` is the family's table: where each DecoderLM parameter lives in a checkpoint of
each model_type (torch layouts undone by torch_layouts.py), which the import engine
(engine.py) reads one parameter at a time, each placed at once with its sharding, after every
tensor's shape is checked against the config. Formats that store these LMs under other names
(GGUF, OpenFlamingo's lang_encoder) read this table renamed (lm_sources.py,
flamingo_sources.py).
"""

import functools
import json
import math
import pathlib
import re
from typing import Collection

import jax
import jax.numpy as jnp
import tokenizers

from flamingo_jax.checkpoints import engine
from flamingo_jax.checkpoints.engine import Source, same
from flamingo_jax.checkpoints.tensors import CheckpointTensors
from flamingo_jax.checkpoints.torch_layouts import (ACTIVATIONS, fused_part, heads_bias,
                                                    heads_kernel, layer_norm, linear, out_kernel)
from flamingo_jax.lm.model import DecoderLM, LMConfig

# Parameters no Hugging Face checkpoint has: Flamingo's new token rows.
NEW_PARAMS = ("extra_embedding", "extra_unembedding")

# Non-parameter buffers that some checkpoints carry and the LM recomputes: GPT-2 and GPT-NeoX
# causal masks, rotary inverse frequencies.
BUFFERS = re.compile(r"(\.attn\.(masked_)?bias|\.attention\.(masked_)?bias|\.inv_freq)$")


def _activation(name: str) -> str:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unsupported hidden activation {name!r}; supported: {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def _rope(hf: dict, default_fraction: float = 1.0) -> dict:
  """RoPE's LMConfig fields from transformers >= 5 `rope_parameters` or the older top-level
  keys (`rope_theta`, `rope_scaling`, NeoX's `rotary_emb_base` and `rotary_pct`); the scalings
  `Rope` knows ("linear", "llama3"), others refused."""
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  kind = rope.get("rope_type", rope.get("type", "default"))
  fields = dict(
      rope_theta=float(rope.get("rope_theta", hf.get("rope_theta",
                                                     hf.get("rotary_emb_base", 10000.0)))),
      rope_fraction=float(rope.get("partial_rotary_factor", hf.get(
          "partial_rotary_factor", hf.get("rotary_pct", default_fraction)))))
  if kind == "default":
    return fields
  if kind not in ("linear", "llama3"):
    raise ValueError(f"RoPE scaling {kind!r} is not supported; plain, linear and llama3 are.")
  fields |= dict(rope_scaling=kind, rope_scaling_factor=float(rope["factor"]))
  if kind == "llama3":
    fields |= dict(
        rope_low_freq_factor=float(rope["low_freq_factor"]),
        rope_high_freq_factor=float(rope["high_freq_factor"]),
        rope_original_max_length=int(rope.get("original_max_position_embeddings")
                                     or hf["max_position_embeddings"]))
  return fields


def _llama_config(hf: dict) -> dict:
  """LLaMA, Mistral (its sliding window included) and Qwen2 (without one)."""
  if hf.get("use_sliding_window"):
    raise ValueError("Qwen2 sliding-window attention (use_sliding_window) is not supported.")
  heads, bias = hf["num_attention_heads"], hf.get("attention_bias", False)
  return dict(
      vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=heads,
      num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      mlp_dim=hf["intermediate_size"], norm="rms", norm_eps=hf.get("rms_norm_eps", 1e-6),
      activation=_activation(hf.get("hidden_act", "silu")), gated_mlp=True,
      mlp_bias=hf.get("mlp_bias", False),
      qkv_bias=bias or hf["model_type"] == "qwen2",  # Qwen2: biases on q, k, v only.
      out_bias=bias, position="rope", **_rope(hf),
      sliding_window=(hf.get("sliding_window") or 0) if hf["model_type"] == "mistral" else 0,
      tie_embeddings=hf.get("tie_word_embeddings", False))


def _gpt2_config(hf: dict) -> dict:
  if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
    raise ValueError("GPT-2 attention scaling other than 1/sqrt(head_dim) is not supported.")
  d = hf["n_embd"]
  return dict(
      vocab_size=hf["vocab_size"], embed_dim=d, num_layers=hf["n_layer"],
      num_heads=hf["n_head"], mlp_dim=hf.get("n_inner") or 4 * d, norm="layer",
      norm_eps=hf.get("layer_norm_epsilon", 1e-5),
      activation=_activation(hf.get("activation_function", "gelu_new")), gated_mlp=False,
      mlp_bias=True, qkv_bias=True, out_bias=True, position="learned",
      max_length=hf.get("n_positions", 1024),
      tie_embeddings=hf.get("tie_word_embeddings", True))


def _gpt_neox_config(hf: dict) -> dict:
  bias = hf.get("attention_bias", True)
  return dict(
      vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
      mlp_dim=hf["intermediate_size"], norm="layer", norm_eps=hf.get("layer_norm_eps", 1e-5),
      activation=_activation(hf.get("hidden_act", "gelu")), gated_mlp=False, mlp_bias=True,
      qkv_bias=bias, out_bias=bias, position="rope", **_rope(hf, default_fraction=0.25),
      parallel_residual=hf.get("use_parallel_residual", True),
      tie_embeddings=hf.get("tie_word_embeddings", False))


def _mpt_config(hf: dict) -> dict:
  attn = hf.get("attn_config") or {}
  d, heads = hf["d_model"], hf["n_heads"]
  scale = attn.get("softmax_scale")
  unsupported = {
      "attn_config.alibi=false": not attn.get("alibi", True),
      "attn_config.qk_ln": attn.get("qk_ln", False),
      "attn_config.attn_type": attn.get("attn_type", "multihead_attention")
                               != "multihead_attention",
      "attn_config.softmax_scale": scale is not None and not math.isclose(
          scale, (d // heads) ** -0.5),
      "logit_scale": hf.get("logit_scale") is not None,
  }
  if any(unsupported.values()):
    raise ValueError(f"Unsupported MPT options: {[k for k, v in unsupported.items() if v]}.")
  bias = not hf.get("no_bias", True)
  return dict(
      vocab_size=hf["vocab_size"], embed_dim=d, num_layers=hf["n_layers"], num_heads=heads,
      mlp_dim=hf.get("expansion_ratio", 4) * d, norm="layer",
      norm_eps=hf.get("layer_norm_epsilon", 1e-5), norm_bias=bias, activation="gelu",
      gated_mlp=False, mlp_bias=bias, qkv_bias=bias, out_bias=bias, position="alibi",
      alibi_bias_max=float(attn.get("alibi_bias_max", 8)), clip_qkv=attn.get("clip_qkv"),
      tie_embeddings=hf.get("tie_word_embeddings", True))


CONFIGS = {
    "llama": _llama_config,
    "mistral": _llama_config,
    "qwen2": _llama_config,
    "gpt2": _gpt2_config,
    "gpt_neox": _gpt_neox_config,
    "mpt": _mpt_config,
}


def lm_config_from_hf(config_json: dict) -> dict:
  """LMConfig fields of the model a Hugging Face config.json describes."""
  model_type = config_json.get("model_type")
  if model_type not in CONFIGS:
    raise ValueError(f"Unsupported model_type {model_type!r}; supported: {sorted(CONFIGS)}.")
  return CONFIGS[model_type](config_json)


# The table: {DecoderLM parameter path: Source} of each model_type.


def _norm(target: str, key: str, c: LMConfig) -> dict[str, Source]:
  return layer_norm(target, key, c.embed_dim, bias=c.norm == "layer" and c.norm_bias)


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


def import_lm(path, lm_config: LMConfig | None = None, shardings=None, *,
              param_dtype=jnp.float32, strict: bool = True, rng: jax.Array | None = None):
  """(params of `DecoderLM(lm_config, param_dtype=param_dtype)`, ImportReport) from a Hugging
  Face checkpoint directory (config.json and safetensors or PyTorch weights, sharded or not).

  lm_config: default `lm_config_from_hf` of the directory's config.json; may add
  `num_extra_tokens`, whose rows start from the LM's initialisers (with `rng`).
  shardings: a tree like the params of jax.sharding.Sharding, or None for the default device.
  strict: raise on missing or unexpected tensors; otherwise import what fits and give the
  missing parameters fresh values. A tensor whose shape does not fit the config always raises
  a ValueError naming it and both shapes.
  """
  path = pathlib.Path(path)
  hf = json.loads((path / "config.json").read_text())
  config = LMConfig.from_dict(lm_config_from_hf(hf)) if lm_config is None else lm_config
  tensors = CheckpointTensors(path)
  sources = layout(hf["model_type"], config, tensors.keys())
  ignore = lambda k: BUFFERS.search(k) or (config.tie_embeddings and k == "lm_head.weight")
  return import_lm_tensors(tensors, sources, config, str(path), shardings,
                           param_dtype=param_dtype, strict=strict, rng=rng, ignore=ignore)


def import_lm_tensors(tensors, sources: dict[str, Source], config: LMConfig, name: str,
                      shardings=None, *, param_dtype=jnp.float32, strict: bool = True,
                      rng: jax.Array | None = None, ignore=lambda key: False):
  """(params, ImportReport) of `DecoderLM(config)` from any checkpoint format's `tensors` by
  `sources` (this table, or it renamed): engine.import_params on the LM, whose new token rows
  start fresh. The rest as in `import_lm`."""
  init = engine.module_init(DecoderLM(config, param_dtype=param_dtype),
                            jnp.zeros((1, 1), jnp.int32))
  return engine.import_params(tensors, sources, init, name, "LM", shardings, strict=strict,
                              rng=rng, ignore=ignore, new_params=NEW_PARAMS)


def load_tokenizer(path) -> tokenizers.Tokenizer:
  """The LM's tokenizer, from the `tokenizer.json` in its checkpoint directory."""
  file = pathlib.Path(path) / "tokenizer.json"
  if not file.exists():
    raise FileNotFoundError(
        f"{path} has no tokenizer.json. A directory with only a slow tokenizer (e.g. "
        "tokenizer.model) gets one from transformers: "
        "AutoTokenizer.from_pretrained(path).save_pretrained(path).")
  return tokenizers.Tokenizer.from_file(str(file))


def load_vocabulary(path):
  """The LM's tokenizer as a seqio vocabulary (data.tokenizer.TokenizersVocabulary), with the
  EOS its tokenizer_config.json names, or else its config.json's eos_token_id (the first,
  where it lists several)."""
  # seqio brings TensorFlow: imported here alone, so that importing checkpoints (and comparing
  # them) works where TensorFlow is not installed (benchmarks/device_check.sh's GPU machines).
  from flamingo_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  if (path / tokenizer_lib.TOKENIZER_CONFIG_FILE).exists():
    return tokenizer_lib.TokenizersVocabulary.from_file(path / "tokenizer.json")
  eos = json.loads((path / "config.json").read_text())["eos_token_id"]
  return tokenizer_lib.TokenizersVocabulary(load_tokenizer(path),
                                            eos[0] if isinstance(eos, list) else eos)
