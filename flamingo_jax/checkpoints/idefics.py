"""Hugging Face IDEFICS (`IdeficsForVisionText2Text`: idefics-9b, idefics-80b and their
-instruct versions) into Flamingo parameters, with the model config that computes what IDEFICS
computes, following transformers' `modeling_idefics.py`, `perceiver.py` and `vision.py` (5.x).

    config = idefics_config(base_config, "path/to/idefics-9b")
    params, report = import_idefics("path/to/idefics-9b", config)
    print(report)

IDEFICS is the paper's architecture on a LLaMA LM, a CLIP tower and OBELICS; where it computes
differently from the paper, the config says so (the paper's defaults are unchanged):
- gated blocks before LM layers i % cross_layer_interval == 0 (the paper's placement, unlike
  OpenFlamingo's), at the LM's width and heads, RMSNorm pre-norms (`xattn.norm_type="rms"`),
  optional RMSNorm of each head's queries and keys (`qk_layer_norms` -> `xattn.qk_norm`), a
  SwiGLU feed-forward at the LM's MLP width (`gated_mlp`, a float `mlp_ratio`), no LayerNorm on
  the visual keys and values (`kv_norm=False`), and one tanh gate per block (alpha_type "float")
  or per feature ("vector" -> `xattn.gate="vector"`);
- the resampler at the tower's width, with its own heads and head width, optional LayerNorm of
  the queries and keys (`qk_layer_norms_perceiver` -> `resampler.qk_norm`), a ReLU feed-forward
  of 4x the width without biases, no temporal embeddings;
- the tower's `last_hidden_state`: CLIP's tokens with the class token kept, before
  `post_layernorm` (`vision.keep_class_token`, `final_norm=False`); images resized to a square,
  with CLIP's mean and standard deviation;
- IDEFICS's decoupled embeddings: its `additional_embedding` and `additional_fc` rows (the
  tokens after the LM's V, `<fake_token_around_image>` and `<image>`) are the LM's extra rows,
  in the same order, so no id moves: `<image>` is the media token, the EOS the `<EOC>`;
- its image attention mask (the processor's `image_attention_mask_for_packed_input_ids`): a
  token sees the image of the most recent `<image>`, and after an EOS in a packed sequence none
  until the next (`xattn.media_reset_token_id`). A token that sees none gets no cross-attention
  output, as IDEFICS's `cross_attention_gate` zeroes it.

Not expressible here: `use_resampler=False` (the gated layers reading the tower's tokens
directly), tied embeddings (whose added rows IDEFICS unties), and a layer count that is not a
multiple of `cross_layer_interval` (transformers cannot build that either). `python -m
flamingo_jax.checkpoints.convert --from idefics` is the command line.
"""

import copy
import functools
import json
import pathlib

import flax.traverse_util
import jax
import ml_collections
import numpy as np

from flamingo_jax.checkpoints import engine, hf_lm, orbax_io, vit
from flamingo_jax.checkpoints.engine import Source, same
from flamingo_jax.checkpoints.tensors import CheckpointTensors
from flamingo_jax.checkpoints.torch_layouts import heads_kernel, layer_norm, linear, out_kernel
from flamingo_jax.configs.base import CLIP_PREPROCESSING, model_config
from flamingo_jax.data import tokenizer as tokenizer_lib
from flamingo_jax.flamingo import factory
from flamingo_jax.flamingo.model import lm_config
from flamingo_jax.flamingo.scan import stack_layers

LM, TOWER = "model.", "model.vision_model."
PERCEIVER, GATED = "model.perceiver_resampler.", "model.gated_cross_attn_layers.{}."
IMAGE_TOKEN = "<image>"


def _image_token_id(path: pathlib.Path) -> int:
  """The id of `<image>` among the tokenizer's added tokens."""
  added = json.loads((path / "tokenizer.json").read_text()).get("added_tokens", [])
  ids = [t["id"] for t in added if t["content"] == IMAGE_TOKEN]
  if not ids:
    raise ValueError(f"{path / 'tokenizer.json'} has no {IMAGE_TOKEN} token.")
  return ids[0]


