"""flamingo-jax against OpenFlamingo (the `open-flamingo` package), the same model side by side:
training step, cached few-shot generation (greedy and beam search) and candidate scoring, on this
machine's CPU in float32 with the same threads for both. Prints one table and writes it as JSON,
with the training step's FLOPs (XLA's cost analysis, the jaxpr's matmuls and a formula) and how
step time and memory grow with images per sequence and sequence length (flamingo-jax).

  python benchmarks/compare_openflamingo.py                 # the default configuration
  python benchmarks/compare_openflamingo.py --smoke         # a tiny model, in half a minute

The same model: OpenFlamingo is built with random weights (an OpenCLIP ViT, a transformers LLaMA
extended by open_flamingo's FlamingoLMMixin, its Flamingo; the tanh gates set to 0.5 so that the
images count), its state dict saved and imported with `flamingo_jax.checkpoints.flamingo_sources`,
and both sides' logits on the training batch must agree (`--tolerance`) before anything is
timed. Generated tokens, beam scores, the first step's loss and the candidates' log-likelihoods
are compared too and reported.

Each side computes as its users run it:
- training: OpenFlamingo as its train loop (`model(vision_x, lang_x, labels=...)`, backward,
  gradients of the input embeddings masked to `<image>` and `<|endofchunk|>`, clipping, AdamW;
  it trains the perceiver, the gated layers and the whole input embedding table); flamingo-jax
  with `train.trainer.Trainer`'s compiled step (the resampler, the gated blocks and the new
  tokens' rows, the paper's AdamW).
- generation: open-flamingo 2.0.1's `generate()` fails under transformers 5, so this drives
  its forward pass as `generate()` does: media encoded once per call (`_use_cached_vision_x`),
  the LM's `past_key_values`, logits of the last position only (what transformers' generate
  asks for), and for beam search the images and the prompt repeated per beam; both sides always
  decode `--new_tokens` tokens, stopping at `<|endofchunk|>` only by filling with it. The time
  to the first token is its own measurement: on flamingo-jax a call for one new token.
- scoring: OpenFlamingo as its evaluation does (`cache_media`, the prompt read once, each
  candidate run on the prompt's cache); flamingo-jax's `decode.candidate_log_likelihoods` (all
  candidates in one call on copies of the prompt's cache).

flamingo-jax runs in a process of its own (benchmarks/compare_openflamingo_jax.py), started
from this one after the model is saved, so each side's peak memory is its own; both processes
are pinned to the same `--threads` CPUs (`os.sched_setaffinity`, from which XLA sizes its thread
pools; torch.set_num_threads for torch). Times are medians of `--runs` runs after one warm-up
run (flamingo-jax's compilation); peak memory is the process's peak resident set (VmHWM) over
the timed training steps, with everything it holds (weights, optimiser state, runtime, and on
flamingo-jax's side TensorFlow and what XLA's compiler keeps), and that less its resident set
after its imports.
"""

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import numpy as np
import open_clip
from open_flamingo.src import flamingo as of_flamingo
from open_flamingo.src import flamingo_lm as of_lm
from open_flamingo.src import helpers as of_helpers
from open_flamingo.src import utils as of_utils
import safetensors.torch
import torch
import transformers

import measure

FLAGS = flags.FLAGS
flags.DEFINE_bool("smoke", False, "A tiny model and short runs, for the test: the defaults of "
                  "the flags below not given are SMOKE_FLAGS'.")
flags.DEFINE_integer("threads", 2, "CPU threads for each side (CPUs 0..threads-1).")
flags.DEFINE_integer("runs", 5, "Timed runs of everything (after one warm-up run).")
flags.DEFINE_list("shots", ["4", "32"], "Few-shot prompts to generate and score with.")
flags.DEFINE_integer("prompts", 1, "Prompts per generation / scoring batch.")
flags.DEFINE_integer("new_tokens", 20, "Tokens to generate.")
flags.DEFINE_integer("beams", 3, "Beam search width.")
flags.DEFINE_list("scaling_images", ["1", "5", "32"],
                  "flamingo-jax's training step with these images per sequence too.")
flags.DEFINE_list("scaling_lengths", ["64", "256", "512"],
                  "flamingo-jax's training step with these sequence lengths too.")
