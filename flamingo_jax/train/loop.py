"""The loop every trainer runs (train.trainer, train.lm_pretraining, train.contrastive): a
compiled step over a batch iterator, with the metrics logged every `log_every` steps and at the
last, and a progress bar that shows the loss.

    state, history = loop.run(step, state, batches, num_steps, log_every, desc="lm")

The trainers keep what is theirs: the state and its step, the batches, the metrics they add
(`extra_metrics`), where the logged metrics go (`on_log`: a metric writer, a JSONL file) and
what follows a step (`after_step`: checkpointing, which may stop the run).
"""

from typing import Any, Callable, Iterator, Sequence

import jax
import tqdm

# (state, batch, step index) -> (state, metrics {name: scalar array}).
Step = Callable[[Any, Any, int], tuple[Any, dict]]


def run(step: Step, state, batches: Iterator, num_steps: int, log_every: int, *, desc: str,
        first_step: int = 0, shown: Sequence[str] = ("loss",),
        extra_metrics: Callable[[int, Any, Any], dict] = lambda done, state, batch: {},
        on_log: Sequence[Callable[[int, dict], None]] = (),
        after_step: Callable[[int, Any], bool] = lambda done, state: False):
  """Steps `state` from `first_step` to `num_steps` on `next(batches)`; returns (state,
  history [{step, **metrics}]), a step counted once done (1 after the first).

  At a logged step the step's metrics are read to floats, `extra_metrics(done, state, batch)`
  adds its own, and each of `on_log` gets (done, metrics); the progress bar (on process 0
  only) shows the `shown` ones. `after_step(done, state)` runs after every step; True stops.
  """
  history = []
  with tqdm.tqdm(total=num_steps, initial=first_step, desc=desc, dynamic_ncols=True,
                 disable=jax.process_index() != 0) as progress:
    for i in range(first_step, num_steps):
      batch = next(batches)
      state, metrics = step(state, batch, i)
      done = i + 1
      progress.update(1)
      if done % log_every == 0 or done == num_steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        metrics.update(extra_metrics(done, state, batch))
        history.append({"step": done, **metrics})
        progress.set_postfix({k: f"{metrics[k]:.4f}" for k in shown})
        for write in on_log:
          write(done, metrics)
      if after_step(done, state):
        break
  return state, history