def model_section(hf: dict, media_token_id: int, *, dtype: str = "float32",
                  param_dtype: str = "float32", remat: str = "none",
                  scan_layers: bool = False) -> ml_collections.ConfigDict:
  """The Flamingo `model` section that computes what the IDEFICS of config.json `hf` computes
  (module docstring), `<image>` being `media_token_id`; the rest as in `model_config`."""
  if hf.get("model_type") != "idefics":
    raise ValueError(f"A {hf.get('model_type')!r} config, not IDEFICS's.")
  if not hf.get("use_resampler", False):
    raise ValueError("IDEFICS with use_resampler=False (gated layers reading the tower's tokens "
                     "directly) is not supported.")
  if hf.get("tie_word_embeddings", False):
    raise ValueError("IDEFICS with tied embeddings is not supported: its additional_fc rows "
                     "would still be untied.")
  every, depth = hf.get("cross_layer_interval", 1), hf["num_hidden_layers"]
  if depth % every:
    raise ValueError(f"{depth} layers are not a multiple of cross_layer_interval {every}.")
  alpha = hf.get("alpha_type", "float")
  if alpha not in ("float", "vector"):
    raise ValueError(f"Unknown alpha_type {alpha!r}; IDEFICS has 'float' and 'vector'.")
  lm = hf_lm.lm_config_from_hf(hf | dict(model_type="llama"))
  lm |= dict(num_extra_tokens=hf.get("additional_vocab_size", 0))
  if not lm["vocab_size"] <= media_token_id < lm["vocab_size"] + lm["num_extra_tokens"]:
    raise ValueError(f"{IMAGE_TOKEN} is id {media_token_id}, not one of IDEFICS's added rows "
                     f"[{lm['vocab_size']}, {lm['vocab_size'] + lm['num_extra_tokens']}).")
  v = hf["vision_config"]
  vision = vit.vision_config_from_hf(dict(
      model_type="clip_vision_model", hidden_size=v["embed_dim"],
      intermediate_size=v["intermediate_size"], num_hidden_layers=v["num_hidden_layers"],
      num_attention_heads=v["num_attention_heads"], image_size=v["image_size"],
      patch_size=v["patch_size"], hidden_act=v.get("hidden_act", "gelu"),
      layer_norm_eps=v.get("layer_norm_eps", 1e-5)))
  vision |= dict(final_norm=False, keep_class_token=True)
  p = hf["perceiver_config"]
  resampler = dict(
      dim=v["embed_dim"], depth=p["resampler_depth"], num_latents=p["resampler_n_latents"],
      num_heads=p["resampler_n_heads"], head_dim=p["resampler_head_dim"], mlp_ratio=4,
      activation="relu", max_frames=1, norm_eps=1e-5, temporal_embedding=False,
      qk_norm="layer" if p.get("qk_layer_norms_perceiver", False) else "none")
  eos = hf.get("eos_token_id", 2)
  xattn = dict(
      every=every, start=0, num_heads=lm["num_heads"], head_dim=lm["head_dim"],
      mlp_ratio=lm["mlp_dim"] / lm["embed_dim"], activation=lm["activation"], kv_norm=False,
      media_mode="last", norm_eps=lm["norm_eps"], norm_type="rms",
      qk_norm="rms" if hf.get("qk_layer_norms", False) else "none", gated_mlp=True,
      gate="vector" if alpha == "vector" else "scalar", media_reset_token_id=eos)
  model = model_config(
      vision=vision, lm=lm, resampler=resampler, xattn=xattn, dtype=dtype,
      image_preprocessing=dict(CLIP_PREPROCESSING, resize="square"), remat=remat,
      scan_layers=scan_layers)
  model.update(param_dtype=param_dtype, media_token_id=media_token_id, eoc_token_id=eos)
  return model