flags.DEFINE_integer("scaling_runs", 2, "Timed runs of each scaling point.")
flags.DEFINE_enum("remat", "none", ["none", "full", "dots"], "flamingo-jax's remat policy.")
flags.DEFINE_bool("scan_layers", False, "flamingo-jax's layer scan.")
flags.DEFINE_float("tolerance", 1e-3, "The most the two sides' logits, first losses and "
                   "log-likelihoods may differ by (float32; absolute).")
flags.DEFINE_string("json", os.path.join(tempfile.gettempdir(), "compare_openflamingo.json"),
                    "Where to write the results.")
flags.DEFINE_string("compilation_cache", "", "A folder for JAX's persistent compilation cache "
                    "(a rerun then skips flamingo-jax's compilation, minutes of it here).")
flags.DEFINE_string("workdir", "", "Where to keep the saved model and inputs (default: a "
                    "temporary folder, deleted at the end).")

HERE = pathlib.Path(__file__).resolve().parent
# Saved as safetensors, which flamingo-jax reads without torch (a torch.save file it reads with
# torch, which would cost its process torch's memory).
CHECKPOINT = "open_flamingo.safetensors"
ALIASES = ("lang_encoder.old_decoder_blocks.", "lang_encoder.gated_cross_attn_layers.")
# The default configuration (issue 9): OpenCLIP ViT-B/32 at 224 px, a LLaMA-style LM of 12
# layers (width 512, 8 heads, MLP 1376, 32,000 tokens), gated layers every 2 LM layers, the
# resampler (6 layers, 64 latents) at the tower's width; batches of 4 x 128 tokens with 3
# images each; few-shot captions of 12 tokens after each image and a 4-token query.
DEFAULT = dict(
    open_clip=open_clip.get_model_config("ViT-B-32"),
    lm=dict(vocab_size=32000, hidden_size=512, num_hidden_layers=12, num_attention_heads=8,
            intermediate_size=1376),
    resampler={}, every=2, batch=4, length=128, images=3, caption=12, query=4)
SMOKE = dict(
    open_clip=dict(embed_dim=16, vision_cfg=dict(image_size=32, layers=2, width=32,
                                                 head_width=8, patch_size=8),
                   text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=2, layers=1)),
    lm=dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=96),
    resampler=dict(depth=1, num_latents=8), every=2, batch=2, length=24, images=2, caption=3,
    query=2)
CANDIDATE_LENGTHS = (1, 2, 3, 4, 2)  # Tokens of each candidate answer that scoring ranks.
SMOKE_FLAGS = dict(runs=3, shots=["2"], new_tokens=8, scaling_images=["1"], scaling_lengths=[],
                   scaling_runs=1)


def set_smoke_defaults() -> None:
  for name, value in SMOKE_FLAGS.items():
    if not FLAGS[name].present:
      FLAGS[name].value = value


def open_flamingo_model(sizes: dict, directory: pathlib.Path) -> of_flamingo.Flamingo:
  """OpenFlamingo with random weights, built as its factory builds one; the LM's config (before
  the new tokens) saved in directory/lm, for the import."""
  (directory / "open_clip").mkdir(exist_ok=True)
  (directory / "open_clip" / "open_clip_config.json").write_text(
      json.dumps(dict(model_cfg=sizes["open_clip"])))
  clip = open_clip.create_model(f"local-dir:{directory / 'open_clip'}")
  clip.visual.output_tokens = True
  config = transformers.LlamaConfig(**sizes["lm"])
  config.save_pretrained(directory / "lm")
  lm = transformers.LlamaForCausalLM(config)
  of_utils.extend_instance(lm, of_lm.FlamingoLMMixin)
  lm.set_decoder_layers_attr_name("model.layers")
  vocab = sizes["lm"]["vocab_size"]
  lm.resize_token_embeddings(vocab + 2)  # <|endofchunk|> = V, <image> = V + 1.
  model = of_flamingo.Flamingo(clip, lm, eoc_token_id=vocab, media_token_id=vocab + 1,
                               vis_dim=sizes["open_clip"]["vision_cfg"]["width"],
                               cross_attn_every_n_layers=sizes["every"])
  if sizes["resampler"]:  # Other than OpenFlamingo's (6 layers, 64 latents).
    model.perceiver = of_helpers.PerceiverResampler(dim=model.vis_dim, **sizes["resampler"])
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("_gate"):  # Open at 0 the gated layers would change nothing.
        p.fill_(0.5)
  return model.eval()


