"""CLIP, SigLIP and OpenCLIP vision towers into `ViT` parameters (flamingo_jax/vision/vit.py).

    params, report = import_hf_vision("path/to/clip-vit-large-patch14")
    params, report = import_open_clip("ViT-L-14.pt", model_cfg=open_clip_model_config)
    print(report)
    tokens = ViT(**fields).apply({"params": params}, images)   # [N, S, D]

Hugging Face: a `CLIPVisionModel` or `SiglipVisionModel` directory, or a whole `CLIPModel` /
`SiglipModel` (its `vision_model.*`; the text tower and the projections are ignored); the
tower's config comes from the directory's config.json (`vision_config_from_hf`). OpenCLIP: a
state dict file (torch.save of `model.state_dict()`, or safetensors) with the ViT under
`visual.` (open_clip.create_model's) or any other prefix (OpenFlamingo's `vision_encoder.`), or a
directory with open_clip_config.json and open_clip's weights file; the config comes from the
open_clip model config where one gives a field, else from the tensors' shapes, with open_clip's
defaults for what shapes do not tell (head width 64, GELU, LayerNorm eps 1e-5:
`vision_config_from_open_clip`).

The tower returns the patch tokens after its final LayerNorm, which is what Flamingo's
resampler takes: OpenCLIP's `ln_post` on every token (the features OpenFlamingo uses), SigLIP's
`post_layernorm` (its last_hidden_state), and CLIP's `post_layernorm`, which transformers applies
to the pooled class token only; `final_norm=False` gives transformers' CLIP last_hidden_state
instead. Pooling heads and projections (SigLIP's `head`, OpenCLIP's `proj`) are ignored.
Tensors are read one parameter at a time and placed with their shardings (engine.py).
"""

import functools
import json
import math
import pathlib
import re

import jax.numpy as jnp
import ml_collections

from flamingo_jax.checkpoints import engine
from flamingo_jax.checkpoints.engine import Source, same
from flamingo_jax.checkpoints.tensors import CheckpointTensors, TensorView, open_file
from flamingo_jax.checkpoints.torch_layouts import (ACTIVATIONS, conv, fused_part, heads_bias,
                                                    heads_kernel, layer_norm, linear, out_kernel)
from flamingo_jax.vision import make_vision_encoder

# model_type -> family; whole models keep the tower's config under "vision_config".
HF_MODEL_TYPES = {"clip": "clip", "clip_vision_model": "clip", "siglip": "siglip",
                  "siglip_vision_model": "siglip"}
# transformers' defaults, which config.json files written before transformers 5 leave out.
HF_DEFAULTS = {
    "clip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, image_size=224, patch_size=32,
                 hidden_act="quick_gelu", layer_norm_eps=1e-5),
    "siglip": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, image_size=224, patch_size=16,
                   hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
}
# Each layout's names of the tower's pieces; a block's are relative to its prefix.
HF_NAMES = dict(patch="embeddings.patch_embedding", cls="embeddings.class_embedding",
                pos="embeddings.position_embedding.weight", pre_norm="pre_layrnorm",
                block="encoder.layers.{}.", norm1="layer_norm1", norm2="layer_norm2",
                fc1="mlp.fc1", fc2="mlp.fc2", final_norm="post_layernorm")
OPEN_CLIP_NAMES = dict(patch="conv1", cls="class_embedding", pos="positional_embedding",
                       pre_norm="ln_pre", block="transformer.resblocks.{}.", norm1="ln_1",
                       norm2="ln_2", fc1="mlp.c_fc", fc2="mlp.c_proj", final_norm="ln_post")
# open_clip's weights file in a model directory, in the order open_clip looks for them.
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                     "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
# open_clip vision_cfg options that change the ViT's computation beyond what `ViT` has.
OPEN_CLIP_UNSUPPORTED = ("ls_init_value", "attentional_pool", "qk_norm", "scaled_cosine_attn",
                         "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc",
                         "timm_model_name", "act_kwargs")


def _square(value, name: str) -> int:
  """An image or patch size: an int, or [h, w] with h == w (ViT's are square)."""
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise ValueError(f"{name} {value} is not square; the ViT takes square images.")
    value = value[0]
  return int(value)


