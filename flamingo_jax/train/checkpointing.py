"""Training checkpoints with orbax: what a step directory holds and how a run resumes.

`<workdir>/checkpoints/<step>/` holds
- state: the TrainState (step, trainable parameters, optimiser state), sharded arrays;
- data: this run's data position, one tf.data checkpoint per host (`DataPositionHandler`);
- config: the resolved config, as JSON;
- frozen: a fingerprint of the frozen parameters. They are not saved (they are most of the
  model and never change); a restart re-reads them from their source, and the fingerprint
  proves it read the same ones.
"""

import dataclasses

from etils import epath
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

FINGERPRINT_RTOL = 1e-4  # Reductions on another mesh add in another order.


class DataPositionHandler(ocp.CheckpointHandler):
  """Saves and restores a `data.mixtures.MixtureIterator`'s position; each host writes its own
  file, so it runs on every host."""

  def save(self, directory: epath.Path, args: "DataPositionSave"):
    args.iterator.save(str(directory))

  def restore(self, directory: epath.Path, args: "DataPositionRestore"):
    args.iterator.restore(str(directory))
    return args.iterator


@ocp.args.register_with_handler(DataPositionHandler, for_save=True)
@dataclasses.dataclass
class DataPositionSave(ocp.args.CheckpointArgs):
  iterator: object


@ocp.args.register_with_handler(DataPositionHandler, for_restore=True)
@dataclasses.dataclass
class DataPositionRestore(ocp.args.CheckpointArgs):
  iterator: object


@jax.jit
def _leaf_fingerprints(leaves):
  def one(x):
    x = x.astype(jnp.float32)
    # A fixed, position-dependent pattern; XLA fuses it into the reduction, so nothing the size
    # of the leaf is materialised, and the reduction runs where the shards are.
    pattern = jnp.cos(jax.lax.iota(jnp.float32, x.size).reshape(x.shape) * 0.618)
    return jnp.stack([jnp.sum(x), jnp.sum(x * x), jnp.sum(x * pattern)])
  return [one(x) for x in leaves]


def fingerprint(params) -> dict[str, list]:
  """{path: [shape, dtype, sum, sum of squares, patterned sum]} of every leaf."""
  flat = traverse_util.flatten_dict(params, sep="/")
  sums = jax.device_get(_leaf_fingerprints(list(flat.values())))
  return {path: [list(x.shape), str(x.dtype), *map(float, s)]
          for (path, x), s in zip(flat.items(), sums)}


def check_fingerprint(saved: dict, params) -> None:
  """Raises unless `params` are the frozen parameters the checkpoint was trained with."""
  current = fingerprint(params)
  if saved.keys() != current.keys():
    raise ValueError(f"frozen parameters differ from the checkpoint's: paths "
                     f"{sorted(saved.keys() ^ current.keys())[:5]}...")
  for path, (shape, dtype, *sums) in saved.items():
    now_shape, now_dtype, *now = current[path]
    if [shape, dtype] != [now_shape, now_dtype] or not np.allclose(
        sums, now, rtol=FINGERPRINT_RTOL, atol=1e-6 * max(1.0, abs(sums[1]) ** 0.5)):
      raise ValueError(f"frozen parameter {path} differs from the checkpoint's "
                       f"({shape} {dtype} {sums} vs {now_shape} {now_dtype} {now}): the run "
                       "would continue on other frozen weights")


def manager(directory, save_every: int, keep: int, asynchronous: bool) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      epath.Path(directory),
      options=ocp.CheckpointManagerOptions(save_interval_steps=save_every, max_to_keep=keep,
                                           enable_async_checkpointing=asynchronous))


def save(checkpoints: ocp.CheckpointManager, step: int, state, iterator, config,
         frozen_fingerprint: dict, force: bool = False) -> bool:
  """Saves at `step` if the manager's interval says so (or `force`); asynchronous for the
  arrays, while the data position and JSON are written before this returns."""
  return checkpoints.save(step, force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=DataPositionSave(iterator),
      config=ocp.args.JsonSave(config.to_dict()),
      frozen=ocp.args.JsonSave(frozen_fingerprint)))


def restore(checkpoints: ocp.CheckpointManager, step: int, abstract_state, iterator):
  """(state, frozen fingerprint) of `step`; moves `iterator` to the saved data position.
  abstract_state: jax.ShapeDtypeStructs with the shardings to restore onto."""
  restored = checkpoints.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=DataPositionRestore(iterator),
      frozen=ocp.args.JsonRestore()))
  return restored.state, restored.frozen


def restore_state(checkpoints: ocp.CheckpointManager, step: int, abstract_state):
  """The TrainState of `step` alone, without moving a data iterator (to export or inspect)."""
  return checkpoints.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state))).state
