"""One train step on a 2 x 2 x 2 mesh of 8 CPU devices equals the step on one device."""

import jax
import numpy as np

from flamingo_jax.configs import load_config
from flamingo_jax.data import mixtures
from flamingo_jax import sharding
from flamingo_jax.train import trainer as trainer_lib


def small_config():
  config = load_config("tiny")
  config.data.synthetic.split_sizes = {"train": 64, "validation": 8}
  config.data.tasks = {
      "synthetic_interleaved": dict(weight=1.0, batch_size=4, max_length=32, max_images=3),
      "synthetic_pairs": dict(weight=0.2, batch_size=8, max_length=24, max_images=1)}
  config.train.optimizer.warmup_steps = 0  # A real update at the first step.
  # Shallower than tiny: two meshes to compile, and depth adds nothing to what is checked.
  config.model.lm.num_layers = 2
  config.model.vision.depth = 1
  config.model.resampler.depth = 1
  return config


def one_step(config, devices, batches):
  trainer = trainer_lib.Trainer(config, devices)
  train, frozen = trainer.initial_params()
  state = trainer.initial_state(train)
  batches = sharding.global_batch(batches, trainer.mesh, trainer.rules)
  executable, _ = trainer.compiled_step(state, frozen, batches)
  state, metrics = executable(state, frozen, batches)
  return trainer, jax.device_get(state), jax.device_get(metrics)


def test_a_step_on_a_2x2x2_mesh_equals_the_step_on_one_device():
  assert jax.device_count() == 8
  batches = next(mixtures.make_iterator(small_config()))
  single_config = small_config()
  single_config.mesh.update(dict(data=1, fsdp=1, tensor=1))
  _, single, single_metrics = one_step(single_config, jax.devices()[:1], batches)
  config = small_config()
  config.mesh.update(dict(data=2, fsdp=2, tensor=2))
  trainer, sharded, sharded_metrics = one_step(config, jax.devices(), batches)

  # The mesh really splits the work: batches over data x fsdp, weights over fsdp and tensor.
  assert trainer.mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}
  kernel = trainer.train_shardings["gated_xattn_0"]["ffw"]["mlp"]["wi"]["kernel"]
  assert kernel.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  for key in ("loss", "loss/synthetic_interleaved", "loss/synthetic_pairs", "grad_norm"):
    np.testing.assert_allclose(sharded_metrics[key], single_metrics[key], rtol=1e-5)
  assert int(sharded.step) == int(single.step) == 1
  # The step moved the parameters (at closed gates the gates get the gradient, the weight
  # matrices weight decay)...
  initial = jax.device_get(trainer.initial_params()[0])
  assert float(single.params["gated_xattn_0"]["attention_gate"]) != 0
  query = lambda p: p["gated_xattn_0"]["attention"]["query"]["kernel"]
  assert np.any(query(single.params) != query(initial))
  # ...the same way on both meshes. Adam's first update is lr * g / (|g| + eps): where |g| is
  # near eps (an <EOC> row's gradient of 2e-7, a sum that mostly cancels), the two meshes'
  # different summation orders move it by a fraction of a percent of the learning rate (0.3%
  # seen). A sharding error moves whole tensors by up to 2 lr.
  step_size = config.train.optimizer.learning_rate
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=0.01 * step_size),
               sharded.params, single.params)