def vision_config_from_hf(config_json: dict) -> dict:
  """The Flamingo config `vision` section (kind "vit" and the ViT's fields) of a Hugging Face
  CLIP or SigLIP config.json: a whole model's (its vision_config) or a bare vision model's."""
  model_type = config_json.get("model_type")
  if model_type not in HF_MODEL_TYPES:
    raise ValueError(f"Unsupported vision model_type {model_type!r}; supported: "
                     f"{sorted(HF_MODEL_TYPES)}.")
  family = HF_MODEL_TYPES[model_type]
  hf = HF_DEFAULTS[family] | (config_json.get("vision_config") or {}
                              if model_type == family else config_json)
  if hf["hidden_act"] not in ACTIVATIONS:
    raise ValueError(f"Unsupported hidden_act {hf['hidden_act']!r}; supported: "
                     f"{sorted(ACTIVATIONS)}.")
  clip = family == "clip"  # CLIP: a class token and a LayerNorm before the blocks; SigLIP not.
  return dict(kind="vit", image_size=_square(hf["image_size"], "image_size"),
              patch_size=_square(hf["patch_size"], "patch_size"), width=hf["hidden_size"],
              depth=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
              mlp_dim=hf["intermediate_size"], class_token=clip, pre_norm=clip,
              final_norm=True, activation=ACTIVATIONS[hf["hidden_act"]],
              norm_eps=float(hf["layer_norm_eps"]), patch_bias=not clip)


def vision_config_from_open_clip(tensors, model_cfg: dict | None = None,
                                 prefix: str = "visual.") -> dict:
  """The `vision` section of the OpenCLIP ViT under `prefix` in `tensors`: the fields that
  `model_cfg` (an open_clip model config: {"vision_cfg": {...}, "quick_gelu": ...}) gives, the
  rest from the tensors' shapes and open_clip's defaults."""
  cfg = dict((model_cfg or {}).get("vision_cfg") or {})
  if unsupported := [k for k in OPEN_CLIP_UNSUPPORTED if cfg.get(k)]:
    raise ValueError(f"Unsupported OpenCLIP vision_cfg options {unsupported}.")
  if isinstance(cfg.get("layers"), (list, tuple)) or cfg.get("pool_type", "tok") == "none":
    raise ValueError("Only OpenCLIP ViTs whose tokens drop the class token are supported, not "
                     f"ModifiedResNet towers or pool_type 'none': {cfg}.")
  names = set(tensors.keys())
  for key in ("conv1.weight", "positional_embedding", "transformer.resblocks.0.mlp.c_fc.weight"):
    if prefix + key not in names:
      raise ValueError(f"No OpenCLIP ViT under {prefix!r}: {prefix + key!r} is missing.")
  width, _, patch, _ = tensors.shape(prefix + "conv1.weight")
  grid = math.isqrt(tensors.shape(prefix + "positional_embedding")[0] - 1)
  blocks = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
  depth = 1 + max(int(m.group(1)) for k in names if (m := blocks.match(k)))
  width, head_width = cfg.get("width", width), cfg.get("head_width", 64)
  if width % head_width:
    raise ValueError(f"The OpenCLIP ViT's width {width} is not a multiple of its head width "
                     f"{head_width}: give the head width (vision_cfg.head_width).")
  patch = _square(cfg.get("patch_size", patch), "patch_size")
  mlp_dim = tensors.shape(prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0]
  return dict(
      kind="vit", image_size=_square(cfg.get("image_size", grid * patch), "image_size"),
      patch_size=patch, width=width, depth=cfg.get("layers", depth),
      num_heads=width // head_width,
      mlp_dim=int(width * cfg["mlp_ratio"]) if "mlp_ratio" in cfg else mlp_dim,
      class_token=True, pre_norm=not cfg.get("no_ln_pre", False),
      final_norm=not cfg.get("final_ln_after_pool", False),
      activation="quick_gelu" if (model_cfg or {}).get("quick_gelu") else "gelu",
      norm_eps=float((cfg.get("norm_kwargs") or {}).get("eps", 1e-5)), patch_bias=False)


