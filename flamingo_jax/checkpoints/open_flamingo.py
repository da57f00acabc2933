"""OpenFlamingo checkpoints (the `open-flamingo` package's `Flamingo`: an OpenCLIP ViT, a
perceiver resampler, and gated cross-attention layers inside a Hugging Face LM) into Flamingo
parameters, with the model config that computes what OpenFlamingo computes.

    config = open_flamingo_config(base_config, "checkpoint.pt", "path/to/mpt-7b",
                                  vision_path="ViT-L-14.pt")
    params, report = import_open_flamingo("checkpoint.pt", config, "path/to/mpt-7b",
                                          vision_path="ViT-L-14.pt")
    print(report)

What a checkpoint holds: an OpenFlamingo model's `state_dict()` has everything: the tower under
`vision_encoder.`, the resampler under `perceiver.`, the LM under `lang_encoder.` with decoder
layer i under `<layers>.{i}.decoder_layer.` and the gated layer before it under
`<layers>.{i}.gated_cross_attn_layer.` (their aliases `lang_encoder.old_decoder_blocks.*` and
`lang_encoder.gated_cross_attn_layers.*` are ignored). The released checkpoints keep what
OpenFlamingo trained: the resampler, the gated layers and the LM's embedding tables; the rest of
the LM comes from its Hugging Face directory `lm_path` (which always gives the LM's config.json
and tokenizer), the tower from an OpenCLIP checkpoint `vision_path` (OpenFlamingo's ViT-L/14 is
OpenAI's CLIP). A tensor both in the OpenFlamingo checkpoint and in `lm_path` is taken from the
former; the latter's copy is reported as ignored.

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
  CLIP's preprocessing.
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

import copy
import dataclasses
import json
import pathlib
import re

import flax.traverse_util
import jax
import ml_collections
import numpy as np

from flamingo_jax import model_factory
from flamingo_jax.checkpoints import hf_layouts, hf_lm, lm_sources, orbax_io, vit
from flamingo_jax.checkpoints.hf_layouts import (Source, fused_part, heads_kernel, layer_norm,
                                                 linear, out_kernel, same)
from flamingo_jax.checkpoints.tensors import CheckpointTensors, TensorView, open_file
from flamingo_jax.config import CLIP_PREPROCESSING, model_config
from flamingo_jax.flamingo.model import lm_config
from flamingo_jax.flamingo.scan import stack_layers
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


@dataclasses.dataclass(frozen=True)
class Checkpoints:
  """The tensors an import reads, each under its file's name for it.

  tensors: the OpenFlamingo checkpoint's, the LM directory's (if it has weights) and the
  OpenCLIP checkpoint's tower; tower: the prefix of the tower's tensors; of_lm: {Hugging Face
  name: OpenFlamingo name} of the OpenFlamingo checkpoint's LM tensors; lm: the LM directory's
  names; model_type, lm_json: the LM's Hugging Face model_type and config.json.
  """
  tensors: TensorView
  tower: str
  of_lm: dict[str, str]
  lm: frozenset[str]
  model_type: str
  lm_json: dict

  @classmethod
  def open(cls, checkpoint, lm_path, vision_path=None) -> "Checkpoints":
    """Reads headers only (a PyTorch file is memory-mapped)."""
    of = TensorView.of(open_file(pathlib.Path(checkpoint)))
    lm_path = pathlib.Path(lm_path)
    lm_json = json.loads((lm_path / "config.json").read_text())
    try:
      lm = TensorView.of(CheckpointTensors(lm_path))
    except FileNotFoundError:  # Config and tokenizer only: the checkpoint must hold the LM.
      lm = TensorView({})
    tensors, tower = of | lm, TOWER
    if f"{TOWER}conv1.weight" not in of:
      if vision_path is None:
        raise ValueError(f"{checkpoint} holds no vision tower ({TOWER}*): give the OpenCLIP "
                         "checkpoint of OpenFlamingo's tower (vision_path, --vision).")
      vision, _ = vit.open_clip_files(vision_path)
      tower = vit.open_clip_prefix(set(vision.keys()))
      tensors |= TensorView.of(vision, lambda k: k if k.startswith(tower) else None)
    of_lm = {name: k for k in of.keys() if (name := lm_name(k)) is not None}
    return cls(tensors, tower, of_lm, frozenset(lm.keys()), lm_json["model_type"], lm_json)

  def lm_layout(self, config: LMConfig) -> dict[str, Source]:
    """hf_layouts.layout of the LM, each tensor under the name of the file it is read from."""
    sources = hf_layouts.layout(self.model_type, config, self.lm | set(self.of_lm))
    name = lambda k: self.of_lm.get(k, k)
    return {p: dataclasses.replace(s, keys=tuple(map(name, s.keys))) for p, s in sources.items()}

  def gated_layers(self) -> tuple[str, list[int]]:
    """(the LM's decoder layers' path, e.g. "model.layers"; indices of the layers with a gated
    layer before them)."""
    found = [GATED.match(k) for k in self.tensors.keys()]
    paths = {m.group(1) for m in found if m}
    if len(paths) != 1:
      raise ValueError(f"Expected the gated layers of one LM layer stack, found {sorted(paths)}.")
    return paths.pop(), sorted({int(m.group(2)) for m in found if m})


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
  section; layers: the LM's decoder layers' path, as `Checkpoints.gated_layers`)."""
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
  """The embedding tables' Sources: rows [0, V) the LM's vocabulary, and OpenFlamingo's rows
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


def open_flamingo_config(base: ml_collections.ConfigDict, checkpoint, lm_path, vision_path=None,
                         *, vocab_size: int | None = None,
                         open_clip_cfg: dict | None = None) -> ml_collections.ConfigDict:
  """A copy of `base` whose model section computes what the OpenFlamingo checkpoint's model
  does (module docstring), derived from the checkpoints; base's other sections, and its model's
  dtypes, remat and layer scan, are kept.

  vocab_size: V, the LM tokenizer's size (OpenFlamingo's `<|endofchunk|>` id), default the size
  of `lm_path`'s tokenizer.json; open_clip_cfg: the tower's open_clip model config, default
  OPEN_CLIP_DEFAULTS and the tensors' shapes.
  """
  files = Checkpoints.open(checkpoint, lm_path, vision_path)
  t = files.tensors
  lm = hf_lm.lm_config_from_hf(files.lm_json)
  if vocab_size is None:
    vocab_size = hf_lm.load_tokenizer(lm_path).get_vocab_size(with_added_tokens=True)
  embedding = files.lm_layout(LMConfig.from_dict(lm))["embedder/embedding"].keys[0]
  rows = t.shape(embedding)[0] if embedding in t else 0
  if rows - vocab_size not in (2, 3):
    raise ValueError(
        f"{embedding!r} has {rows} rows, but OpenFlamingo's table is the LM tokenizer's "
        f"{vocab_size} tokens and <|endofchunk|>, <image> (and <PAD>): 2 or 3 more.")
  if "perceiver.media_time_embs" in t:
    raise ValueError("perceiver.media_time_embs (OpenFlamingo's max_num_media: an embedding per "
                     "image position) has no counterpart in flamingo-jax's resampler.")
  num_latents, dim = t.shape("perceiver.latents")
  layers, gated = files.gated_layers()
  every = gated[0] + 1
  if gated != list(range(every - 1, lm["num_layers"], every)):
    raise ValueError(f"Gated layers before LM layers {gated}: OpenFlamingo's placement is every "
                     f"cross_attn_every_n_layers-th layer, from layer n-1.")
  xattn = f"lang_encoder.{layers}.{gated[0]}.gated_cross_attn_layer."
  frames = t.shape("perceiver.frame_embs")[0] if "perceiver.frame_embs" in t else 0
  model = model_config(
      vision=vit.vision_config_from_open_clip(t, open_clip_cfg or OPEN_CLIP_DEFAULTS,
                                              files.tower),
      lm=lm | dict(vocab_size=vocab_size, num_extra_tokens=rows - vocab_size),
      resampler=dict(
          dim=dim, num_latents=num_latents, num_heads=OF_HEADS,
          depth=len({k.split(".")[2] for k in t.keys() if k.startswith("perceiver.layers.")}),
          head_dim=t.shape("perceiver.layers.0.0.to_q.weight")[0] // OF_HEADS,
          mlp_ratio=t.shape("perceiver.layers.0.1.1.weight")[0] // dim, activation="gelu",
          max_frames=max(frames, 1), temporal_embedding=bool(frames)),
      xattn=dict(every=every, start=every - 1, num_heads=OF_HEADS,
                 head_dim=t.shape(xattn + "attn.to_q.weight")[0] // OF_HEADS,
                 mlp_ratio=t.shape(xattn + "ff.1.weight")[0] // lm["embed_dim"],
                 activation="gelu", kv_norm=False, media_mode="last"),
      dtype=base.model.dtype, image_preprocessing=CLIP_PREPROCESSING, remat=base.model.remat,
      scan_layers=base.model.scan_layers)
  model.param_dtype = base.model.param_dtype
  config = copy.deepcopy(base)
  config.model = model
  return config


def import_open_flamingo(checkpoint, config: ml_collections.ConfigDict, lm_path,
                         vision_path=None, shardings=None, *, strict: bool = True,
                         rng: jax.Array | None = None):
  """(the unscanned parameters of `config`'s Flamingo, ImportReport) from an OpenFlamingo
  checkpoint (a PyTorch state dict file), the LM's Hugging Face directory `lm_path` and, where
  the checkpoint lacks the tower, its OpenCLIP checkpoint `vision_path`.

  config: `open_flamingo_config`'s. shardings: a tree like the unscanned params of
  jax.sharding.Sharding, or None for the default device; strict: raise on missing or unexpected
  tensors (otherwise import what fits and initialise the rest from `rng`). A tensor whose shape
  does not fit always raises, naming it and both shapes.
  """
  files = Checkpoints.open(checkpoint, lm_path, vision_path)
  flat = model_factory.unscanned(config)
  model, lm = model_factory.build_model(flat), lm_config(flat.model)
  lm_layout = files.lm_layout(lm)
  lm_layout |= token_rows(lm_layout, files.tensors, lm)
  layers, _ = files.gated_layers()
  sources = ({f"vision_encoder/{p}": s for p, s in vit.open_clip_layout(
      flat.model.vision, files.tower).items()}
             | {f"lm/{p}": s for p, s in lm_layout.items()}
             | bridge_layout(flat.model, layers))
  superseded = files.lm & set(files.of_lm)  # The LM directory's copies of what OpenFlamingo has.
  ignore = lambda k: (
      ALIASES.match(k) or hf_lm.BUFFERS.search(k) or k in superseded
      or k in (files.tower + "proj", "lm_head.weight", "lang_encoder.lm_head.weight")
      or k.startswith(files.tower + "ln_post."))

  def init(rng):
    return flax.traverse_util.flatten_dict(model_factory.init_params(model, flat, rng), sep="/")
  return hf_lm.import_tensors(
      files.tensors, sources, init, str(checkpoint), "OpenFlamingo", shardings, strict=strict,
      rng=rng, ignore=ignore, new_params=("lm/extra_unembedding",))


def convert_open_flamingo(checkpoint, lm_path, config: ml_collections.ConfigDict, out, *,
                          vision_path=None, open_clip_cfg: dict | None = None) -> pathlib.Path:
  """Writes the Flamingo checkpoint `out` of an OpenFlamingo checkpoint: its model section from
  `open_flamingo_config`, `config`'s other sections, the LM's tokenizer beside the parameters.
  Returns its directory."""
  config = open_flamingo_config(config, checkpoint, lm_path, vision_path,
                                open_clip_cfg=open_clip_cfg)
  params, report = import_open_flamingo(checkpoint, config, lm_path, vision_path,
                                        rng=jax.random.key(config.seed))
  print(report)
  out = orbax_io.save(out, stack_layers(params, config.model), config)
  _, vocabulary, _ = lm_sources.hf_source(lm_path)
  vocabulary.save(out / orbax_io.TOKENIZER_FILE)
  return out
