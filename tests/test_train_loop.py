"""The loop every trainer shares (train.loop): step order, logging cadence, hooks, stopping."""

import jax.numpy as jnp

from flamingo_jax.train import loop


def count_step(state, batch, i):
  """A step that adds its batch to the state and reports both, and its index."""
  return state + batch, {"loss": jnp.float32(state + batch), "index": jnp.int32(i)}


def test_logs_every_log_every_steps_and_the_last():
  logged = []
  state, history = loop.run(count_step, 0, iter(range(1, 100)), 7, 3, desc="test",
                            on_log=(lambda step, metrics: logged.append((step, metrics)),))
  assert state == sum(range(1, 8))
  assert [h["step"] for h in history] == [3, 6, 7]
  assert [h["index"] for h in history] == [2.0, 5.0, 6.0]
  assert history[-1]["loss"] == float(state) and isinstance(history[-1]["loss"], float)
  assert logged == [(h["step"], {k: v for k, v in h.items() if k != "step"}) for h in history]


def test_extra_metrics_resume_and_stop():
  extra = lambda done, state, batch: {"seen": float(batch), "state": float(state)}
  state, history = loop.run(count_step, 10, iter([5, 6, 7, 8]), 9, 1, desc="test",
                            first_step=4, extra_metrics=extra,
                            after_step=lambda done, state: done == 6)
  assert state == 10 + 5 + 6
  assert [(h["step"], h["index"], h["seen"], h["state"]) for h in history] == [
      (5, 4.0, 5.0, 15.0), (6, 5.0, 6.0, 21.0)]