def idefics_config(base: ml_collections.ConfigDict, path, *,
                   image_token_id: int | None = None) -> ml_collections.ConfigDict:
  """A copy of `base` whose model section is `model_section` of the IDEFICS checkpoint at
  `path` (its config.json); base's other sections, and its model's dtypes, remat and layer
  scan, are kept. image_token_id: `<image>`'s id, default the tokenizer.json's."""
  path = pathlib.Path(path)
  config = copy.deepcopy(base)
  m = base.model
  config.model = model_section(
      json.loads((path / "config.json").read_text()),
      _image_token_id(path) if image_token_id is None else image_token_id, dtype=m.dtype,
      param_dtype=m.param_dtype, remat=m.remat, scan_layers=m.scan_layers)
  return config


def _attention(target: str, prefix: str, names: tuple[str, str, str, str], d_q: int, d_kv: int,
               heads: int, dh: int) -> dict[str, Source]:
  """Separate q, k, v and output Linear projections without biases."""
  split = dict(heads=heads, dh=dh)
  out = {}
  for ours, theirs, d_in in zip(("query", "key", "value"), names, (d_q, d_kv, d_kv)):
    out[f"{target}/{ours}/kernel"] = Source(
        (f"{prefix}{theirs}.weight",), ((heads * dh, d_in),),
        functools.partial(heads_kernel, **split))
  out[f"{target}/out/kernel"] = Source(
      (f"{prefix}{names[3]}.weight",), ((d_q, heads * dh),),
      functools.partial(out_kernel, conv1d=False, **split))
  return out


def _gate(target: str, key: str, gate: str, d: int) -> dict[str, Source]:
  """alpha_type "float" [1] -> [], "vector" [1, 1, D] -> [D]."""
  if gate == "scalar":
    return {target: Source((key,), ((1,),), lambda w: w.reshape(()))}
  return {target: Source((key,), ((1, 1, d),), lambda w: w.reshape(d))}