def state_dict(model: of_flamingo.Flamingo) -> dict[str, torch.Tensor]:
  """The model's state dict without the aliases of its LM's decoder and gated layers, which
  share their tensors (safetensors stores each once; the importer ignores the aliases)."""
  return {k: v.contiguous() for k, v in model.state_dict().items()
          if not k.startswith(ALIASES)}


def interleaved(rng, batch: int, length: int, num_images: int, vocab: int) -> np.ndarray:
  """Token ids [B, L] (OpenFlamingo's): `num_images` chunks `<image> text <|endofchunk|>`."""
  tokens = rng.integers(0, vocab, (batch, length))
  starts = np.arange(num_images) * length // num_images
  tokens[:, starts] = vocab + 1
  tokens[:, np.append(starts[1:], length) - 1] = vocab
  return tokens


def few_shot(rng, batch: int, shots: int, caption: int, query: int, vocab: int) -> np.ndarray:
  """Prompts [B, L] (OpenFlamingo's ids): `shots` x `<image> caption <|endofchunk|>`, then the
  query's `<image>` and text."""
  shot = lambda: np.concatenate([[vocab + 1], rng.integers(0, vocab, caption), [vocab]])
  return np.stack([np.concatenate([*(shot() for _ in range(shots)), [vocab + 1],
                                   rng.integers(0, vocab, query)]) for _ in range(batch)])


def make_inputs(sizes: dict, image_size: int) -> dict:
  """Everything both sides run on: images [B, M, H, W, 3] float32, token ids [B, L] int32."""
  rng = np.random.default_rng(0)
  vocab = sizes["lm"]["vocab_size"]
  images = lambda b, m: rng.standard_normal((b, m, image_size, image_size, 3), np.float32)
  out = dict(train_images=images(sizes["batch"], sizes["images"]),
             train_tokens=interleaved(rng, sizes["batch"], sizes["length"], sizes["images"],
                                      vocab))
  for shots in map(int, FLAGS.shots):
    out[f"prompt_images_{shots}"] = images(FLAGS.prompts, shots + 1)
    out[f"prompt_tokens_{shots}"] = few_shot(rng, FLAGS.prompts, shots, sizes["caption"],
                                             sizes["query"], vocab)
  lengths = np.array(CANDIDATE_LENGTHS)
  out["candidates"] = rng.integers(0, vocab, (len(lengths), lengths.max()))
  out["candidate_lengths"] = lengths
  for name, (m, length) in scaling_points(sizes).items():
    out[f"scaling_images_{name}"] = images(sizes["batch"], m)
    out[f"scaling_tokens_{name}"] = interleaved(rng, sizes["batch"], length, m, vocab)
  return out


def scaling_points(sizes: dict) -> dict[str, tuple[int, int]]:
  """{name: (images per sequence, tokens per sequence)} of the scaling figures besides the
  training batch's own."""
  points = [(int(m), sizes["length"]) for m in FLAGS.scaling_images]
  points += [(sizes["images"], int(n)) for n in FLAGS.scaling_lengths]
  return {f"{m}x{n}": (m, n) for m, n in sorted(points)}


