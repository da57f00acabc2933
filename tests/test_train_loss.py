"""The tiny config learns on the synthetic mixture: its loss falls steadily."""

import jax
import numpy as np

from flamingo_jax.configs import load_config
from flamingo_jax.train import trainer


def test_tiny_loss_falls_steadily_on_the_synthetic_mixture(tmp_path):
  config = load_config("tiny")
  config.train.num_steps = 150
  config.train.log_every = 10
  history = trainer.train(config, str(tmp_path), devices=jax.devices()[:1])
  loss = np.asarray([record["loss"] for record in history])
  assert [record["step"] for record in history] == list(range(10, 151, 10))
  # Measured: 12.01 at step 10 (3 tasks at ln 259 each, lambdas 1, 1, 0.2), 10.11 at step 150.
  windows = loss.reshape(3, 5).mean(axis=1)  # Steps 10-50, 60-100, 110-150.
  assert np.all(np.diff(windows) < 0), windows
  assert loss[-3:].mean() < 0.88 * loss[0], loss
  for task in config.data.tasks:  # Every task learns, not just the heaviest.
    per_task = np.asarray([record[f"loss/{task}"] for record in history])
    assert per_task[-3:].mean() < 0.95 * per_task[0], (task, per_task)
  # The gates open from zero, and the logged rates are sane.
  gates = [v for k, v in history[-1].items() if k.startswith("gate/")]
  assert len(gates) == 4 and all(abs(g) > 0 for g in gates)
  np.testing.assert_allclose(history[-1]["learning_rate"], config.train.optimizer.learning_rate,
                             rtol=1e-6)
  assert history[-1]["tokens_per_second"] > 0