def bridge_layout(model) -> dict[str, Source]:
  """{parameter path: Source} of the resampler and the gated blocks (model: the config's model
  section, `idefics_config`'s)."""
  r, x, d_lm = model.resampler, model.xattn, model.lm.embed_dim
  d, mlp = r.dim, round(r.mlp_ratio * r.dim)
  out = {"resampler/latents": same(PERCEIVER + "latents", (r.num_latents, d))}
  for i in range(r.depth):
    attn, ffw = f"{PERCEIVER}blocks.{i}.0.", f"{PERCEIVER}blocks.{i}.1."
    ours = f"resampler/layers_{i}/"
    out |= layer_norm(ours + "features_norm", attn + "context_layer_norm", d)
    out |= layer_norm(ours + "latents_norm", attn + "latents_layer_norm", d)
    out |= _attention(ours + "attention", attn, ("q_proj", "k_proj", "v_proj", "output_proj"),
                      d, d, r.num_heads, r.head_dim)
    if r.qk_norm != "none":
      out |= layer_norm(ours + "attention/query_norm", attn + "q_layer_norm", r.head_dim)
      out |= layer_norm(ours + "attention/key_norm", attn + "k_layer_norm", r.head_dim)
    out |= layer_norm(ours + "ffw/norm", ffw + "ln", d)
    out |= linear(ours + "ffw/mlp/wi", ffw + "fc", d, mlp, False)
    out |= linear(ours + "ffw/mlp/wo", ffw + "c_proj", mlp, d, False)
  out |= layer_norm("resampler/final_norm", PERCEIVER + "layer_norm", d)
  mlp = round(x.mlp_ratio * d_lm)
  for k in range(model.lm.num_layers // x.every):
    theirs, ours = GATED.format(k), f"gated_xattn_{k}/"
    out |= layer_norm(ours + "norm", theirs + "input_layernorm", d_lm, bias=False)
    out |= _attention(ours + "attention", theirs + "cross_attn.",
                      ("q_proj", "k_proj", "v_proj", "o_proj"), d_lm, d, x.num_heads, x.head_dim)
    if x.qk_norm != "none":
      out |= layer_norm(ours + "attention/query_norm", theirs + "cross_attn.q_layer_norm",
                        x.head_dim, bias=False)
      out |= layer_norm(ours + "attention/key_norm", theirs + "cross_attn.k_layer_norm",
                        x.head_dim, bias=False)
    out |= _gate(ours + "attention_gate", theirs + "alpha_cross_attn", x.gate, d_lm)
    out |= _gate(ours + "ffw_gate", theirs + "alpha_dense", x.gate, d_lm)
    out |= layer_norm(ours + "ffw/norm", theirs + "post_attention_layernorm", d_lm, bias=False)
    out |= linear(ours + "ffw/mlp/gate", theirs + "mlp.gate_proj", d_lm, mlp, False)
    out |= linear(ours + "ffw/mlp/up", theirs + "mlp.up_proj", d_lm, mlp, False)
    out |= linear(ours + "ffw/mlp/wo", theirs + "mlp.down_proj", mlp, d_lm, False)
  return out


def lm_layout(model, names) -> dict[str, Source]:
  """{parameter path under lm/: Source}: the LLaMA table, and the decoupled rows as the LM's
  extra rows (additional_embedding [A, D] and additional_fc [A, D])."""
  c = lm_config(model)
  out = hf_lm.layout("llama", c, names)
  if c.num_extra_tokens:
    shape = (c.num_extra_tokens, c.embed_dim)
    out["extra_embedding"] = same(LM + "embed_tokens.additional_embedding.weight", shape)
    out["extra_unembedding"] = Source(("lm_head.additional_fc.weight",), (shape,), np.transpose)
  return out


def unused(key: str) -> bool:
  """The tensors IDEFICS has and its computation does not use: the pooled output's LayerNorm,
  position-id and rotary buffers."""
  return key.startswith(TOWER + "post_layernorm.") or bool(hf_lm.BUFFERS.search(key)) or (
      key.endswith(".position_ids"))


def import_idefics(path, config: ml_collections.ConfigDict, shardings=None, *,
                   strict: bool = True, rng: jax.Array | None = None):
  """(the unscanned parameters of `config`'s Flamingo, ImportReport) from the IDEFICS
  directory `path` (safetensors or PyTorch weights, sharded or not), each tensor read and
  placed with its sharding on its own, so that no host holds the model whole.

  config: `idefics_config`'s. shardings: a tree like the unscanned params of
  jax.sharding.Sharding, or None for the default device; strict: raise on missing or
  unexpected tensors (otherwise import what fits and initialise the rest from `rng`). A tensor
  whose shape does not fit always raises, naming it and both shapes.
  """
  tensors = CheckpointTensors(pathlib.Path(path))
  flat = factory.unscanned(config)
  model = factory.build_model(flat)
  sources = ({f"vision_encoder/{p}": s
              for p, s in vit.hf_layout(flat.model.vision.to_dict(), TOWER).items()}
             | {f"lm/{p}": s for p, s in lm_layout(flat.model, tensors.keys()).items()}
             | bridge_layout(flat.model))

  def init(rng):
    return flax.traverse_util.flatten_dict(factory.init_params(model, flat, rng), sep="/")
  return engine.import_params(tensors, sources, init, str(path), "IDEFICS", shardings,
                              strict=strict, rng=rng, ignore=unused)


def convert_idefics(path, config: ml_collections.ConfigDict, out) -> pathlib.Path:
  """Writes the Flamingo checkpoint `out` of the IDEFICS directory `path`: its model section
  from `idefics_config`, `config`'s other sections, the tokenizer beside the parameters.
  Returns its directory."""
  config = idefics_config(config, path)
  params, report = import_idefics(path, config, rng=jax.random.key(config.seed))
  print(report)
  out = orbax_io.save(out, stack_layers(params, config.model), config)
  hf_lm.load_vocabulary(path).save(out / tokenizer_lib.TOKENIZER_FILE)
  return out