class OpenFlamingoSide:
  """OpenFlamingo's training step, cached decoding and scoring, as its own code runs them."""

  def __init__(self, model: of_flamingo.Flamingo, vocab: int):
    self.model, self.lm = model, model.lang_encoder
    self.eoc, self.media = vocab, vocab + 1

  @staticmethod
  def vision_x(images: np.ndarray) -> torch.Tensor:
    """[B, M, H, W, 3] -> OpenFlamingo's [B, M, 1, 3, H, W]."""
    return torch.from_numpy(images).permute(0, 1, 4, 2, 3)[:, :, None].contiguous()

  @torch.no_grad()
  def logits(self, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    return self.model(self.vision_x(images), torch.from_numpy(tokens)).logits.numpy()

  def train(self, images: np.ndarray, tokens: np.ndarray, runs: int) -> dict:
    """OpenFlamingo's train loop (open_flamingo/train/train_utils.py) on one batch: seconds of
    `runs` steps after a warm-up step, the first step's loss and the peak resident memory."""
    model = self.model.train()
    model.requires_grad_(False)
    embeddings = self.lm.get_input_embeddings()
    for part in (model.perceiver, self.lm.gated_cross_attn_layers, embeddings):
      part.requires_grad_(True)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # Its weight decay: the gated layers' weights but their gates and norms.
    decay = lambda n: ("gated_cross_attn_layer" in n and "_gate" not in n and "norm" not in n
                       and "bias" not in n)
    optimizer = torch.optim.AdamW(
        [dict(params=[p for n, p in named if decay(n)], weight_decay=0.1),
         dict(params=[p for n, p in named if not decay(n)], weight_decay=0.0)], lr=1e-4)
    vision_x, lang_x = self.vision_x(images), torch.from_numpy(tokens)
    labels = lang_x.masked_fill(lang_x == self.media, -100)
    keep = torch.zeros(embeddings.weight.shape[0], 1)
    keep[[self.media, self.eoc]] = 1.0

    def step():
      loss = model(vision_x, lang_x, labels=labels).loss
      loss.backward()
      # Only the new tokens' rows of the input embeddings learn.
      embeddings.weight.grad = embeddings.weight.grad * keep
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      optimizer.step()
      optimizer.zero_grad(set_to_none=True)
      return loss.item()

    first_loss = step()
    measure.reset_peak_rss()
    times, _ = measure.seconds(step, runs, warmup=0)
    model.eval()
    return dict(seconds=times, first_loss=first_loss, peak_rss=measure.peak_rss(),
                trainable_parameters=sum(p.numel() for _, p in named))

  def start(self, images: np.ndarray, prompt: np.ndarray, repeats: int = 1):
    """As open-flamingo's generate(): the media encoded once for the call, then the prompt read
    into the LM's cache. Returns the logits of its last position [B * repeats, V + 2] and the
    cache."""
    # pylint: disable=protected-access
    self.lm._use_cached_vision_x = True
    self.model._encode_vision_x(self.vision_x(images).repeat_interleave(repeats, 0))
    # pylint: enable=protected-access
    out = self.lm(input_ids=torch.from_numpy(prompt).repeat_interleave(repeats, 0),
                  attention_mask=None, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.past_key_values

  def extend(self, tokens: torch.Tensor, cache):
    """tokens [B] -> the logits after them [B, V + 2] (the cache grows in place)."""
    out = self.lm(input_ids=tokens[:, None], attention_mask=None, past_key_values=cache,
                  use_cache=True, logits_to_keep=1)
    return out.logits[:, -1]

  def finish(self):
    self.lm.clear_conditioned_layers()
    self.lm._use_cached_vision_x = False  # pylint: disable=protected-access

  @torch.no_grad()
  def greedy(self, images: np.ndarray, prompt: np.ndarray, new_tokens: int):
    """(tokens [B, new_tokens], seconds to the first one); after `<|endofchunk|>` a sequence
    repeats it."""
    start = time.perf_counter()
    logits, cache = self.start(images, prompt)
    token = logits.argmax(-1)
    first = time.perf_counter() - start
    tokens, done = [token], torch.zeros_like(token, dtype=torch.bool)
    for _ in range(new_tokens - 1):
      logits = self.extend(token, cache)
      done |= token == self.eoc
      token = torch.where(done, self.eoc, logits.argmax(-1))
      tokens.append(token)
    self.finish()
    return torch.stack(tokens, 1).numpy(), first

  @torch.no_grad()
  def beam(self, images: np.ndarray, prompt: np.ndarray, new_tokens: int, k: int):
    """Beam search as flamingo_jax.decode.beam_search computes it (K live and K finished
    hypotheses, 2K candidates a step, length penalty 1): (sequences [B, K, new_tokens],
    scores [B, K], seconds to the first token)."""
    start = time.perf_counter()
    logits, cache = self.start(images, prompt, repeats=k)
    batch, vocab = prompt.shape[0], logits.shape[-1]
    live_seqs = torch.full((batch, k, new_tokens), self.eoc)
    live_scores = torch.full((batch, k), -torch.inf)
    live_scores[:, 0] = 0.0  # Only beam 0 at first, so that K beams differ.
    done_seqs, done_scores = live_seqs.clone(), torch.full((batch, k), -torch.inf)

    def best(scores, *arrays):
      top, index = scores.topk(k, dim=1)
      return top, *(a.gather(1, index.view(*index.shape, *(1,) * (a.ndim - 2)).expand(
          *index.shape, *a.shape[2:])) for a in arrays)

    for t in range(new_tokens):
      log_probs = torch.log_softmax(logits.float(), -1).view(batch, k, vocab)
      scores, index = (live_scores[..., None] + log_probs).view(batch, -1).topk(2 * k, dim=1)
      origin, token = index // vocab, index % vocab
      seqs = live_seqs.gather(1, origin[..., None].expand(-1, -1, new_tokens)).clone()
      seqs[:, :, t] = token
      stopped = token == self.eoc
      done_scores, done_seqs = best(
          torch.cat([done_scores, torch.where(stopped, scores / (t + 1), -torch.inf)], 1),
          torch.cat([done_seqs, seqs], 1))
      live_scores, live_seqs, origin, token = best(torch.where(stopped, -torch.inf, scores),
                                                   seqs, origin, token)
      if t == 0:
        first = time.perf_counter() - start
      if t < new_tokens - 1:
        cache.reorder_cache((torch.arange(batch)[:, None] * k + origin).view(-1))
        logits = self.extend(token.reshape(-1), cache)
    self.finish()
    scores, seqs = best(torch.cat([done_scores, live_scores / new_tokens], 1),
                        torch.cat([done_seqs, live_seqs], 1))
    return seqs.numpy(), scores.numpy(), first

  @torch.no_grad()
  def score(self, images: np.ndarray, prompt: np.ndarray, candidates: np.ndarray,
            lengths: np.ndarray) -> np.ndarray:
    """log p(candidate | prompt) [B, C] as OpenFlamingo's evaluation ranks classes: the media
    cached, the prompt read once, each candidate run on the prompt's cache."""
    model, prompt = self.model, torch.from_numpy(prompt)
    model.cache_media(input_ids=prompt, vision_x=self.vision_x(images))
    out = model(vision_x=None, lang_x=prompt, clear_conditioned_layers=False, use_cache=True)
    cache, last = out.past_key_values, out.logits[:, -1:]
    result = []
    for candidate, length in zip(candidates, lengths):
      ids = torch.from_numpy(candidate[:length])[None].expand(prompt.shape[0], -1)
      logits = model(vision_x=None, lang_x=ids, clear_conditioned_layers=False,
                     past_key_values=cache, use_cache=True).logits
      logits = torch.cat([last, logits[:, :-1]], 1)
      result.append(torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None]).sum((1, 2)))
      # Back to the prompt's cache (OpenFlamingo's evaluation passed the immutable tuples of
      # transformers 4; transformers 5's cache grows in place).
      cache.crop(-int(length))
    model.uncache_media()
    return torch.stack(result, 1).numpy()

  def generation(self, images, prompt, candidates, lengths, new_tokens: int, beams: int,
                 runs: int) -> tuple[dict, dict]:
    """(seconds of greedy and beam decoding, of their first tokens (timed inside the same
    calls) and of scoring; the outputs)."""
    seconds, outputs, firsts = {}, {}, {"greedy": [], "beam": []}

    def timed(name, call):
      *out, first = call()
      firsts[name].append(first)
      return out

    seconds["greedy"], (outputs["greedy"],) = measure.seconds(
        lambda: timed("greedy", lambda: self.greedy(images, prompt, new_tokens)), runs)
    seconds["beam"], (outputs["beam"], outputs["beam_scores"]) = measure.seconds(
        lambda: timed("beam", lambda: self.beam(images, prompt, new_tokens, beams)), runs)
    for name, times in firsts.items():
      seconds[f"{name}_first_token"] = times[-runs:]  # Not the warm-up's.
    seconds["score"], outputs["score"] = measure.seconds(
        lambda: self.score(images, prompt, candidates, lengths), runs)
    return seconds, outputs


