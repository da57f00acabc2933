"""OpenFlamingo's own part of its checkpoints (the `open-flamingo` package's `Flamingo`: an
OpenCLIP ViT, a perceiver resampler, and gated cross-attention layers inside a Hugging Face
LM): the bridge's table and config, and where the LM and the tower sit among its tensors.
flamingo_sources.py puts this table together with the LM's (hf_lm) and the tower's (vit).

An OpenFlamingo model's `state_dict()` has the tower under `vision_encoder.` (`TOWER`), the
resampler under `perceiver.`, the LM under `lang_encoder.` with decoder layer i under
`<layers>.{i}.decoder_layer.` (`lm_name` gives the Hugging Face name) and the gated layer before
it under `<layers>.{i}.gated_cross_attn_layer.` (`GATED`); their aliases
`lang_encoder.old_decoder_blocks.*` and `lang_encoder.gated_cross_attn_layers.*` (`ALIASES`) are
ignored. The released checkpoints keep what OpenFlamingo trained: the resampler, the gated
layers and the LM's embedding tables.

Where OpenFlamingo computes differently from the paper, the config says so (the paper's
defaults are unchanged):
- resampler: at the tower's width, 8 heads of 64, GELU feed-forward (the paper: squared ReLU);
  no temporal embeddings (`temporal_embedding=False`), unless the checkpoint has
  `perceiver.frame_embs`, which are ours.
- gated blocks: 8 heads of 64 whatever the LM's, GELU feed-forward, no LayerNorm on the visual
  keys and values (`kv_norm=False`), before LM blocks every-1, 2*every-1, ... (`start=every-1`;
  the paper's start from the first). Text attends to the most recent image only
  (`only_attend_immediate_media=True`), which is the paper's `media_mode="last"`, and tokens
  before the first image to nothing.
- vision: the OpenCLIP ViT with QuickGELU unless an open_clip model config says otherwise
  (open_clip 2, which OpenFlamingo trained with, built OpenAI's ViT-L/14 with QuickGELU), and
  CLIP's preprocessing. The resampler reads the patch tokens *before* the tower's `ln_post`
  (`final_norm=False`): `VisionTransformer(output_tokens=True)` returned them so from open_clip
  2.16 (OpenFlamingo's minimum) to 2.22, when OpenFlamingo's models were trained and released
  (mid 2023); open_clip 2.23 (October 2023, "final_ln_after_pool") applies `ln_post` to every
  token first unless `final_ln_after_pool` is set. `tower_ln_post` (open_flamingo_config) takes
  the later tokens, for a model trained with a newer open_clip.
- tokens: OpenFlamingo appends `<|endofchunk|>` (id V, the size of the LM's tokenizer),
  `<image>` (V + 1) and, for LMs without a pad token, `<PAD>` (V + 2) to the LM's vocabulary and
  trains the input embedding table. Flamingo-jax's `<image>` is V and its `<EOC>` V + 1 (what its
  data pipeline, decoding and evaluation use), so the two rows swap on import; they and `<PAD>`
  become the LM's extra rows (`model.lm.num_extra_tokens` 2 or 3). `flamingo_token_ids` maps
  ids from OpenFlamingo's tokenizer. An untied LM's output rows of the new tokens, which
  OpenFlamingo neither trains nor saves, start fresh where the head has no rows for them (the
  report lists `lm/extra_unembedding` as initialised).

Not expressible here: `perceiver.media_time_embs` (a learned embedding per image position,
OpenFlamingo's `max_num_media`, off in its factory), which raises; LMs outside hf_lm's families
(OPT, GPT-J, and MPT-1B's `mosaic_gpt` remote code, which OpenFlamingo-3B builds on).
"""

import re

import numpy as np

from flamingo_jax.checkpoints.engine import Source, same
from flamingo_jax.checkpoints.torch_layouts import (fused_part, heads_kernel, layer_norm, linear,
                                                    out_kernel)
from flamingo_jax.lm.model import LMConfig

