"""OpenFlamingo checkpoints into Flamingo parameters, with the model config that computes what
OpenFlamingo computes: its bridge's table and config (open_flamingo.py) put together with its
LM's (hf_lm) and its tower's (vit), read by one engine.import_params.

    config = open_flamingo_config(base_config, "checkpoint.pt", "path/to/mpt-7b",
                                  vision_path="ViT-L-14.pt")
    params, report = import_open_flamingo("checkpoint.pt", config, "path/to/mpt-7b",
                                          vision_path="ViT-L-14.pt")
    print(report)

An OpenFlamingo model's `state_dict()` has everything; the released checkpoints keep only what
OpenFlamingo trained (the resampler, the gated layers and the LM's embedding tables): the rest
of the LM comes from its Hugging Face directory `lm_path` (which always gives the LM's
config.json and tokenizer), the tower from an OpenCLIP checkpoint `vision_path` (OpenFlamingo's
ViT-L/14 is OpenAI's CLIP). A tensor both in the OpenFlamingo checkpoint and in `lm_path` is
taken from the former; the latter's copy is reported as ignored. `python -m
flamingo_jax.checkpoints.convert --from open_flamingo` is the command line.
"""

import copy
import dataclasses
import json
import pathlib

import flax.traverse_util
import jax
import ml_collections

from flamingo_jax.checkpoints import engine, hf_lm, open_flamingo, orbax_io, vit
from flamingo_jax.checkpoints.engine import Source
from flamingo_jax.checkpoints.tensors import CheckpointTensors, TensorView, open_file
from flamingo_jax.configs.base import CLIP_PREPROCESSING, model_config
from flamingo_jax.flamingo import factory
from flamingo_jax.flamingo.model import lm_config
from flamingo_jax.flamingo.scan import stack_layers
from flamingo_jax.lm.model import LMConfig


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
    tensors, tower = of | lm, open_flamingo.TOWER
    if f"{tower}conv1.weight" not in of:
      if vision_path is None:
        raise ValueError(f"{checkpoint} holds no vision tower ({tower}*): give the OpenCLIP "
                         "checkpoint of OpenFlamingo's tower (vision_path, --vision).")
      vision, _ = vit.open_clip_files(vision_path)
      tower = vit.open_clip_prefix(set(vision.keys()))
      tensors |= TensorView.of(vision, lambda k: k if k.startswith(tower) else None)
    of_lm = {name: k for k in of.keys() if (name := open_flamingo.lm_name(k)) is not None}
    return cls(tensors, tower, of_lm, frozenset(lm.keys()), lm_json["model_type"], lm_json)

  def lm_layout(self, config: LMConfig) -> dict[str, Source]:
    """hf_lm.layout of the LM, each tensor under the name of the file it is read from."""
    sources = hf_lm.layout(self.model_type, config, self.lm | set(self.of_lm))
    name = lambda k: self.of_lm.get(k, k)
    return {p: dataclasses.replace(s, keys=tuple(map(name, s.keys))) for p, s in sources.items()}


def open_flamingo_config(base: ml_collections.ConfigDict, checkpoint, lm_path, vision_path=None,
                         *, vocab_size: int | None = None,
                         open_clip_cfg: dict | None = None,
                         tower_ln_post: bool = False) -> ml_collections.ConfigDict:
  """A copy of `base` whose model section computes what the OpenFlamingo checkpoint's model
  does (open_flamingo.py's docstring), derived from the checkpoints; base's other sections, and
  its model's dtypes, remat and layer scan, are kept.

  vocab_size: V, the LM tokenizer's size (OpenFlamingo's `<|endofchunk|>` id), default the size
  of `lm_path`'s tokenizer.json; open_clip_cfg: the tower's open_clip model config, default
  open_flamingo.OPEN_CLIP_DEFAULTS and the tensors' shapes; tower_ln_post: feed the resampler
  the tower's tokens after `ln_post`, for a model trained with open_clip >= 2.23 (default:
  before, as the released models were trained; open_flamingo.py's docstring).
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
  resampler, xattn = open_flamingo.bridge_config(t, lm)
  vision = vit.vision_config_from_open_clip(
      t, open_clip_cfg or open_flamingo.OPEN_CLIP_DEFAULTS, files.tower) | dict(
          final_norm=tower_ln_post)
  model = model_config(
      vision=vision, lm=lm | dict(vocab_size=vocab_size, num_extra_tokens=rows - vocab_size),
      resampler=resampler, xattn=xattn, dtype=base.model.dtype,
      image_preprocessing=CLIP_PREPROCESSING, remat=base.model.remat,
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
  flat = factory.unscanned(config)
  model, lm = factory.build_model(flat), lm_config(flat.model)
  lm_layout = files.lm_layout(lm)
  lm_layout |= open_flamingo.token_rows(lm_layout, files.tensors, lm)
  layers, _ = open_flamingo.gated_layers(files.tensors.keys())
  sources = ({f"vision_encoder/{p}": s for p, s in vit.open_clip_layout(
      flat.model.vision, files.tower).items()}
             | {f"lm/{p}": s for p, s in lm_layout.items()}
             | open_flamingo.bridge_layout(flat.model, layers))
  superseded = files.lm & set(files.of_lm)  # The LM directory's copies of what OpenFlamingo has.
  ignore = lambda k: (
      open_flamingo.ALIASES.match(k) or hf_lm.BUFFERS.search(k) or k in superseded
      or k in ("lm_head.weight", "lang_encoder.lm_head.weight")
      or vit.open_clip_unused(files.tower)(k))

  def init(rng):
    return flax.traverse_util.flatten_dict(factory.init_params(model, flat, rng), sep="/")
  return engine.import_params(
      files.tensors, sources, init, str(checkpoint), "OpenFlamingo", shardings, strict=strict,
      rng=rng, ignore=ignore, new_params=("lm/extra_unembedding",))


def convert_open_flamingo(checkpoint, lm_path, config: ml_collections.ConfigDict, out, *,
                          vision_path=None, open_clip_cfg: dict | None = None,
                          tower_ln_post: bool = False) -> pathlib.Path:
  """Writes the Flamingo checkpoint `out` of an OpenFlamingo checkpoint: its model section from
  `open_flamingo_config` (which the keyword arguments go to), `config`'s other sections, the
  LM's tokenizer beside the parameters. Returns its directory."""
  config = open_flamingo_config(config, checkpoint, lm_path, vision_path,
                                open_clip_cfg=open_clip_cfg, tower_ln_post=tower_ln_post)
  params, report = import_open_flamingo(checkpoint, config, lm_path, vision_path,
                                        rng=jax.random.key(config.seed))
  print(report)
  out = orbax_io.save(out, stack_layers(params, config.model), config)
  # seqio (TensorFlow) here alone, as in hf_lm.load_vocabulary.
  from flamingo_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  hf_lm.load_vocabulary(lm_path).save(out / tokenizer_lib.TOKENIZER_FILE)
  return out
