"""The one checkpoint import loop: any model's parameters from any checkpoint format, by a
mapping table.

A family module (hf_lm, gguf_lm, vit, efficientnet, open_flamingo) states the table: for each
parameter path of the model ("layers_0/attention/query/kernel") a `Source`, the checkpoint
tensors the parameter is made of, the shapes they must have and the function that turns them
into it (transposes, head splits; torch_layouts.py has torch's). `import_params` then
1. checks every tensor's shape against the table, from the headers, before anything is read;
2. sorts the checkpoint's tensors into used, ignored (what the family's `ignore` names: buffers,
   towers the model has no place for) and unexpected, and the parameters into read and fresh
   (no tensor for them: `new_params` by design, the others missing); with `strict`, missing or
   unexpected tensors raise, naming them all;
3. builds the parameters one at a time: reads its tensors (lazily, tensors.py), applies the
   Source's function and places the result at once with its sharding, each device copying
   only its own slice, so that the host holds one parameter's tensors at a time;
4. initialises the fresh ones with the model's own initialisers;
5. reports all of it by name (`ImportReport`).
Tables compose: a checkpoint that holds several models (OpenFlamingo's LM, tower and bridge) is
one table of their tables under their parameter prefixes, read by one `import_params`.
"""

import dataclasses
import re
from typing import Callable

import flax.linen as nn
import flax.traverse_util
import jax
import numpy as np

Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Source:
  """A parameter is `fn(*tensors)` of the checkpoint tensors `keys`, of shapes `shapes`.

  change: what `fn` does to the layout, in words ("[O, I, H, W] -> [H, W, I, O]"), which the
  report gives instead of the shapes where those vary from layer to layer (convolutions).
  """
  keys: tuple[str, ...]
  shapes: tuple[Shape, ...]
  fn: Callable[..., np.ndarray]
  change: str = ""


def identity(x):
  return x


def same(key: str, shape: Shape) -> Source:
  """A parameter stored as is."""
  return Source((key,), (shape,), identity)


def module_init(module: nn.Module, *inputs, **kwargs):
  """init(rng) -> {parameter path: array}, the flat parameters of `module` on `inputs`: what
  `import_params` takes."""
  def init(rng):
    variables = module.init(rng, *inputs, **kwargs)
    return flax.traverse_util.flatten_dict(nn.meta.unbox(variables["params"]), sep="/")
  return init


@dataclasses.dataclass(frozen=True)
class ImportReport:
  """What an import did, by name.

  loaded: checkpoint tensors read. missing: tensors the config needs that the checkpoint
  lacks (or, where no tensor maps to one, the parameter). unexpected: checkpoint tensors
  the config has no place for. reshaped: "tensor (shape) -> parameter (shape)" for each tensor
  transposed, split or reshaped on the way. initialised: parameters given fresh values (new
  by design, or missing). ignored: tensors the model has no use for (buffers it recomputes).
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


def _place(x: np.ndarray, sharding):
  """A host array on device(s): each device copies only its own slice."""
  if sharding is None:
    return jax.device_put(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def _fresh(init, paths, shardings, rng):
  """New values of the parameters `paths` from the model's initialisers; compiled, so the
  other parameters' initialisation is dead code and never runs."""
  out_shardings = None if shardings is None else {p: shardings[p] for p in paths}
  return jax.jit(lambda rng: {p: init(rng)[p] for p in paths},
                 out_shardings=out_shardings)(rng)


def _reshaped(source: Source, path: str, shape: Shape) -> list[str]:
  if source.change:
    return [f"{key} {source.change}" for key in source.keys]
  return [f"{key} {s} -> {path} {shape}" for key, s in zip(source.keys, source.shapes)]


def import_params(tensors, sources: dict[str, Source], init, name: str, model: str,
                  shardings=None, *, strict: bool = True, rng: jax.Array | None = None,
                  ignore=lambda key: False, new_params=()):
  """(params, ImportReport) of any model from any checkpoint format, one parameter at a time
  (module docstring).

  tensors: the checkpoint, with keys(), `in`, shape(key) (read without the data) and get(key)
  -> np.ndarray (tensors.py; gguf_lm.GGUFTensors). sources: {parameter path: Source}, the
  family's table. init(rng) -> the model's flat parameters {path: array} (`module_init`):
  traced for their shapes and dtypes, and compiled for the fresh ones. name: the checkpoint,
  and model: the config, in messages. ignore(key): true of the tensors the model has no use
  for. new_params: parameters that no checkpoint of the format has, which start fresh without
  being missing. shardings: a tree like the params of jax.sharding.Sharding, or None for the
  default device. strict: raise on missing or unexpected tensors; otherwise import what fits
  and initialise the rest from `rng`. A tensor whose shape does not fit always raises a
  ValueError naming it and both shapes.
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
  ignored = tuple(k for k in names if k not in used and ignore(k))
  unexpected = tuple(k for k in names if k not in used and k not in ignored)
  if strict and (missing or unexpected):
    raise ValueError(
        f"Checkpoint {name} does not fit the {model} config: missing {list(missing)}, "
        f"unexpected {list(unexpected)}. Is the config that of the checkpoint? (strict=False "
        "imports what fits and initialises the rest.)")

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
    if source.fn is not identity:
      reshaped += _reshaped(source, p, target.shape)
  if fresh:
    params |= _fresh(init, fresh, flat_shardings, jax.random.key(0) if rng is None else rng)
  report = ImportReport(
      path=name, loaded=tuple(sorted(used)), missing=missing,
      unexpected=unexpected, reshaped=tuple(reshaped), initialised=tuple(fresh), ignored=ignored)
  return flax.traverse_util.unflatten_dict(params, sep="/"), report
