"""Hugging Face decoder-only LMs (LLaMA 1/2/3, Mistral, Qwen2, SmolLM, TinyLlama, GPT-2,
GPT-NeoX, MPT) into `DecoderLM` parameters, with the tokenizer that belongs to each.

    params, report = import_lm("path/to/Llama-2-7b-hf", shardings=param_shardings)
    print(report)
    tokenizer = load_tokenizer("path/to/Llama-2-7b-hf")

The config comes from the checkpoint's own config.json (`lm_config_from_hf`) unless one is
given. Parameters are built one at a time, each read from the checkpoint as it is needed and
placed at once with its sharding (each device copying only its slice), so the host holds one
parameter's tensors at a time, never the whole model. Every tensor's shape is checked against
the config before anything is read. `import_tensors`, the loop behind it, imports any model's
parameters this way (the vision towers of vit.py, OpenFlamingo's bridge in open_flamingo.py).
"""

import dataclasses
import json
import math
import pathlib
import re

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers

from flamingo_jax.checkpoints import hf_layouts
from flamingo_jax.checkpoints.tensors import CheckpointTensors
from flamingo_jax.data import tokenizer as tokenizer_lib
from flamingo_jax.lm.model import DecoderLM, LMConfig

# Hugging Face activation names -> flamingo_jax.layers.mlp.ACTIVATIONS.
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
  """rope_theta and rope_fraction from transformers >= 5 `rope_parameters` or the older
  top-level keys (`rope_theta`, `rope_scaling`, NeoX's `rotary_emb_base` and `rotary_pct`)."""
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  kind = rope.get("rope_type", rope.get("type", "default"))
  if kind != "default":
    raise ValueError(f"RoPE scaling {kind!r} is not supported; only plain rotary embeddings are.")
  return dict(
      rope_theta=float(rope.get("rope_theta", hf.get("rope_theta",
                                                     hf.get("rotary_emb_base", 10000.0)))),
      rope_fraction=float(rope.get("partial_rotary_factor", hf.get(
          "partial_rotary_factor", hf.get("rotary_pct", default_fraction)))))


def _llama_config(hf: dict) -> dict:
  """Mistral's sliding window is not reproduced: exact for sequences up to its length."""
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


@dataclasses.dataclass(frozen=True)
class ImportReport:
  """What an import did, by name.

  loaded: checkpoint tensors read. missing: tensors the config needs that the checkpoint
  lacks (or, where no tensor maps to one, the LM parameter). unexpected: checkpoint tensors
  the config has no place for. reshaped: "tensor (shape) -> parameter (shape)" for each tensor
  transposed, split or reshaped on the way. initialised: LM parameters given fresh values (the
  new token rows; what was missing). ignored: buffers the LM recomputes.
  """
  path: str
  loaded: tuple[str, ...]
  missing: tuple[str, ...]
  unexpected: tuple[str, ...]
  reshaped: tuple[str, ...]
  initialised: tuple[str, ...]
  ignored: tuple[str, ...]

  def __str__(self):
    # Reshapes and ignored tensors one line per kind: layer numbers folded into "*" (a
    # CLIPModel's whole text tower is ignored by a vision import).
    fold = lambda names: dict.fromkeys(
        re.sub(r"(?<=\.)\d+(?=\.)|(?<=_)\d+(?=/)", "*", n) for n in names)
    kinds = fold(self.reshaped)
    lines = [f"Imported {len(self.loaded)} tensors from {self.path}."]
    lines += [f"  reshaped: {len(self.reshaped)} ({len(kinds)} kinds):"]
    lines += [f"    {kind}" for kind in kinds]
    for name in ("missing", "unexpected", "initialised"):
      keys = getattr(self, name)
      lines.append(f"  {name}: {len(keys)}" + (f": {', '.join(keys)}" if keys else ""))
    ignored = fold(self.ignored)
    lines.append(f"  ignored: {len(self.ignored)}"
                 + (f" ({len(ignored)} kinds): {', '.join(ignored)}" if ignored else ""))
    return "\n".join(lines)


def _shape_errors(sources, abstract, tensors, model: str) -> list[str]:
  errors = []
  for path, target in abstract.items():
    source = sources.get(path)
    for key, expected in zip(source.keys, source.shapes) if source else ():
      if key in tensors and tensors.shape(key) != expected:
        errors.append(f"{key!r} has shape {tensors.shape(key)}, but the {model} config expects "
                      f"{expected} (for parameter {path} of shape {target.shape})")
  return errors


def unmatched_tensors(name: str, model: str, names, used, missing, ignore, strict: bool):
  """(ignored, unexpected): the checkpoint's tensors `names` that no parameter `used`, split by
  `ignore(key)`. With `strict`, missing or unexpected tensors raise, naming them all."""
  ignored = tuple(k for k in names if k not in used and ignore(k))
  unexpected = tuple(k for k in names if k not in used and k not in ignored)
  if strict and (missing or unexpected):
    raise ValueError(
        f"Checkpoint {name} does not fit the {model} config: missing {list(missing)}, "
        f"unexpected {list(unexpected)}. Is the config that of the checkpoint? (strict=False "
        "imports what fits and initialises the rest.)")
  return ignored, unexpected