def run_flamingo_jax(directory: pathlib.Path) -> tuple[dict, dict]:
  """Runs benchmarks/compare_openflamingo_jax.py on `directory` on the CPU: (its results, its
  outputs)."""
  subprocess.run([sys.executable, str(HERE / "compare_openflamingo_jax.py"), str(directory)],
                 check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return (json.loads((directory / "jax.json").read_text()),
          dict(np.load(directory / "jax_outputs.npz")))


def measure_both(sizes: dict, directory: pathlib.Path, rss_after_imports: int) -> dict:
  """Builds and saves the model, runs flamingo-jax's side (which first checks its logits
  against OpenFlamingo's), then OpenFlamingo's; returns both sides' results and outputs.
  rss_after_imports: this process's resident memory before it built anything."""
  torch.manual_seed(0)
  model = open_flamingo_model(sizes, directory)
  safetensors.torch.save_file(state_dict(model), directory / CHECKPOINT)
  vocab = sizes["lm"]["vocab_size"]
  inputs = make_inputs(sizes, model.vision_encoder.image_size[0])
  np.savez(directory / "inputs.npz", **inputs)
  side = OpenFlamingoSide(model, vocab)
  np.save(directory / "open_flamingo_logits.npy",
          side.logits(inputs["train_images"], inputs["train_tokens"]))
  spec = dict(threads=FLAGS.threads, runs=FLAGS.runs, shots=list(map(int, FLAGS.shots)),
              new_tokens=FLAGS.new_tokens, beams=FLAGS.beams,
              scaling=list(scaling_points(sizes)), scaling_runs=FLAGS.scaling_runs,
              remat=FLAGS.remat, scan_layers=FLAGS.scan_layers, vocab_size=vocab,
              open_clip=sizes["open_clip"], tolerance=FLAGS.tolerance,
              compilation_cache=FLAGS.compilation_cache)
  (directory / "spec.json").write_text(json.dumps(spec))
  # What OpenFlamingo's side runs on; the scaling batches are flamingo-jax's alone.
  inputs = {k: v for k, v in inputs.items() if not k.startswith("scaling_")}
  ours, our_outputs = run_flamingo_jax(directory)
  # Training first, as on flamingo-jax's side; then the weights it changed are read back.
  theirs, their_outputs = {}, {}
  theirs["train"] = side.train(inputs["train_images"], inputs["train_tokens"], FLAGS.runs)
  theirs["train"]["rss_after_imports"] = rss_after_imports
  _, unexpected = model.load_state_dict(safetensors.torch.load_file(directory / CHECKPOINT),
                                        strict=False)  # Not the aliases state_dict() repeats.
  assert not unexpected, unexpected
  for shots in spec["shots"]:
    theirs[f"shots_{shots}"], out = side.generation(
        inputs[f"prompt_images_{shots}"], inputs[f"prompt_tokens_{shots}"],
        inputs["candidates"], inputs["candidate_lengths"], FLAGS.new_tokens, FLAGS.beams,
        FLAGS.runs)
    their_outputs |= {f"{k}_{shots}": v for k, v in out.items()}
  theirs["parameters"] = sum(p.numel() for p in model.parameters())
  return dict(ours=ours, theirs=theirs, our_outputs=our_outputs, their_outputs=their_outputs,
              prompt_lengths={s: inputs[f"prompt_tokens_{s}"].shape[1] for s in spec["shots"]})


def checks(results: dict, shots) -> dict:
  """How far the two sides' outputs agree. Tokens can part on near-ties of random weights'
  logits, so they are reported, not required."""
  ours, theirs = results["our_outputs"], results["their_outputs"]
  max_diff = lambda key: float(np.abs(ours[key] - theirs[key]).max())
  out = dict(logits_max_abs_diff=results["ours"]["logits_max_abs_diff"],
             first_loss=dict(flamingo_jax=results["ours"]["train"]["first_loss"],
                             open_flamingo=results["theirs"]["train"]["first_loss"]))
  for s in shots:
    out[f"shots_{s}"] = dict(
        greedy_tokens_equal=float(np.mean(ours[f"greedy_{s}"] == theirs[f"greedy_{s}"])),
        beam_sequences_equal=float(np.mean(np.all(ours[f"beam_{s}"] == theirs[f"beam_{s}"],
                                                  axis=-1))),
        beam_scores_max_abs_diff=max_diff(f"beam_scores_{s}"),
        log_likelihoods_max_abs_diff=max_diff(f"score_{s}"))
  return out


def table_rows(results: dict, sizes: dict, shots) -> list[dict]:
  """The side-by-side rows: each metric of both sides and flamingo-jax's advantage (higher is
  better: a rate's ratio ours / theirs, a time's or memory's theirs / ours)."""
  ours, theirs = results["ours"], results["theirs"]
  rows = []

  def add(benchmark, metric, value, get, higher_is_better):
    a, b = get(ours), get(theirs)
    rows.append(dict(benchmark=benchmark, metric=metric, flamingo_jax=value(a),
                     open_flamingo=value(b),
                     ratio=value(a) / value(b) if higher_is_better else value(b) / value(a)))

  batch, length = sizes["batch"], sizes["length"]
  train = f"train step, {batch} x {length} tokens, {sizes['images']} images each"
  step = lambda r: measure.median(r["train"]["seconds"])
  add(train, "examples/s", lambda t: batch / t, step, True)
  add(train, "tokens/s", lambda t: batch * length / t, step, True)
  add(train, "peak memory GiB", lambda b: b / 2 ** 30, lambda r: r["train"]["peak_rss"], False)
  add(train, "peak memory above imports GiB", lambda b: b / 2 ** 30,
      lambda r: r["train"]["peak_rss"] - r["train"]["rss_after_imports"], False)
  n, p = FLAGS.new_tokens, FLAGS.prompts
  for s in shots:
    prompt = f"{s} shots ({p} x {results['prompt_lengths'][s]} tokens, {s + 1} images)"
    for name, label in (("greedy", "greedy"), ("beam", f"beam {FLAGS.beams}")):
      # (seconds for all new tokens, seconds to the first); the rest is decoding proper.
      times = lambda r, key=name: (measure.median(r[f"shots_{s}"][key]),
                                   measure.median(r[f"shots_{s}"][f"{key}_first_token"]))
      benchmark = f"{label}, {prompt}, {n} new"
      add(benchmark, "first token s", lambda t: t[1], times, False)
      add(benchmark, "tokens/s after the first", lambda t: p * (n - 1) / (t[0] - t[1]), times,
          True)
      add(benchmark, "new tokens/s end to end", lambda t: p * n / t[0], times, True)
    add(f"score {len(CANDIDATE_LENGTHS)} candidates, {prompt}", "s", lambda t: t,
        lambda r: measure.median(r[f"shots_{s}"]["score"]), False)
  return rows


def markdown(rows: list[dict], columns: list[tuple[str, str]]) -> str:
  """A markdown table of `rows` ({column key: value}) under `columns` [(key, title)]."""
  cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(title for _, title in columns) + " |",
           "|" + " --- |" * len(columns)]
  lines += ["| " + " | ".join(cell(row[k]) for k, _ in columns) + " |" for row in rows]
  return "\n".join(lines)