OF_HEADS = 8  # OpenFlamingo's resampler and gated layers: 8 heads (of 64), whatever the widths.
TOWER = "vision_encoder."
GATED = re.compile(r"^lang_encoder\.(.+)\.(\d+)\.gated_cross_attn_layer\.")
# Aliases of the decoder and gated layers that OpenFlamingo's state_dict() repeats.
ALIASES = re.compile(r"^lang_encoder\.(old_decoder_blocks|gated_cross_attn_layers)\.")
# Defaults of the tower's open_clip model config: OpenFlamingo's OpenAI ViT-L/14.
OPEN_CLIP_DEFAULTS = {"quick_gelu": True}


def lm_name(key: str) -> str | None:
  """The Hugging Face name of an OpenFlamingo checkpoint's LM tensor; None for the others."""
  if not key.startswith("lang_encoder.") or ALIASES.match(key) or GATED.match(key):
    return None
  return key.removeprefix("lang_encoder.").replace(".decoder_layer.", ".")


def flamingo_token_ids(tokens, vocab_size: int):
  """Token ids of OpenFlamingo's tokenizer -> flamingo-jax's: `<|endofchunk|>` (V) and
  `<image>` (V + 1) swap; V the LM's vocabulary size (`model.lm.vocab_size`)."""
  tokens = np.asarray(tokens)
  return np.where(tokens == vocab_size, vocab_size + 1,
                  np.where(tokens == vocab_size + 1, vocab_size, tokens))


def gated_layers(names) -> tuple[str, list[int]]:
  """(the LM's decoder layers' path, e.g. "model.layers"; indices of the layers with a gated
  layer before them) of a checkpoint whose tensors are `names`."""
  found = [GATED.match(k) for k in names]
  paths = {m.group(1) for m in found if m}
  if len(paths) != 1:
    raise ValueError(f"Expected the gated layers of one LM layer stack, found {sorted(paths)}.")
  return paths.pop(), sorted({int(m.group(2)) for m in found if m})


def bridge_config(tensors, lm: dict) -> tuple[dict, dict]:
  """(resampler, xattn): the model config sections of the checkpoint's resampler and gated
  layers (module docstring), from its tensors' shapes; lm: the LM's LMConfig fields."""
  t = tensors
  if "perceiver.media_time_embs" in t:
    raise ValueError("perceiver.media_time_embs (OpenFlamingo's max_num_media: an embedding per "
                     "image position) has no counterpart in flamingo-jax's resampler.")
  num_latents, dim = t.shape("perceiver.latents")
  layers, gated = gated_layers(t.keys())
  every = gated[0] + 1
  if gated != list(range(every - 1, lm["num_layers"], every)):
    raise ValueError(f"Gated layers before LM layers {gated}: OpenFlamingo's placement is every "
                     f"cross_attn_every_n_layers-th layer, from layer n-1.")
  xattn = f"lang_encoder.{layers}.{gated[0]}.gated_cross_attn_layer."
  frames = t.shape("perceiver.frame_embs")[0] if "perceiver.frame_embs" in t else 0
  resampler = dict(
      dim=dim, num_latents=num_latents, num_heads=OF_HEADS,
      depth=len({k.split(".")[2] for k in t.keys() if k.startswith("perceiver.layers.")}),
      head_dim=t.shape("perceiver.layers.0.0.to_q.weight")[0] // OF_HEADS,
      mlp_ratio=t.shape("perceiver.layers.0.1.1.weight")[0] // dim, activation="gelu",
      max_frames=max(frames, 1), temporal_embedding=bool(frames))
  return resampler, dict(
      every=every, start=every - 1, num_heads=OF_HEADS,
      head_dim=t.shape(xattn + "attn.to_q.weight")[0] // OF_HEADS,
      mlp_ratio=t.shape(xattn + "ff.1.weight")[0] // lm["embed_dim"], activation="gelu",
      kv_norm=False, media_mode="last")


