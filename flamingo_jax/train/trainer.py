"""The training loop: one program from a CPU to a TPU pod.

`train(config, workdir)`:
- builds the mesh (`config.mesh`) and places every parameter by its logical axes
  (`config.partitioning.rules`); the frozen parameters are sharded too, and cast to
  `config.train.frozen_dtype`;
- reads the frozen parameters from their source (`config.train.frozen`: "init" draws them from
  `config.seed`, "checkpoint" reads a `flamingo_jax.save` directory) and trains the others with
  the config's AdamW, on the config's data mixture (`data.mixtures`);
- resumes from the latest checkpoint in `<workdir>/checkpoints` when there is one (state, data
  position, and a check that the frozen parameters are the ones it was trained with);
- saves every `checkpoint_every` steps (asynchronously), and on SIGTERM (TPU preemption) saves
  and returns normally;
- logs losses per task, the learning rate, the gradient norm, every tanh gate, tokens/s and the
  model FLOPs utilisation to TensorBoard, the console and `<workdir>/metrics.jsonl`.

`export(config, workdir, directory)` writes the run's latest parameters as a `flamingo_jax.save`
directory, which `flamingo_jax.load`, the evaluation CLI and a later run's frozen source read.
"""

import contextlib
import json
import os
import signal
import threading
import time

from absl import logging
import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flamingo_jax.flamingo import factory
from flamingo_jax.checkpoints import orbax_io
from flamingo_jax.flamingo import trainable as trainable_lib
from flamingo_jax import sharding
from flamingo_jax.train import checkpointing, loop, optimizer
from flamingo_jax.train import flops as flops_lib
from flamingo_jax.train import step as step_lib

# Peak dense bfloat16 FLOP/s per device, for the MFU estimate; other devices report none.
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5": 459e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12,
              "TPU v6 lite": 918e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12}


class Preemption:
  """Records SIGTERM, so that the loop saves and stops at the end of its step."""

  def __init__(self):
    self.requested = threading.Event()
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, lambda *_: self.requested.set())


def gate_values(train_params) -> dict[str, float]:
  """{"gate/<block>/<attention|ffw>": tanh(alpha)}: how far each gated block has opened.
  A stacked (scanned) gate gives one entry per layer."""
  out = {}
  for path, value in traverse_util.flatten_dict(train_params, sep="/").items():
    if path.endswith("_gate"):
      values = np.tanh(np.asarray(jax.device_get(value), np.float32)).reshape(-1)
      for i, v in enumerate(values):
        out[f"gate/{path}" + (f"/{i}" if values.size > 1 else "")] = float(v)
  return out


def step_tokens(batches: dict) -> int:
  """Tokens in one step, all hosts together: `batches` are the global arrays."""
  return sum(int(np.prod(b["tokens"].shape)) for b in batches.values())


class Trainer:
  """The mesh, shardings, model, optimiser and compiled steps of one run."""

  def __init__(self, config: ml_collections.ConfigDict, devices=None):
    self.config = config
    self.mesh = sharding.make_mesh(config.mesh, devices)
    self.rules = sharding.rules(config)
    self.model = factory.build_model(config)
    self.tx = optimizer.make_optimizer(config.train.optimizer)
    self.schedule = optimizer.learning_rate_schedule(config.train.optimizer)
    patterns = config.model.trainable

    def init(rng):  # Only traced: the parameters (boxed with their axes) and optimiser state.
      boxed = self.model.init(rng, *factory.example_inputs(config))["params"]
      train, _ = trainable_lib.split(nn.meta.unbox(boxed), patterns)
      return boxed, self.tx.init(train)
    boxed, abstract_opt = jax.eval_shape(init, jax.random.key(0))
    self.abstract_params = nn.meta.unbox(boxed)
    self.param_shardings = sharding.shardings(nn.get_partition_spec(boxed),
                                                  self.abstract_params, self.mesh, self.rules)
    self.train_shardings, self.frozen_shardings = trainable_lib.split(self.param_shardings,
                                                                      patterns)
    abstract_train, _ = trainable_lib.split(self.abstract_params, patterns)
    self.state_shardings = step_lib.TrainState(
        step=sharding.replicated(self.mesh), params=self.train_shardings,
        opt_state=optimizer.opt_state_shardings(self.tx, abstract_opt, self.train_shardings,
                                                   self.mesh))
    self.abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        step_lib.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_train,
                            opt_state=abstract_opt), self.state_shardings)
    self._compiled = {}

  @contextlib.contextmanager
  def context(self):
    """Where model code traces: logical constraints resolve against this mesh and rules."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def initial_params(self):
    """(trainable, frozen) parameters, sharded: from `config.train.frozen`'s source."""
    config, source = self.config, self.config.train.frozen
    if source.source == "init":
      with self.context():
        params = jax.jit(lambda key: factory.init_params(self.model, config, key),
                         out_shardings=self.param_shardings)(jax.random.key(config.seed))
    elif source.source == "checkpoint":
      params = orbax_io.restore(source.path, config, self.mesh, config.train.frozen_dtype)
    else:
      raise ValueError(f"unknown frozen source {source.source!r}; expected init or checkpoint")
    train, frozen = trainable_lib.split(params, config.model.trainable)
    dtype = jnp.dtype(config.train.frozen_dtype)
    frozen = jax.jit(lambda f: jax.tree.map(lambda x: x.astype(dtype), f),
                     out_shardings=self.frozen_shardings)(frozen)
    return train, frozen

  def initial_state(self, train) -> step_lib.TrainState:
    return jax.jit(lambda p: step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p,
                                                 opt_state=self.tx.init(p)),
                   out_shardings=self.state_shardings)(train)

  def compiled_step(self, state, frozen, batches):
    """The train step compiled for this batch structure (round robin has one per task), with
    explicit shardings; (executable, model FLOPs per step per chip)."""
    key = jax.tree.structure(batches), tuple(x.shape for x in jax.tree.leaves(batches))
    if key not in self._compiled:
      batch_shardings = jax.tree.map(lambda x: x.sharding, batches)
      step_fn = jax.jit(
          lambda s, f, b: step_lib.train_step(self.model, self.tx, s, f, b,
                                              self.config.train.loss_normalization,
                                              self.config.train.microbatches),
          in_shardings=(self.state_shardings, self.frozen_shardings, batch_shardings),
          out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
          donate_argnums=(0,))
      with self.context():
        compiled = step_fn.lower(state, frozen, batches).compile()
        flops = self.model_flops(state, frozen, batches)
      self._compiled[key] = compiled, flops / self.mesh.size
    return self._compiled[key]

  def model_flops(self, state, frozen, batches) -> float:
    """Matmul and convolution FLOPs of one step, all chips together, counted from the jaxpr
    (flamingo_jax.train.flops) of the step without rematerialisation: the model's work, not
    the recomputation, as MFU counts it."""
    config = self.config.copy_and_resolve_references()
    config.model.remat = "none"
    model = factory.build_model(config)
    return flops_lib.count(
        lambda s, f, b: step_lib.train_step(model, self.tx, s, f, b,
                                            config.train.loss_normalization,
                                            config.train.microbatches),
        state, frozen, batches)