def scaling_rows(results: dict, sizes: dict) -> list[dict]:
  """flamingo-jax's training step at each scaling point and at the training batch."""
  ours = results["ours"]
  points = ours["scaling"] + [dict(images=sizes["images"], length=sizes["length"],
                                   **ours["train"])]
  rows = []
  for point in sorted(points, key=lambda q: (q["images"], q["length"])):
    seconds, flops = measure.median(point["seconds"]), point["flops"]["formula"]
    rows.append(dict(
        images=point["images"], length=point["length"], step_s=seconds,
        tokens_per_s=sizes["batch"] * point["length"] / seconds,
        gflop=flops["total"] / 1e9, xattn_gflop=flops["gated_xattn"] / 1e9,
        xla_temp_mib=point["xla_bytes"]["temporaries"] / 2 ** 20,
        peak_gib=point["peak_rss"] / 2 ** 30))
  return rows


def report(results: dict, sizes: dict, shots) -> dict:
  """Prints the tables; returns everything for the JSON file."""
  ours, theirs = results["ours"], results["theirs"]
  with open("/proc/cpuinfo") as f:
    cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
               platform.processor())
  versions = {name: importlib.metadata.version(name) for name in (
      "jax", "flax", "torch", "transformers", "open_clip_torch", "open_flamingo")}
  lm, vision = sizes["lm"], sizes["open_clip"]["vision_cfg"]
  print(f"flamingo-jax vs open-flamingo {versions['open_flamingo']}, float32, "
        f"{FLAGS.threads} threads each, {datetime.date.today()}, {cpu} ({os.cpu_count()} CPUs)")
  print(f"model: OpenCLIP ViT ({vision['layers']} layers, width {vision['width']}, patch "
        f"{vision['patch_size']}, {vision['image_size']} px); LLaMA-style LM ("
        f"{lm['num_hidden_layers']} layers, width {lm['hidden_size']}, "
        f"{lm['num_attention_heads']} heads, MLP {lm['intermediate_size']}, "
        f"{lm['vocab_size']} + 2 tokens); gated blocks every {sizes['every']} layers; "
        f"{ours['parameters'] / 1e6:.1f}M parameters, trained: flamingo-jax "
        f"{ours['train']['trainable_parameters'] / 1e6:.1f}M, OpenFlamingo "
        f"{theirs['train']['trainable_parameters'] / 1e6:.1f}M")
  agreement = checks(results, shots)
  print(f"same model: logits max |difference| {agreement['logits_max_abs_diff']:.2e}; first "
        f"loss {agreement['first_loss']['flamingo_jax']:.6f} vs "
        f"{agreement['first_loss']['open_flamingo']:.6f}")
  for s in shots:
    a = agreement[f"shots_{s}"]
    print(f"  {s} shots: greedy tokens equal {a['greedy_tokens_equal']:.0%}, best beams equal "
          f"{a['beam_sequences_equal']:.0%} (scores max |difference| "
          f"{a['beam_scores_max_abs_diff']:.1e}), log-likelihoods max |difference| "
          f"{a['log_likelihoods_max_abs_diff']:.1e}")
  rows = table_rows(results, sizes, shots)
  print()
  print(markdown(rows, [("benchmark", "benchmark"), ("metric", "metric"),
                        ("flamingo_jax", "flamingo-jax"), ("open_flamingo", "OpenFlamingo"),
                        ("ratio", "ratio")]))
  print("(ratio: flamingo-jax's advantage, a rate's ours / theirs, a time's or memory's "
        f"theirs / ours; medians of {FLAGS.runs} runs after a warm-up run)")
  flops = ours["train"]["flops"]
  formula = flops["formula"]["total"]
  step = {k: measure.median(r["train"]["seconds"]) for k, r in (("ours", ours),
                                                                ("theirs", theirs))}
  print(f"\ntraining step FLOPs: formula {formula:.4g} (" + ", ".join(
      f"{k} {v / formula:.1%}" for k, v in flops["formula"].items() if k != "total")
        + f"); XLA cost analysis {flops['cost_analysis']:.4g} "
        f"({flops['cost_analysis'] / formula:.3f} x formula); the jaxpr's matmuls "
        f"{flops['jaxpr']:.4g} ({flops['jaxpr'] / formula:.3f} x formula). At the formula's "
        f"FLOPs: flamingo-jax {formula / step['ours'] / 1e9:.1f} GFLOP/s, OpenFlamingo "
        f"{formula / step['theirs'] / 1e9:.1f} GFLOP/s.")
  scaling = scaling_rows(results, sizes)
  print(f"\nflamingo-jax's training step, batch {sizes['batch']}, by images per sequence and "
        f"tokens per sequence (medians of {FLAGS.scaling_runs} runs):")
  print(markdown(scaling, [("images", "images / sequence"), ("length", "tokens / sequence"),
                           ("step_s", "step s"), ("tokens_per_s", "tokens/s"),
                           ("gflop", "GFLOP (formula)"), ("xattn_gflop", "of which gated xattn"),
                           ("xla_temp_mib", "XLA temporaries MiB"),
                           ("peak_gib", "peak memory GiB")]))
  return dict(date=str(datetime.date.today()), machine=f"{cpu} ({os.cpu_count()} CPUs)",
              threads=FLAGS.threads, versions=versions, sizes=sizes,
              flags={k: FLAGS[k].value for k in ("smoke", "runs", "shots", "prompts",
                                                  "new_tokens", "beams", "scaling_images",
                                                  "scaling_lengths", "scaling_runs", "remat",
                                                  "scan_layers", "tolerance")},
              checks=agreement, rows=rows, flops=flops, scaling=scaling,
              flamingo_jax=ours, open_flamingo=theirs)