def _attention(target: str, prefix: str, d_q: int, d_kv: int, heads: int,
               dh: int) -> dict[str, Source]:
  """OpenFlamingo's attention: to_q, to_kv ([k | v]) and to_out, without biases."""
  inner, split = heads * dh, dict(heads=heads, dh=dh)
  out = {f"{target}/query/kernel": Source(
      (f"{prefix}to_q.weight",), ((inner, d_q),), lambda w: heads_kernel(w, **split))}
  for part, ours in enumerate(("key", "value")):
    out[f"{target}/{ours}/kernel"] = Source(
        (f"{prefix}to_kv.weight",), ((2 * inner, d_kv),),
        lambda w, part=part: fused_part(w, part, per_head=False, conv1d=False, parts=2, **split))
  out[f"{target}/out/kernel"] = Source((f"{prefix}to_out.weight",), ((d_q, inner),),
                                       lambda w: out_kernel(w, conv1d=False, **split))
  return out


def _feed_forward(target: str, prefix: str, d: int, ratio: int) -> dict[str, Source]:
  """nn.Sequential(LayerNorm, Linear, GELU, Linear), without biases."""
  return (layer_norm(f"{target}/norm", f"{prefix}0", d)
          | linear(f"{target}/mlp/wi", f"{prefix}1", d, ratio * d, False)
          | linear(f"{target}/mlp/wo", f"{prefix}3", ratio * d, d, False))


def bridge_layout(model, layers: str) -> dict[str, Source]:
  """{parameter path: Source} of the resampler and the gated blocks (model: the config's model
  section; layers: the LM's decoder layers' path, as `gated_layers`)."""
  r, x = model.resampler, model.xattn
  d, d_lm = r.dim, model.lm.embed_dim
  out = {"resampler/latents": same("perceiver.latents", (r.num_latents, d))}
  if r.get("temporal_embedding", True):
    out["resampler/temporal_embedding"] = same("perceiver.frame_embs", (r.max_frames, d))
  for i in range(r.depth):
    attn, ours = f"perceiver.layers.{i}.0.", f"resampler/layers_{i}/"
    out |= layer_norm(ours + "features_norm", attn + "norm_media", d)
    out |= layer_norm(ours + "latents_norm", attn + "norm_latents", d)
    out |= _attention(ours + "attention", attn, d, d, r.num_heads, r.head_dim)
    out |= _feed_forward(ours + "ffw", f"perceiver.layers.{i}.1.", d, r.mlp_ratio)
  out |= layer_norm("resampler/final_norm", "perceiver.norm", d)
  scalar = lambda w: w.reshape(())  # The gates: [1] -> [].
  for k, layer in enumerate(range(x.start, model.lm.num_layers, x.every)):
    of, ours = f"lang_encoder.{layers}.{layer}.gated_cross_attn_layer.", f"gated_xattn_{k}/"
    out |= layer_norm(ours + "norm", of + "attn.norm", d_lm)
    out |= _attention(ours + "attention", of + "attn.", d_lm, d, x.num_heads, x.head_dim)
    out[ours + "attention_gate"] = Source((of + "attn_gate",), ((1,),), scalar)
    out[ours + "ffw_gate"] = Source((of + "ff_gate",), ((1,),), scalar)
    out |= _feed_forward(ours + "ffw", of + "ff.", d_lm, x.mlp_ratio)
  return out


def token_rows(sources: dict[str, Source], tensors, config: LMConfig) -> dict[str, Source]:
  """The embedding tables' Sources, in place of those of `sources`, the LM's table (hf_lm's in
  the names of `tensors`): rows [0, V) the LM's vocabulary, and OpenFlamingo's rows
  V.. (`<|endofchunk|>`, `<image>`, `<PAD>`) its extra rows as `<image>`, `<EOC>`, `<PAD>`. An
  untied head without rows for them leaves extra_unembedding out (fresh)."""
  v, n, d = config.vocab_size, config.num_extra_tokens, config.embed_dim
  order = np.array([v + 1, v, *range(v + 2, v + n)])
  out = {}
  for main, extra, fix in (("embedder/embedding", "extra_embedding", lambda w: w),
                           ("unembed/kernel", "extra_unembedding", np.transpose)):
    if main not in sources:  # Tied embeddings.
      continue
    key = sources[main].keys[0]
    rows = tensors.shape(key)[0] if key in tensors else v + n
    out[main] = Source((key,), ((max(rows, v), d),), lambda w, fix=fix: fix(w[:v]))
    if rows >= v + n:
      out[extra] = Source((key,), ((rows, d),), lambda w, fix=fix: fix(w[order]))
  return out