def _out_proj(target: str, key: str, d: int, heads: int) -> dict[str, Source]:
  return {f"{target}/kernel": Source((f"{key}.weight",), ((d, d),), functools.partial(
              out_kernel, heads=heads, dh=d // heads, conv1d=False)),
          f"{target}/bias": same(f"{key}.bias", (d,))}


def _hf_attention(target: str, block: str, d: int, heads: int) -> dict[str, Source]:
  """Separate q, k, v projections with biases."""
  out, split = {}, dict(heads=heads, dh=d // heads)
  for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    key = f"{block}self_attn.{theirs}"
    out[f"{target}/{ours}/kernel"] = Source((f"{key}.weight",), ((d, d),),
                                            functools.partial(heads_kernel, **split))
    out[f"{target}/{ours}/bias"] = Source((f"{key}.bias",), ((d,),),
                                          functools.partial(heads_bias, **split))
  return out | _out_proj(f"{target}/out", f"{block}self_attn.out_proj", d, heads)


def _open_clip_attention(target: str, block: str, d: int, heads: int) -> dict[str, Source]:
  """torch.nn.MultiheadAttention: one in_proj to [q | k | v]."""
  out, key = {}, f"{block}attn.in_proj"
  for part, ours in enumerate(("query", "key", "value")):
    split = functools.partial(fused_part, part=part, heads=heads, dh=d // heads,
                              per_head=False, conv1d=False)
    out[f"{target}/{ours}/kernel"] = Source((f"{key}_weight",), ((3 * d, d),), split)
    out[f"{target}/{ours}/bias"] = Source((f"{key}_bias",), ((3 * d,),), split)
  return out | _out_proj(f"{target}/out", f"{block}attn.out_proj", d, heads)


def _layout(vision, prefix: str, names: dict, attention) -> dict[str, Source]:
  """{ViT parameter path: Source} of a tower whose tensors are named as `names` says (HF_NAMES
  or OPEN_CLIP_NAMES) under `prefix`; `attention` gives its blocks' attention Sources."""
  v, n = vision, {k: prefix + name for k, name in names.items()}
  d, p, mlp = v["width"], v["patch_size"], v["mlp_dim"]
  out = conv("patch_embed", n["patch"], d, 3, p, bias=v["patch_bias"])
  if v["class_token"]:
    out["cls_token"] = same(n["cls"], (d,))
  out["pos_embed"] = same(n["pos"], ((v["image_size"] // p) ** 2 + v["class_token"], d))
  if v["pre_norm"]:
    out |= layer_norm("pre_norm", n["pre_norm"], d)
  for i in range(v["depth"]):
    block, ours = n["block"].format(i), f"blocks_{i}/"
    out |= layer_norm(ours + "norm1", block + names["norm1"], d)
    out |= attention(ours + "attn", block, d, v["num_heads"])
    out |= layer_norm(ours + "norm2", block + names["norm2"], d)
    out |= linear(ours + "mlp/wi", block + names["fc1"], d, mlp, True)
    out |= linear(ours + "mlp/wo", block + names["fc2"], mlp, d, True)
  if v["final_norm"]:
    out |= layer_norm("final_norm", n["final_norm"], d)
  return out


def hf_layout(vision, prefix: str = "") -> dict[str, Source]:
  """{ViT parameter path: Source} of a transformers CLIP / SigLIP tower under `prefix`."""
  return _layout(vision, prefix, HF_NAMES, _hf_attention)


def open_clip_layout(vision, prefix: str = "visual.") -> dict[str, Source]:
  """{ViT parameter path: Source} of an OpenCLIP ViT under `prefix`."""
  return _layout(vision, prefix, OPEN_CLIP_NAMES, _open_clip_attention)


def import_tower(tensors, sources, vision, name: str, shardings=None, *,
                 param_dtype=jnp.float32, strict: bool = True, rng=None,
                 ignore=lambda key: False):
  """(params of the tower `vision` describes, ImportReport): engine.import_params on it."""
  vision = ml_collections.ConfigDict(dict(vision))
  init = engine.module_init(make_vision_encoder(vision, param_dtype=param_dtype),
                            jnp.zeros((1, vision.image_size, vision.image_size, 3)))
  return engine.import_params(tensors, sources, init, name, "vision", shardings, strict=strict,
                              rng=rng, ignore=ignore)


def import_hf_vision(path, vision=None, shardings=None, *, param_dtype=jnp.float32,
                     strict: bool = True, rng=None):
  """(ViT params, ImportReport) from a Hugging Face CLIP or SigLIP checkpoint directory
  (config.json and safetensors or PyTorch weights, sharded or not).

  vision: the tower's `vision` section, default `vision_config_from_hf` of the config.json.
  shardings, strict, rng: as in engine.import_params. A tensor whose shape does not fit the config
  raises a ValueError naming it and both shapes.
  """
  path = pathlib.Path(path)
  if vision is None:
    vision = vision_config_from_hf(json.loads((path / "config.json").read_text()))
  tensors = CheckpointTensors(path)
  prefix = ("vision_model." if "vision_model.embeddings.patch_embedding.weight" in tensors
            else "")
  sources = hf_layout(vision, prefix)
  # A whole model's text tower and projections; SigLIP's pooling head; CLIP's pooled output's
  # LayerNorm, where the tower has no final_norm; old position_ids buffers.
  ignore = lambda k: (not k.startswith(prefix) or k.startswith(prefix + "head.")
                      or k.startswith(prefix + "post_layernorm.") or k.endswith(".position_ids"))
  return import_tower(tensors, sources, vision, str(path), shardings, param_dtype=param_dtype,
                      strict=strict, rng=rng, ignore=ignore)


def read_open_clip_config(path) -> dict:
  """An open_clip model config from a JSON file: one of open_clip's model_configs/*.json, or a
  model directory's open_clip_config.json (its "model_cfg")."""
  cfg = json.loads(pathlib.Path(path).read_text())
  return cfg.get("model_cfg", cfg)


def open_clip_files(path):
  """(tensors, the model config or None) of an OpenCLIP state dict file, or of a directory with
  open_clip_config.json and a weights file."""
  path = pathlib.Path(path)
  if path.is_file():
    return TensorView.of(open_file(path)), None
  config = path / "open_clip_config.json"
  model_cfg = read_open_clip_config(config) if config.exists() else None
  for name in OPEN_CLIP_WEIGHTS:
    if (path / name).exists():
      return TensorView.of(open_file(path / name)), model_cfg
  raise FileNotFoundError(f"{path} holds no OpenCLIP weights: expected a state dict file or a "
                          f"directory with one of {list(OPEN_CLIP_WEIGHTS)}.")


def open_clip_prefix(names) -> str:
  """Where the ViT's tensors are: the prefix of the `conv1.weight` that has a class token."""
  for key in names:
    prefix = key.removesuffix("conv1.weight")
    if key.endswith("conv1.weight") and f"{prefix}class_embedding" in names:
      return prefix
  raise ValueError("No OpenCLIP ViT in the checkpoint: no '...conv1.weight' with a "
                   "'...class_embedding' beside it (a ResNet or timm tower is not supported).")


def open_clip_unused(prefix: str):
  """key -> whether the OpenCLIP tower under `prefix` has no use for the tensor: its projection
  to the joint embedding, and the pooled output's LayerNorm where the tokens have none
  (final_ln_after_pool)."""
  return lambda key: key == prefix + "proj" or key.startswith(prefix + "ln_post.")


def import_open_clip(path, vision=None, shardings=None, *, model_cfg: dict | None = None,
                     param_dtype=jnp.float32, strict: bool = True, rng=None):
  """(ViT params, ImportReport) from an OpenCLIP checkpoint (module docstring).

  vision: the tower's `vision` section, default `vision_config_from_open_clip` with
  `model_cfg` (default the directory's open_clip_config.json, if any). The rest as in
  `import_hf_vision`.
  """
  tensors, dir_cfg = open_clip_files(path)
  names = set(tensors.keys())
  prefix = open_clip_prefix(names)
  if vision is None:
    vision = vision_config_from_open_clip(tensors, model_cfg or dir_cfg, prefix)
  sources = open_clip_layout(vision, prefix)
  # The text tower and the logit scale; what the tower has and does not use.
  ignore = lambda k: not k.startswith(prefix) or open_clip_unused(prefix)(k)
  return import_tower(tensors, sources, vision, str(path), shardings, param_dtype=param_dtype,
                      strict=strict, rng=rng, ignore=ignore)