def _place(x: np.ndarray, sharding):
  """A host array on device(s): each device copies only its own slice."""
  if sharding is None:
    return jax.device_put(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _fresh(init, paths, shardings, rng):
  """New values of the parameters `paths` from the model's initialisers (`init`, as in
  `import_tensors`); compiled, so the other parameters' initialisation is dead code and never
  runs."""
  out_shardings = None if shardings is None else {p: shardings[p] for p in paths}
  return jax.jit(lambda rng: {p: init(rng)[p] for p in paths},
                 out_shardings=out_shardings)(rng)


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
  sources = hf_layouts.layout(hf["model_type"], config, tensors.keys())
  ignore = lambda k: BUFFERS.search(k) or (config.tie_embeddings and k == "lm_head.weight")
  return import_sources(tensors, sources, config, str(path), shardings, param_dtype=param_dtype,
                        strict=strict, rng=rng, ignore=ignore)


def import_sources(tensors, sources: dict[str, hf_layouts.Source], config: LMConfig, name: str,
                   shardings=None, *, param_dtype=jnp.float32, strict: bool = True,
                   rng: jax.Array | None = None, ignore=lambda key: False):
  """(params, ImportReport) of `DecoderLM(config)` from any checkpoint format: `tensors` has
  keys(), `in`, shape(key) (read without the data) and get(key) -> np.ndarray; `sources` maps
  parameter paths to its tensors (hf_layouts.layout); `name` names the checkpoint in messages;
  `ignore(key)` is true of tensors the LM has no use for. The rest as in `import_lm`."""
  model = DecoderLM(config, param_dtype=param_dtype)

  def init(rng):
    variables = model.init(rng, jnp.zeros((1, 1), jnp.int32))
    return flax.traverse_util.flatten_dict(nn.meta.unbox(variables["params"]), sep="/")
  return import_tensors(tensors, sources, init, name, "LM", shardings, strict=strict, rng=rng,
                        ignore=ignore, new_params=NEW_PARAMS)


def import_tensors(tensors, sources: dict[str, hf_layouts.Source], init, name: str, model: str,
                   shardings=None, *, strict: bool = True, rng: jax.Array | None = None,
                   ignore=lambda key: False, new_params=()):
  """(params, ImportReport) of any model (an LM, a vision tower, Flamingo's bridge) from any
  checkpoint format, one parameter at a time.

  init(rng) -> the model's flat parameters {path: array}: traced for their shapes and dtypes,
  and compiled for those the checkpoint lacks. `tensors` and `sources` as in `import_sources`;
  `name` names the checkpoint and `model` the config in messages; `new_params`: parameters that
  no checkpoint of the format has, which start fresh without being missing. shardings: a tree
  like the params of jax.sharding.Sharding, or None for the default device; strict as in
  `import_lm`.
  """
  abstract = jax.eval_shape(init, jax.random.key(0))
  names = tensors.keys()

  # Everything is checked against the headers before a single tensor is read.
  errors = _shape_errors(sources, abstract, tensors, model)
  if errors:
    raise ValueError(f"Checkpoint {name} does not fit the {model} config:\n  "
                     + "\n  ".join(errors))
  absent = {p: [k for k in sources[p].keys if k not in tensors] for p in abstract if p in sources}
  fresh = [p for p in abstract if p not in sources or absent[p]]
  missing = tuple(dict.fromkeys(
      [k for p in fresh if p in sources for k in absent[p]]
      + [p for p in fresh if p not in sources and p not in new_params]))
  used = {k for p in abstract if p in sources for k in sources[p].keys if k in tensors}
  ignored, unexpected = unmatched_tensors(name, model, names, used, missing, ignore, strict)

  flat_shardings = None if shardings is None else flax.traverse_util.flatten_dict(
      shardings, sep="/")
  params, reshaped = {}, []
  for p, target in abstract.items():
    if p in fresh:
      continue
    # One parameter at a time: its tensors are read, placed on device, and let go.
    source = sources[p]
    x = source.fn(*(tensors.get(k) for k in source.keys))
    params[p] = _place(np.asarray(x, target.dtype),
                       None if flat_shardings is None else flat_shardings[p])
    if source.fn is not hf_layouts.identity:
      reshaped += [f"{k} {s} -> {p} {target.shape}" for k, s in zip(source.keys, source.shapes)]
  if fresh:
    params |= _fresh(init, fresh, flat_shardings, jax.random.key(0) if rng is None else rng)
  report = ImportReport(
      path=name, loaded=tuple(sorted(used)), missing=missing,
      unexpected=unexpected, reshaped=tuple(reshaped), initialised=tuple(fresh), ignored=ignored)
  return flax.traverse_util.unflatten_dict(params, sep="/"), report


def load_tokenizer(path) -> tokenizers.Tokenizer:
  """The LM's tokenizer, from the `tokenizer.json` in its checkpoint directory."""
  file = pathlib.Path(path) / "tokenizer.json"
  if not file.exists():
    raise FileNotFoundError(
        f"{path} has no tokenizer.json. A directory with only a slow tokenizer (e.g. "
        "tokenizer.model) gets one from transformers: "
        "AutoTokenizer.from_pretrained(path).save_pretrained(path).")
  return tokenizers.Tokenizer.from_file(str(file))


def load_vocabulary(path) -> tokenizer_lib.TokenizersVocabulary:
  """The LM's tokenizer as a seqio vocabulary, with the EOS its tokenizer_config.json names,
  or else its config.json's eos_token_id (the first, where it lists several)."""
  path = pathlib.Path(path)
  if (path / tokenizer_lib.TOKENIZER_CONFIG_FILE).exists():
    return tokenizer_lib.TokenizersVocabulary.from_file(path / "tokenizer.json")
  eos = json.loads((path / "config.json").read_text())["eos_token_id"]
  return tokenizer_lib.TokenizersVocabulary(load_tokenizer(path),
                                            eos[0] if isinstance(eos, list) else eos)
