"""The flamingo-jax side of benchmarks/compare_openflamingo.py, which runs it in a process of its
own: its peak memory is its own, and the TensorFlow that flamingo-jax's data code imports never
meets torch (whose triton breaks when loaded after it).

  python benchmarks/compare_openflamingo_jax.py DIR

DIR is compare_openflamingo.py's work folder: spec.json (the settings), inputs.npz (the batches,
prompts and candidates, token ids in OpenFlamingo's order), open_flamingo.safetensors (the
OpenFlamingo model's state dict), lm/config.json (its LM's Hugging Face config), and for the
captioning evaluation a tokenizer and two COCO benchmarks' files (spec.json names them). The
model is imported with `checkpoints.flamingo_sources`, so both sides run the same weights.
Before timing anything, its logits on the training batch are checked against OpenFlamingo's
(DIR/open_flamingo_logits.npy): more than the tolerance apart, it exits with an error. Writes
DIR/jax.json (seconds, memory, FLOPs, scaling; the evaluation's predictions and the support
each query was shown) and DIR/jax_outputs.npz (generated tokens, beam scores, log-likelihoods;
token ids in OpenFlamingo's order), which compare_openflamingo.py checks against its own.
"""

import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import measure
from flamingo_jax import decode
from flamingo_jax.checkpoints import flamingo_sources, open_flamingo
from flamingo_jax.configs.base import set_precision, training_sections
from flamingo_jax.decode.beam import beam_search_from_prefill
from flamingo_jax.decode.generate import generate_from_prefill, prefill
from flamingo_jax.flamingo import trainable
from flamingo_jax.flamingo.model import lm_config, xattn_layer_indices
from flamingo_jax.flamingo.scan import stack_layers
from flamingo_jax.train import trainer as trainer_lib

CHECKPOINT, LM_DIR = "open_flamingo.safetensors", "lm"


def flamingo_config(directory: pathlib.Path, spec: dict) -> ml_collections.ConfigDict:
  """The config that computes what the saved OpenFlamingo computes, in the spec's precision
  (`config.precision`), with the paper's optimiser on one device."""
  base = ml_collections.ConfigDict(dict(seed=0, model=dict(
      param_dtype="float32", remat=spec["remat"], scan_layers=spec["scan_layers"])))
  base.update(training_sections(dict(data=1, fsdp=1, tensor=1)))
  set_precision(base, spec["dtype"])
  return flamingo_sources.open_flamingo_config(
      base, directory / CHECKPOINT, directory / LM_DIR, vocab_size=spec["vocab_size"],
      open_clip_cfg=spec["open_clip"])


def train_batches(images: np.ndarray, tokens: np.ndarray, media_token_id: int) -> dict:
  """One dataset's batch as `data.mixtures` yields it. images [B, M, H, W, 3]; tokens [B, L]
  (flamingo-jax ids). Targets are the next tokens; weight 0 on the last position and where the
  target is `<image>`, as OpenFlamingo's labels have -100 there."""
  targets = np.concatenate([tokens[:, 1:], np.zeros_like(tokens[:, :1])], axis=1)
  weights = (targets != media_token_id) & (np.arange(tokens.shape[1]) < tokens.shape[1] - 1)
  return {"m3w": dict(images=images[:, :, None], tokens=tokens, targets=targets,
                      weights=weights.astype(np.float32),
                      attach_to_next=np.zeros(len(tokens), bool), loss_weight=np.float32(1.0))}