def train(config: ml_collections.ConfigDict, workdir: str, devices=None) -> list[dict]:
  """Trains to `config.train.num_steps` (or until SIGTERM) on `devices` (default: all);
  returns the logged metrics."""
  # The data pipeline and the metric writers bring TensorFlow, so only the loop imports them:
  # the compiled step (Trainer, train/aot.py, benchmarks/train_step.py) loads without it, as on
  # the GPU machines benchmarks/device_check.sh runs on.
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from flamingo_jax.data import mixtures  # pylint: disable=g-import-not-at-top
  trainer = Trainer(config, devices)
  preemption = Preemption()
  iterator = mixtures.make_iterator(config)
  checkpoints = checkpointing.manager(
      os.path.join(workdir, "checkpoints"), config.train.checkpoint_every,
      config.train.keep_checkpoints, config.train.async_checkpoints)
  train_params, frozen = trainer.initial_params()
  frozen_fingerprint = checkpointing.fingerprint(frozen)
  latest = checkpoints.latest_step()
  if latest is None:
    state = trainer.initial_state(train_params)
  else:
    state, saved_fingerprint = checkpointing.restore(checkpoints, latest, trainer.abstract_state,
                                                     iterator)
    checkpointing.check_fingerprint(saved_fingerprint, frozen)
    logging.info("Resumed from step %d", latest)
  del train_params

  is_chief = jax.process_index() == 0
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)
  first = int(jax.device_get(state.step))
  peak = PEAK_FLOPS.get(jax.devices()[0].device_kind)
  last_time, last_step = time.perf_counter(), first

  def step(state, batches, _):
    executable, _ = trainer.compiled_step(state, frozen, batches)
    return executable(state, frozen, batches)

  def throughput(done, state, batches):
    """The learning rate, the speed since the last log, the MFU and the gates."""
    nonlocal last_time, last_step
    now = time.perf_counter()
    seconds = (now - last_time) / (done - last_step)
    last_time, last_step = now, done
    metrics = dict(learning_rate=float(trainer.schedule(done - 1)), step_seconds=seconds,
                   tokens_per_second=step_tokens(batches) / seconds,
                   **gate_values(state.params))
    if peak:
      _, flops = trainer.compiled_step(state, frozen, batches)  # Compiled: this step's.
      metrics["mfu"] = flops / seconds / peak
    return metrics

  def append_jsonl(done, metrics):
    if is_chief:
      # gfile: a pod's workdir is a gs:// bucket.
      with tf.io.gfile.GFile(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({"step": done, **metrics}) + "\n")

  def checkpoint(done, state) -> bool:
    stop = preemption.requested.is_set()
    checkpointing.save(checkpoints, done, state, iterator, config, frozen_fingerprint,
                       force=stop or done == config.train.num_steps)
    if stop:
      logging.warning("SIGTERM: saved step %d, stopping", done)
    return stop

  batches = (sharding.global_batch(b, trainer.mesh, trainer.rules) for b in iterator)
  _, history = loop.run(step, state, batches, config.train.num_steps, config.train.log_every,
                        desc="train", first_step=first, extra_metrics=throughput,
                        on_log=(writer.write_scalars, append_jsonl), after_step=checkpoint)
  checkpoints.wait_until_finished()
  checkpoints.close()
  writer.flush()
  logging.info("%s", iterator.report())
  return history


def export(config: ml_collections.ConfigDict, workdir: str, directory: str, devices=None):
  """Writes the parameters of `workdir`'s latest checkpoint, the trained ones from it and the
  frozen ones from their source, to `directory` (`flamingo_jax.save`); returns its path."""
  trainer = Trainer(config, devices)
  checkpoints = checkpointing.manager(os.path.join(workdir, "checkpoints"), 1, 1, False)
  latest = checkpoints.latest_step()
  if latest is None:
    raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints to export")
  _, frozen = trainer.initial_params()
  state = checkpointing.restore_state(checkpoints, latest, trainer.abstract_state)
  checkpoints.close()
  return orbax_io.save(directory, trainable_lib.merge(state.params, frozen), config)