def main(argv):
  del argv
  rss_after_imports = measure.rss()
  if FLAGS.smoke:
    set_smoke_defaults()
  sizes = SMOKE if FLAGS.smoke else DEFAULT
  measure.pin_cpus(FLAGS.threads)
  torch.set_num_threads(FLAGS.threads)
  shots = list(map(int, FLAGS.shots))
  with tempfile.TemporaryDirectory() as temporary:
    directory = pathlib.Path(FLAGS.workdir or temporary)
    directory.mkdir(parents=True, exist_ok=True)
    results = measure_both(sizes, directory, rss_after_imports)
  summary = report(results, sizes, shots)
  agreement = summary["checks"]
  losses = agreement["first_loss"]
  worst = max([abs(losses["flamingo_jax"] - losses["open_flamingo"])]
              + [agreement[f"shots_{s}"]["log_likelihoods_max_abs_diff"] for s in shots])
  pathlib.Path(FLAGS.json).write_text(json.dumps(summary, indent=1))
  print(f"\nwrote {FLAGS.json}")
  if worst > FLAGS.tolerance:
    sys.exit(f"The two sides' losses or log-likelihoods differ by {worst:.2e}, more than "
             f"--tolerance={FLAGS.tolerance}.")


if __name__ == "__main__":
  app.run(main)