def formula_flops(model_config, batch: int, length: int, num_images: int) -> dict[str, float]:
  """Matmul FLOPs of one training step by hand (2 per multiply-add), by part.

  The frozen tower runs forward only (1x). Everything after it is on the gradient's path (the
  trainable `<image>` / `<EOC>` rows reach every LM block): frozen weights cost the forward and
  the input's gradient (2x), trainable weights and products of two activations (attention's
  q k^T and p v) the forward and both operands' gradients (3x).
  """
  v, r, x = model_config.vision, model_config.resampler, model_config.xattn
  lm = lm_config(model_config)
  images, tokens = batch * num_images, batch * length
  grid = (v.image_size // v.patch_size) ** 2
  n = grid + int(v.class_token)
  tower = images * (2 * grid * 3 * v.patch_size ** 2 * v.width + v.depth * (
      8 * n * v.width ** 2 + 4 * n * n * v.width + 4 * n * v.width * v.mlp_dim))
  inner, kv = r.num_heads * r.head_dim, grid + r.num_latents
  resampler = 3 * images * r.depth * (
      4 * r.num_latents * r.dim * inner + 4 * kv * r.dim * inner
      + 4 * r.num_latents * kv * inner + 4 * r.num_latents * r.mlp_ratio * r.dim ** 2)
  d, inner, media = lm.embed_dim, x.num_heads * x.head_dim, num_images * r.num_latents
  gated = 3 * len(xattn_layer_indices(model_config)) * (
      tokens * (4 * d * inner + 4 * media * inner + 4 * x.mlp_ratio * d ** 2)
      + batch * 4 * media * r.dim * inner)
  projections = 2 * d * (2 * lm.num_heads + 2 * lm.kv_heads) * lm.dh
  mlp = (6 if lm.gated_mlp else 4) * d * lm.mlp_dim
  blocks = lm.num_layers * tokens * (2 * (projections + mlp) + 3 * 4 * length * lm.num_heads
                                     * lm.dh)
  head = tokens * (2 * 2 * d * lm.vocab_size + 3 * 2 * d * lm.num_extra_tokens)
  parts = dict(tower=tower, resampler=resampler, gated_xattn=gated, lm_blocks=blocks, head=head)
  return {**{k: float(p) for k, p in parts.items()}, "total": float(sum(parts.values()))}


def split_seconds(start, steps, runs: int) -> tuple[list[float], list[float]]:
  """Seconds of `runs` calls of start() and of steps(what it returned) after it, each timed
  itself, after one warm-up of both (compilation)."""
  starts, rests = [], []
  for run in range(runs + 1):
    begin = time.perf_counter()
    prefilled = jax.block_until_ready(start())
    middle = time.perf_counter()
    jax.block_until_ready(steps(prefilled))
    if run:
      starts.append(middle - begin)
      rests.append(time.perf_counter() - middle)
  return starts, rests


class Side:
  """The imported model, its parameters and its compiled training step."""

  def __init__(self, directory: pathlib.Path, spec: dict):
    self.directory = directory
    self.config = flamingo_config(directory, spec)
    self.trainer = trainer_lib.Trainer(self.config, jax.devices()[:1])
    self.model = self.trainer.model
    self.vocab = self.config.model.lm.vocab_size
    self.load()

  def load(self):
    """(Re)reads the parameters from OpenFlamingo's checkpoint."""
    params, _ = flamingo_sources.import_open_flamingo(self.directory / CHECKPOINT, self.config,
                                                      self.directory / LM_DIR)
    # The frozen weights stored in the precision's dtype, as `flamingo_jax.load` stores them.
    train, frozen = trainable.split(params, self.config.model.trainable)
    params = trainable.merge(train, jax.tree.map(
        lambda x: x.astype(self.config.train.frozen_dtype), frozen))
    if self.config.model.scan_layers:
      params = stack_layers(params, self.config.model)
    self.params = jax.device_put(params, self.trainer.param_shardings)

  def ours(self, tokens: np.ndarray) -> jax.Array:
    """OpenFlamingo's token ids -> flamingo-jax's (`<image>` and `<EOC>` swap)."""
    return jnp.asarray(open_flamingo.flamingo_token_ids(tokens, self.vocab), jnp.int32)

  def theirs(self, tokens) -> np.ndarray:
    """flamingo-jax's token ids -> OpenFlamingo's (the swap is its own inverse)."""
    return open_flamingo.flamingo_token_ids(np.asarray(tokens), self.vocab)

  def logits(self, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """[B, L, V + 2] float32, the columns in OpenFlamingo's order."""
    forward = jax.jit(lambda p, i, t: self.model.apply({"params": p}, i, t))
    logits = np.asarray(forward(self.params, jnp.asarray(images[:, :, None]), self.ours(tokens)))
    return logits[..., self.theirs(np.arange(logits.shape[-1]))]

  def train(self, images: np.ndarray, tokens: np.ndarray, runs: int) -> dict:
    """Times the compiled train step (examples/s follow from the batch) after one warm-up step;
    the peak resident memory of the timed steps; XLA's memory and FLOPs. The parameters are
    the trained ones afterwards."""
    batches = jax.device_put(train_batches(images, np.asarray(self.ours(tokens)),
                                           self.config.model.media_token_id))
    train, frozen = trainable.split(self.params, self.config.model.trainable)
    trainable_parameters = sum(x.size for x in jax.tree.leaves(train))
    # From here the state holds the trainable parameters, as in a training loop: no copy.
    self.params = None
    state = self.trainer.initial_state(train)
    del train
    frozen = jax.device_put(frozen, self.trainer.frozen_shardings)
    compiled, jaxpr_flops = self.trainer.compiled_step(state, frozen, batches)
    losses = []

    def step():
      nonlocal state
      state, metrics = compiled(state, frozen, batches)
      losses.append(float(metrics["loss"]))

    step()
    measure.reset_peak_rss()
    times, _ = measure.seconds(step, runs, warmup=0)
    self.params = trainable.merge(state.params, frozen)
    memory = compiled.memory_analysis()
    batch, length = tokens.shape
    # A GPU's peak since the process started (JAX cannot reset it): training runs first.
    stats = jax.devices()[0].memory_stats()  # None on the CPU.
    return dict(
        seconds=times, first_loss=losses[0], peak_rss=measure.peak_rss(),
        device_peak=stats["peak_bytes_in_use"] if stats else None,
        xla_bytes=dict(arguments=memory.argument_size_in_bytes,
                       outputs=memory.output_size_in_bytes, temporaries=memory.temp_size_in_bytes,
                       aliased=memory.alias_size_in_bytes),
        flops=dict(cost_analysis=compiled.cost_analysis()["flops"], jaxpr=jaxpr_flops,
                   formula=formula_flops(self.config.model, batch, length, images.shape[1])),
        trainable_parameters=trainable_parameters)

  def generation(self, images: np.ndarray, tokens: np.ndarray, candidates: np.ndarray,
                 lengths: np.ndarray, spec: dict) -> tuple[dict, dict]:
    """Greedy and beam decoding of `new_tokens` and the candidates' log-likelihoods for one
    batch of prompts: (seconds of each, of the first token (the media encoded, the prompt
    read) and of the cached steps after it; their outputs)."""
    images, tokens = jnp.asarray(images[:, :, None]), self.ours(tokens)
    eoc, n, runs = self.config.model.eoc_token_id, spec["new_tokens"], spec["runs"]
    mask = np.arange(candidates.shape[1]) < lengths[:, None]
    # Every call encodes its media, as open-flamingo's generate() does once per call.
    visual = lambda: decode.encode(self.model, self.params, images)
    calls = {
        "greedy": lambda: decode.generate(self.model, self.params, visual(), tokens, n,
                                          stop_token=eoc),
        "beam": lambda: decode.beam_search(self.model, self.params, visual(), tokens, n,
                                           beam_size=spec["beams"], stop_token=eoc),
    }
    # The same two calls split at the prompt's cache: the media encoded and the prompt read,
    # two programs as in `calls` and as the harness and generate() run them, then the cached
    # steps.
    read = jax.jit(lambda params, visual: prefill(self.model, params, visual, tokens, None,
                                                  n - 1))
    start = lambda: read(self.params, visual())
    steps = {
        "greedy": lambda first: generate_from_prefill(self.model, self.params, *first, n,
                                                      stop_token=eoc),
        "beam": lambda first: beam_search_from_prefill(
            self.model, self.params, tokens, *first, n, beam_size=spec["beams"],
            stop_token=eoc),
    }
    seconds, outputs = {}, {}
    for name, call in calls.items():
      seconds[name], outputs[name] = measure.seconds(lambda: jax.block_until_ready(call()),
                                                     runs)
      seconds[f"{name}_first_token"], seconds[f"{name}_steps"] = split_seconds(
          start, steps[name], runs)
    seconds["score"], scores = measure.seconds(lambda: jax.block_until_ready(
        decode.candidate_log_likelihoods(self.model, self.params, visual(), tokens,
                                         jnp.asarray(candidates), jnp.asarray(mask))), runs)
    seqs, beam_scores = outputs["beam"]
    return seconds, dict(greedy=self.theirs(outputs["greedy"]), beam=self.theirs(seqs),
                         beam_scores=np.asarray(beam_scores), score=np.asarray(scores))

  def captioning(self, spec: dict, shots: int) -> dict:
    """Few-shot captioning evaluation of the work folder's COCO files (`harness.evaluate`),
    timed once after a warm-up evaluation of the warm-up benchmark's one query (a batch filled
    with it: the same programs compiled): its seconds, metrics and predictions, and the support
    each query was shown (train indices [Q, shots]), for OpenFlamingo's side to show the
    same."""
    # The data and evaluation code brings TensorFlow, which GPU machines may lack: imported
    # only where a captioning evaluation runs (--eval_queries).
    # pylint: disable=g-import-not-at-top
    from flamingo_jax.data import tokenizer
    from flamingo_jax.evaluation import benchmarks, harness
    # pylint: enable=g-import-not-at-top
    e = spec["eval"]
    vocabulary = tokenizer.make_vocabulary(e["tokenizer"])
    settings = harness.Settings(selection="random", batch_size=e["batch"],
                                num_samples=e["queries"], max_new_tokens=spec["new_tokens"],
                                beam_size=spec["beams"])
    run = lambda data: harness.evaluate(self.model, self.params, self.config, vocabulary,
                                        "coco", data, shots, settings)
    run(e["warmup"])
    seconds, result = measure.seconds(lambda: run(e["data"]), 1, warmup=0)
    coco = benchmarks.BENCHMARKS["coco"]
    train = {example.id: i for i, example in enumerate(coco.read(e["data"], coco.support_split))}
    support = [[train[i] for i in ids] for ids in result.pop("support").values()]
    return dict(seconds=seconds, support=support, **result)


def main(argv):
  rss_after_imports = measure.rss()
  directory = pathlib.Path(argv[1])
  spec = json.loads((directory / "spec.json").read_text())
  measure.pin_cpus(spec["threads"])
  if spec["compilation_cache"]:
    jax.config.update("jax_compilation_cache_dir", spec["compilation_cache"])
  inputs = np.load(directory / "inputs.npz")
  side = Side(directory, spec)
  # A benchmark of two different computations would be worthless: the logits first.
  difference = float(np.abs(side.logits(inputs["train_images"], inputs["train_tokens"])
                            - np.load(directory / "open_flamingo_logits.npy")).max())
  if difference > spec["tolerance"]:
    sys.exit(f"flamingo-jax's logits differ from OpenFlamingo's by up to {difference:.2e}, "
             f"more than the tolerance {spec['tolerance']}: not the same model.")
  results = dict(parameters=sum(x.size for x in jax.tree.leaves(side.params)),
                 logits_max_abs_diff=difference)
  # Training first, so that its peak memory holds no other program's leftovers.
  results["train"] = side.train(inputs["train_images"], inputs["train_tokens"], spec["runs"])
  results["train"]["rss_after_imports"] = rss_after_imports
  side.load()  # The imported parameters again, for decoding as OpenFlamingo's side does.
  outputs = {}
  for shots in spec["shots"]:
    results[f"shots_{shots}"], out = side.generation(
        inputs[f"prompt_images_{shots}"], inputs[f"prompt_tokens_{shots}"],
        inputs["candidates"], inputs["candidate_lengths"], spec)
    outputs |= {f"{k}_{shots}": v for k, v in out.items()}
  for shots in spec["eval"]["shots"]:
    results[f"eval_{shots}"] = side.captioning(spec, shots)
  results["scaling"] = []
  for name in spec["scaling"]:
    images, tokens = inputs[f"scaling_images_{name}"], inputs[f"scaling_tokens_{name}"]
    point = side.train(images, tokens, spec["scaling_runs"])
    results["scaling"].append(dict(images=images.shape[1], length=tokens.shape[1], **point))
  (directory / "jax.json").write_text(json.dumps(results))
  np.savez(directory / "jax_outputs.npz", **outputs)


if __name__ == "__main__":
  main(sys.argv)
