"""flamingo-jax against OpenFlamingo (the `open-flamingo` package), the same model side by side:
training step, cached few-shot generation (greedy and beam search), candidate scoring and
few-shot captioning evaluation, on this machine's CPU with the same threads for both (or,
with --device=cuda, its GPU), in float32 or, with --dtype=bfloat16, each side's mixed
precision: flamingo-jax's `config.precision` (bfloat16 activations, frozen weights stored in
bfloat16) and OpenFlamingo's `amp_bf16` (`torch.autocast` to bfloat16 over float32 weights).
Prints one table and writes it as JSON, with the training step's FLOPs (XLA's cost analysis,
the jaxpr's matmuls and a formula) and how step time and memory grow with images per sequence
and sequence length (flamingo-jax).

  python benchmarks/compare_openflamingo.py                 # the default configuration
  python benchmarks/compare_openflamingo.py --smoke         # a tiny model, in half a minute
  python benchmarks/compare_openflamingo.py --dtype=bfloat16

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
  to the first token (the media encoded, the prompt read, a token chosen) and that of the
  cached steps after it are each timed themselves: on OpenFlamingo inside the decoding call, on
  flamingo-jax as `decode.encode` and `decode.generate.prefill`, then the `*_from_prefill` call
  that continues them (`generate` / `beam_search` run the last two as one program, timed too).
- scoring: OpenFlamingo as its evaluation does (`cache_media`, the prompt read once, each
  candidate run on the prompt's cache); flamingo-jax's `decode.candidate_log_likelihoods` (all
  candidates in one call on copies of the prompt's cache).
- few-shot captioning evaluation: a COCO benchmark's official files written to the work folder
  (Karpathy's dataset_coco.json; `--eval_queries` test images and a pool of `--eval_pool`
  support images, random pictures at the tower's resolution with captions of random words) and
  a word tokenizer of the LM's vocabulary, which both sides read. flamingo-jax runs
  `evaluation.harness.evaluate` (random support, `--beams` beams, `--new_tokens` new tokens,
  batches of `--eval_batch`). OpenFlamingo runs its evaluation loop, `evaluate_captioning` with
  its `EvalModel` (open_flamingo/eval in its repository; the wheel ships its datasets and
  postprocessing, which are used here, but neither the EvalModel nor an evaluate.py that imports
  as a module): per batch, every demonstration's and query's image through the image processor
  and the tower, its prompts (`<image>Output:{caption}<|endofchunk|>` a demonstration), beam
  search as generate() does it (the driver above, with the loop's length penalty 0), its
  postprocessing, then CIDEr (as its COCOEvalCap computes it; the evaluator's other scorers are
  left out, SPICE needing Stanford CoreNLP, which cannot be fetched offline). Each query shows
  the same support examples on both sides, those the harness drew. Each side's whole evaluation
  (reading the files and images, decoding, the metric) is timed once per shot count, after a
  warm-up evaluation of a second benchmark's one query (other images, so that nothing a side
  cached is reused; flamingo-jax fills a short batch, so it compiles a whole batch's programs).

flamingo-jax runs in a process of its own (benchmarks/compare_openflamingo_jax.py), started
from this one after the model is saved, so each side's peak memory is its own; both processes
are pinned to the same `--threads` CPUs (`os.sched_setaffinity`, from which XLA sizes its thread
pools; torch.set_num_threads for torch). Times are medians of `--runs` runs after one warm-up
run (flamingo-jax's compilation), but the captioning evaluation's single run; peak memory is the
process's peak resident set (VmHWM) over the timed training steps, with everything it holds
(weights, optimiser state, runtime, and on flamingo-jax's side TensorFlow and what XLA's
compiler keeps), and that less its resident set after its imports.
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
from open_flamingo.eval import eval_datasets as of_eval_datasets
from open_flamingo.eval import eval_model as of_eval_model
from open_flamingo.src import flamingo as of_flamingo
from open_flamingo.src import flamingo_lm as of_lm
from open_flamingo.src import helpers as of_helpers
from open_flamingo.src import utils as of_utils
from PIL import Image
import safetensors.torch
import tokenizers
import torch
import transformers

import measure

FLAGS = flags.FLAGS
flags.DEFINE_bool("smoke", False, "A tiny model and short runs, for the test: the defaults of "
                  "the flags below not given are SMOKE_FLAGS'.")
flags.DEFINE_enum("device", "cpu", ["cpu", "cuda"], "Where both sides compute: this machine's "
                  "CPU, or its GPU (torch's cuda, JAX's cuda backend; peak device memory too).")
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
flags.DEFINE_integer("eval_queries", 16, "Queries (test images) of the few-shot captioning "
                     "evaluation, at each of --shots (0: no evaluation).")
flags.DEFINE_integer("eval_batch", 8, "Queries per batch of the captioning evaluation (the "
                     "default of OpenFlamingo's evaluate.py and of flamingo-jax's harness).")
flags.DEFINE_integer("eval_pool", 32, "Support images each query's shots are drawn from. A "
                     "real evaluation shows each one many times (5,000 COCO queries at 32 shots "
                     "from OpenFlamingo's 2,048: 78 times), which a few queries approach only "
                     "with a small pool.")
flags.DEFINE_enum("remat", "none", ["none", "full", "dots"], "flamingo-jax's remat policy.")
flags.DEFINE_bool("scan_layers", False, "flamingo-jax's layer scan.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Both sides' precision: "
                  "float32, or bfloat16 mixed precision (module docstring).")
flags.DEFINE_float("tolerance", None, "The most the two sides' logits, first losses and "
                   "log-likelihoods may differ by (absolute; default TOLERANCE's for --dtype).")
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
# Two roundings of bfloat16 computations (8 bits of mantissa) part by far more than float32's:
# on the default model the logits by 0.035 and the log-likelihoods by 0.022 (2026-12-06).
TOLERANCE = {"float32": 1e-3, "bfloat16": 0.1}
SMOKE_FLAGS = dict(runs=3, shots=["2"], new_tokens=8, scaling_images=["1"], scaling_lengths=[],
                   scaling_runs=1, eval_queries=4, eval_batch=2)
# The captioning evaluation's tokenizer: LLaMA's special tokens, the prompt's words, and words
# "w<i>" filling the LM's vocabulary; captions are random words.
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")
PROMPT_WORDS = ("Output", ":")
REFERENCES = 5  # Captions per COCO image.


def tolerance() -> float:
  return TOLERANCE[FLAGS.dtype] if FLAGS.tolerance is None else FLAGS.tolerance


def set_smoke_defaults() -> None:
  for name, value in SMOKE_FLAGS.items():
    if not FLAGS[name].present:
      FLAGS[name].value = value


def open_flamingo_model(sizes: dict, directory: pathlib.Path):
  """(OpenFlamingo with random weights, built as its factory builds one; its tower's image
  processor). The LM's config (before the new tokens) is saved in directory/lm, for the
  import."""
  (directory / "open_clip").mkdir(exist_ok=True)
  (directory / "open_clip" / "open_clip_config.json").write_text(
      json.dumps(dict(model_cfg=sizes["open_clip"])))
  clip, _, image_processor = open_clip.create_model_and_transforms(
      f"local-dir:{directory / 'open_clip'}")
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
  return model.eval(), image_processor


def save_tokenizer(directory: pathlib.Path, vocab: int) -> list[str]:
  """A word-level tokenizer of `vocab` tokens, LLaMA's special tokens among them (a sequence
  opens with `<s>`), saved in `directory` as transformers saves one (tokenizer.json and
  tokenizer_config.json, from which flamingo-jax's `data.tokenizer` reads it too). Returns its
  caption words. Whitespace separates words and is no token, so OpenFlamingo's prompts, which
  put a newline after each demonstration, read as flamingo-jax's, which do not."""
  words = [f"w{i}" for i in range(vocab - len(SPECIAL_TOKENS) - len(PROMPT_WORDS))]
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate((*SPECIAL_TOKENS, *PROMPT_WORDS, *words))}, unk_token="<unk>"))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
      single="<s> $A", special_tokens=[("<s>", SPECIAL_TOKENS.index("<s>"))])
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
      eos_token="</s>").save_pretrained(directory)
  return words


def open_flamingo_tokenizer(directory: pathlib.Path):
  """The tokenizer in `directory` as OpenFlamingo's factory prepares its LM's: `<|endofchunk|>`
  and `<image>` added after its vocabulary (its pad token is its own)."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  tokenizer.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>", "<image>"]})
  return tokenizer


def write_coco(directory: pathlib.Path, queries: int, pool: int, image_size: int,
               words: list[str], caption: int, seed: int) -> None:
  """A COCO captioning benchmark's official files as flamingo-jax's `read_coco` and
  OpenFlamingo's `CaptionDataset` read them: Karpathy's dataset_coco.json with `queries` test
  images and `pool` train images (the support), each with REFERENCES captions of `caption`
  random words, and the images: smooth random colours at the tower's resolution, as PNG, so
  that both sides decode the same pixels. Equally long captions make a shot count's prompts
  equally long, so OpenFlamingo's batches hold no padding."""
  rng, words = np.random.default_rng(seed), np.asarray(words)
  images = []
  for split, folder, count in (("test", "val2014", queries), ("train", "train2014", pool)):
    (directory / folder).mkdir(parents=True, exist_ok=True)
    for _ in range(count):
      cocoid = len(images)
      name = f"COCO_{folder}_{cocoid:012d}.png"
      Image.fromarray(rng.integers(0, 256, (4, 4, 3), np.uint8)).resize(
          (image_size, image_size), Image.Resampling.BICUBIC).save(directory / folder / name)
      images.append(dict(split=split, filepath=folder, filename=name, cocoid=cocoid,
                         sentences=[dict(raw=" ".join(rng.choice(words, caption)))
                                    for _ in range(REFERENCES)]))
  (directory / "dataset_coco.json").write_text(json.dumps(dict(images=images)))


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

  def __init__(self, model: of_flamingo.Flamingo, vocab: int, dtype: str, device: str):
    self.model, self.lm = model.to(device), model.lang_encoder
    self.eoc, self.media = vocab, vocab + 1
    self.dtype, self.device = dtype, device

  def autocast(self):
    """Where OpenFlamingo's `amp_bf16` runs its forward passes (train_utils.get_autocast):
    bfloat16 matmuls over the float32 weights."""
    return torch.autocast(self.device, torch.bfloat16, enabled=self.dtype == "bfloat16")

  def sync(self) -> None:
    """Waits for the GPU's queued work, before a clock is read."""
    if self.device == "cuda":
      torch.cuda.synchronize()

  def vision_x(self, images: np.ndarray) -> torch.Tensor:
    """[B, M, H, W, 3] -> OpenFlamingo's [B, M, 1, 3, H, W], on the device."""
    return torch.from_numpy(images).permute(0, 1, 4, 2, 3)[:, :, None].contiguous().to(
        self.device)

  def ids(self, tokens: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(tokens).to(self.device)

  @torch.no_grad()
  def logits(self, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    with self.autocast():
      logits = self.model(self.vision_x(images), self.ids(tokens)).logits
    return logits.float().cpu().numpy()

  def train(self, images: np.ndarray, tokens: np.ndarray, runs: int) -> dict:
    """OpenFlamingo's train loop (open_flamingo/train/train_utils.py) on one batch: seconds of
    `runs` steps after a warm-up step, the first step's loss and the peak resident memory (and
    on a GPU the device's)."""
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
    vision_x, lang_x = self.vision_x(images), self.ids(tokens)
    labels = lang_x.masked_fill(lang_x == self.media, -100)
    keep = torch.zeros(embeddings.weight.shape[0], 1, device=self.device)
    keep[[self.media, self.eoc]] = 1.0

    def step():
      with self.autocast():
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
    if self.device == "cuda":
      torch.cuda.reset_peak_memory_stats()
    times, _ = measure.seconds(step, runs, warmup=0)
    model.eval()
    device_peak = torch.cuda.max_memory_allocated() if self.device == "cuda" else None
    return dict(seconds=times, first_loss=first_loss, peak_rss=measure.peak_rss(),
                device_peak=device_peak, trainable_parameters=sum(p.numel() for _, p in named))

  def start(self, vision_x: torch.Tensor, prompt: torch.Tensor, repeats: int = 1):
    """As open-flamingo's generate(): the media [B, M, 1, 3, H, W] encoded once for the call,
    then the prompts [B, L] read into the LM's cache. Returns the logits of their last position
    [B * repeats, V + 2] and the cache."""
    with self.autocast():
      # pylint: disable=protected-access
      self.lm._use_cached_vision_x = True
      self.model._encode_vision_x(vision_x.repeat_interleave(repeats, 0))
      # pylint: enable=protected-access
      out = self.lm(input_ids=prompt.repeat_interleave(repeats, 0), attention_mask=None,
                    use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.past_key_values

  def extend(self, tokens: torch.Tensor, cache):
    """tokens [B] -> the logits after them [B, V + 2] (the cache grows in place)."""
    with self.autocast():
      out = self.lm(input_ids=tokens[:, None], attention_mask=None, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
    return out.logits[:, -1]

  def finish(self):
    self.lm.clear_conditioned_layers()
    self.lm._use_cached_vision_x = False  # pylint: disable=protected-access

  @torch.no_grad()
  def greedy(self, vision_x: torch.Tensor, prompt: torch.Tensor, new_tokens: int):
    """(tokens [B, new_tokens], seconds to the first one, seconds of the cached steps after
    it); after `<|endofchunk|>` a sequence repeats it."""
    start = time.perf_counter()
    logits, cache = self.start(vision_x, prompt)
    token = logits.argmax(-1)
    self.sync()
    first = time.perf_counter() - start
    tokens, done = [token], torch.zeros_like(token, dtype=torch.bool)
    for _ in range(new_tokens - 1):
      logits = self.extend(token, cache)
      done |= token == self.eoc
      token = torch.where(done, self.eoc, logits.argmax(-1))
      tokens.append(token)
    self.sync()
    steps = time.perf_counter() - start - first
    self.finish()
    return torch.stack(tokens, 1).cpu().numpy(), first, steps

  @torch.no_grad()
  def beam(self, vision_x: torch.Tensor, prompt: torch.Tensor, new_tokens: int, k: int,
           length_penalty: float = 1.0):
    """Beam search as flamingo_jax.decode.beam_search computes it (K live and K finished
    hypotheses, 2K candidates a step, scores divided by length ** length_penalty):
    (sequences [B, K, new_tokens], scores [B, K], seconds to the first token, seconds of the
    cached steps after it)."""
    start = time.perf_counter()
    logits, cache = self.start(vision_x, prompt, repeats=k)
    batch, vocab = prompt.shape[0], logits.shape[-1]
    live_seqs = torch.full((batch, k, new_tokens), self.eoc, device=self.device)
    live_scores = torch.full((batch, k), -torch.inf, device=self.device)
    live_scores[:, 0] = 0.0  # Only beam 0 at first, so that K beams differ.
    done_seqs = live_seqs.clone()
    done_scores = torch.full((batch, k), -torch.inf, device=self.device)

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
          torch.cat([done_scores, torch.where(stopped, scores / (t + 1) ** length_penalty,
                                              -torch.inf)], 1),
          torch.cat([done_seqs, seqs], 1))
      live_scores, live_seqs, origin, token = best(torch.where(stopped, -torch.inf, scores),
                                                   seqs, origin, token)
      if t == 0:
        self.sync()
        first = time.perf_counter() - start
      if t < new_tokens - 1:
        cache.reorder_cache((torch.arange(batch, device=self.device)[:, None] * k
                             + origin).view(-1))
        logits = self.extend(token.reshape(-1), cache)
    self.sync()
    steps = time.perf_counter() - start - first
    self.finish()
    scores, seqs = best(
        torch.cat([done_scores, live_scores / new_tokens ** length_penalty], 1),
        torch.cat([done_seqs, live_seqs], 1))
    return seqs.cpu().numpy(), scores.cpu().numpy(), first, steps

  @torch.no_grad()
  def score(self, images: np.ndarray, prompt: np.ndarray, candidates: np.ndarray,
            lengths: np.ndarray) -> np.ndarray:
    """log p(candidate | prompt) [B, C] as OpenFlamingo's evaluation ranks classes: the media
    cached, the prompt read once, each candidate run on the prompt's cache."""
    model, prompt = self.model, self.ids(prompt)
    with self.autocast():
      model.cache_media(input_ids=prompt, vision_x=self.vision_x(images))
      out = model(vision_x=None, lang_x=prompt, clear_conditioned_layers=False, use_cache=True)
    cache, last = out.past_key_values, out.logits[:, -1:]
    result = []
    for candidate, length in zip(candidates, lengths):
      ids = self.ids(candidate[:length])[None].expand(prompt.shape[0], -1)
      with self.autocast():
        logits = model(vision_x=None, lang_x=ids, clear_conditioned_layers=False,
                       past_key_values=cache, use_cache=True).logits
      logits = torch.cat([last, logits[:, :-1]], 1)
      result.append(torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None]).sum((1, 2)))
      # Back to the prompt's cache (OpenFlamingo's evaluation passed the immutable tuples of
      # transformers 4; transformers 5's cache grows in place).
      cache.crop(-int(length))
    model.uncache_media()
    return torch.stack(result, 1).cpu().numpy()

  def generation(self, images, prompt, candidates, lengths, new_tokens: int, beams: int,
                 runs: int) -> tuple[dict, dict]:
    """(seconds of greedy and beam decoding, of their first tokens and of the cached steps
    after it (both timed inside the same calls), and of scoring; the outputs)."""
    seconds, outputs, parts = {}, {}, {"greedy": [], "beam": []}
    vision_x, prompt_ids = self.vision_x(images), self.ids(prompt)

    def timed(name, call):
      *out, first, steps = call()
      parts[name].append((first, steps))
      return out

    seconds["greedy"], (outputs["greedy"],) = measure.seconds(
        lambda: timed("greedy", lambda: self.greedy(vision_x, prompt_ids, new_tokens)), runs)
    seconds["beam"], (outputs["beam"], outputs["beam_scores"]) = measure.seconds(
        lambda: timed("beam", lambda: self.beam(vision_x, prompt_ids, new_tokens, beams)),
        runs)
    for name, times in parts.items():
      first, steps = zip(*times[-runs:])  # Not the warm-up's.
      seconds[f"{name}_first_token"], seconds[f"{name}_steps"] = list(first), list(steps)
    seconds["score"], outputs["score"] = measure.seconds(
        lambda: self.score(images, prompt, candidates, lengths), runs)
    return seconds, outputs


class EvalModel(of_eval_model.BaseEvalModel):
  """OpenFlamingo's EvalModel (open_flamingo/eval/models/open_flamingo.py, which the wheel does
  not ship) on the benchmark's model: its prompts, image and text preparation and outputs, the
  generation driven as generate() does (`OpenFlamingoSide.beam`)."""

  def __init__(self, side: OpenFlamingoSide, image_processor, tokenizer):
    self.side, self.image_processor, self.tokenizer = side, image_processor, tokenizer
    self.tokenizer.padding_side = "left"

  def _prepare_images(self, batch) -> torch.Tensor:
    """Lists of PIL images (as many for every query) -> [B, M, 1, 3, H, W]."""
    return torch.stack([torch.stack([self.image_processor(image) for image in images])
                        for images in batch])[:, :, None]

  def get_outputs(self, batch_text: list[str], batch_images, max_generation_length: int,
                  num_beams: int, length_penalty: float) -> list[str]:
    """The best beam's text after each prompt."""
    vision_x = self._prepare_images(batch_images)
    text = self.tokenizer(batch_text, padding="longest", return_tensors="pt")
    # The driver passes no attention mask, as generate() would pass one of ones here.
    assert text["attention_mask"].all(), "prompts of different lengths in one batch"
    with torch.inference_mode():
      sequences, *_ = self.side.beam(vision_x.to(self.side.device),
                                     text["input_ids"].to(self.side.device),
                                     max_generation_length, num_beams, length_penalty)
    return self.tokenizer.batch_decode(sequences[:, 0], skip_special_tokens=True)

  def get_caption_prompt(self, caption=None) -> str:
    return (f"<image>Output:{caption if caption is not None else ''}"
            f"{'<|endofchunk|>' if caption is not None else ''}")


def cider(captions: dict[str, str], references: dict[str, list[str]]) -> float:
  """CIDEr as OpenFlamingo's `compute_cider` takes it from pycocoevalcap's COCOEvalCap: the
  references and the captions PTB-tokenised, then CIDEr-D."""
  # pycocoevalcap (and its Java) only where captions are scored: GPU machines lack them.
  # pylint: disable=g-import-not-at-top
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
  # pylint: enable=g-import-not-at-top
  tokenizer = PTBTokenizer()
  gts = tokenizer.tokenize({k: [{"caption": c} for c in refs] for k, refs in references.items()})
  res = tokenizer.tokenize({k: [{"caption": c}] for k, c in captions.items()})
  return float(Cider().compute_score(gts, res)[0])


def evaluate_captioning(eval_model: EvalModel, data_dir: pathlib.Path, support: np.ndarray,
                        batch_size: int, new_tokens: int, beams: int) -> dict:
  """OpenFlamingo's `evaluate_captioning` (open_flamingo/eval/evaluate.py) on the COCO files in
  data_dir, every test image in file order, query i shown the train images support[i]:
  {"metrics": {"CIDEr"}, "predictions": {image id: caption}}."""
  # It imports pycocoevalcap: here alone, as in `cider`.
  # pylint: disable=g-import-not-at-top
  from open_flamingo.eval import coco_metric as of_coco_metric
  # pylint: enable=g-import-not-at-top
  dataset = lambda is_train: of_eval_datasets.CaptionDataset(
      image_train_dir_path=data_dir / "train2014", image_val_dir_path=data_dir / "val2014",
      annotations_path=data_dir / "dataset_coco.json", is_train=is_train, dataset_name="coco")
  train, test = dataset(True), dataset(False)
  query_set = [train[i] for i in range(len(train))]  # Its get_query_set: the pool, loaded.
  predictions = {}
  for start in range(0, len(test), batch_size):
    batch = [test[i] for i in range(start, min(start + batch_size, len(test)))]
    demos = [[query_set[j] for j in support[start + i]] for i in range(len(batch))]
    outputs = eval_model.get_outputs(
        batch_text=["".join(eval_model.get_caption_prompt(caption=d["caption"].strip()) + "\n"
                            for d in shown) + eval_model.get_caption_prompt()
                    for shown in demos],
        batch_images=[[d["image"] for d in shown] + [query["image"]]
                      for query, shown in zip(batch, demos)],
        max_generation_length=new_tokens, num_beams=beams, length_penalty=0.0)
    for query, output in zip(batch, outputs):
      predictions[str(query["image_id"])] = (
          of_coco_metric.postprocess_captioning_generation(output).replace('"', ""))
  references = {str(image["cocoid"]): [s["raw"] for s in image["sentences"]]
                for image in test.annotations}
  return dict(metrics=dict(CIDEr=cider(predictions, references)), predictions=predictions)


def time_captioning(eval_model: EvalModel, spec: dict, support: np.ndarray) -> dict:
  """`evaluate_captioning` of the work folder's COCO files, timed as flamingo-jax's evaluation
  is (once, after a warm-up evaluation of the warm-up benchmark's one query): its seconds,
  metrics and predictions."""
  evaluation = spec["eval"]
  run = lambda data, rows: evaluate_captioning(eval_model, pathlib.Path(data), rows,
                                               evaluation["batch"], spec["new_tokens"],
                                               spec["beams"])
  run(evaluation["warmup"], support[:1])
  seconds, result = measure.seconds(lambda: run(evaluation["data"], support), 1, warmup=0)
  return dict(seconds=seconds, **result)


def evaluated_shots(shots: list[int]) -> list[int]:
  """The shot counts of the captioning evaluation: all, or none without --eval_queries."""
  return shots if FLAGS.eval_queries else []


def run_flamingo_jax(directory: pathlib.Path) -> tuple[dict, dict]:
  """Runs benchmarks/compare_openflamingo_jax.py on `directory` on --device: (its results, its
  outputs)."""
  subprocess.run([sys.executable, str(HERE / "compare_openflamingo_jax.py"), str(directory)],
                 check=True, env=dict(os.environ, JAX_PLATFORMS=FLAGS.device))
  return (json.loads((directory / "jax.json").read_text()),
          dict(np.load(directory / "jax_outputs.npz")))


def measure_both(sizes: dict, directory: pathlib.Path, rss_after_imports: int) -> dict:
  """Builds and saves the model, runs flamingo-jax's side (which first checks its logits
  against OpenFlamingo's), then OpenFlamingo's; returns both sides' results and outputs.
  rss_after_imports: this process's resident memory before it built anything."""
  torch.manual_seed(0)
  model, image_processor = open_flamingo_model(sizes, directory)
  safetensors.torch.save_file(state_dict(model), directory / CHECKPOINT)
  vocab, image_size = sizes["lm"]["vocab_size"], model.vision_encoder.image_size[0]
  inputs = make_inputs(sizes, image_size)
  # The captioning evaluation's benchmark, and one query of another to warm up on.
  words = save_tokenizer(directory / "tokenizer", vocab)
  evaluation = dict(queries=FLAGS.eval_queries, batch=FLAGS.eval_batch,
                    shots=evaluated_shots(list(map(int, FLAGS.shots))),
                    data=str(directory / "coco"), warmup=str(directory / "coco_warmup"),
                    tokenizer=str(directory / "tokenizer" / "tokenizer.json"))
  for name, queries, seed in (("data", FLAGS.eval_queries, 0), ("warmup", 1, 1)):
    if FLAGS.eval_queries:
      write_coco(pathlib.Path(evaluation[name]), queries, FLAGS.eval_pool, image_size, words,
                 sizes["caption"], seed)
  np.savez(directory / "inputs.npz", **inputs)
  side = OpenFlamingoSide(model, vocab, FLAGS.dtype, FLAGS.device)
  np.save(directory / "open_flamingo_logits.npy",
          side.logits(inputs["train_images"], inputs["train_tokens"]))
  spec = dict(threads=FLAGS.threads, runs=FLAGS.runs, shots=list(map(int, FLAGS.shots)),
              new_tokens=FLAGS.new_tokens, beams=FLAGS.beams,
              scaling=list(scaling_points(sizes)), scaling_runs=FLAGS.scaling_runs,
              remat=FLAGS.remat, scan_layers=FLAGS.scan_layers, vocab_size=vocab,
              open_clip=sizes["open_clip"], tolerance=tolerance(), dtype=FLAGS.dtype,
              compilation_cache=FLAGS.compilation_cache, eval=evaluation)
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
  eval_model = EvalModel(side, image_processor, open_flamingo_tokenizer(directory / "tokenizer"))
  for shots in spec["eval"]["shots"]:  # The support each query got on flamingo-jax's side.
    theirs[f"eval_{shots}"] = time_captioning(eval_model, spec,
                                              np.asarray(ours[f"eval_{shots}"]["support"]))
  theirs["parameters"] = sum(p.numel() for p in model.parameters())
  return dict(ours=ours, theirs=theirs, our_outputs=our_outputs, their_outputs=their_outputs,
              prompt_lengths={s: inputs[f"prompt_tokens_{s}"].shape[1] for s in spec["shots"]})


def checks(results: dict, shots) -> dict:
  """How far the two sides' outputs agree. Tokens (and so captions) can part on near-ties of
  random weights' logits, so they are reported, not required."""
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
  for s in evaluated_shots(shots):
    a, b = (r[f"eval_{s}"] for r in (results["ours"], results["theirs"]))
    # Stripped: OpenFlamingo's postprocessing leaves the spaces before an "Output" it cuts at.
    out[f"eval_{s}"] = dict(
        captions_equal=float(np.mean([a["predictions"][k] == b["predictions"][k].strip()
                                      for k in a["predictions"]])),
        cider=dict(flamingo_jax=a["metrics"]["CIDEr"], open_flamingo=b["metrics"]["CIDEr"]))
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
  if FLAGS.device == "cuda":
    add(train, "peak device memory GiB", lambda b: b / 2 ** 30,
        lambda r: r["train"]["device_peak"], False)
  n, p = FLAGS.new_tokens, FLAGS.prompts
  for s in shots:
    prompt = f"{s} shots ({p} x {results['prompt_lengths'][s]} tokens, {s + 1} images)"
    for name, label in (("greedy", "greedy"), ("beam", f"beam {FLAGS.beams}")):
      # Seconds of all new tokens, of the first, and of the cached steps after it.
      times = lambda r, key=name: {part: measure.median(r[f"shots_{s}"][key + suffix])
                                   for part, suffix in (("all", ""), ("first", "_first_token"),
                                                        ("steps", "_steps"))}
      benchmark = f"{label}, {prompt}, {n} new"
      add(benchmark, "first token s", lambda t: t["first"], times, False)
      add(benchmark, "tokens/s after the first", lambda t: p * (n - 1) / t["steps"], times,
          True)
      add(benchmark, "new tokens/s end to end", lambda t: p * n / t["all"], times, True)
    add(f"score {len(CANDIDATE_LENGTHS)} candidates, {prompt}", "s", lambda t: t,
        lambda r: measure.median(r[f"shots_{s}"]["score"]), False)
  q = FLAGS.eval_queries
  for s in evaluated_shots(shots):
    add(f"few-shot captioning eval, {s} shots ({q} queries in batches of {FLAGS.eval_batch}, "
        f"beam {FLAGS.beams}, {n} new)", "queries/s", lambda t: q / t,
        lambda r: measure.median(r[f"eval_{s}"]["seconds"]), True)
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
  print(f"flamingo-jax vs open-flamingo {versions['open_flamingo']}, {FLAGS.dtype}, "
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
  for s in evaluated_shots(shots):
    e = agreement[f"eval_{s}"]
    print(f"  {s}-shot captioning eval: captions equal {e['captions_equal']:.0%}, CIDEr "
          f"{e['cider']['flamingo_jax']:.4f} vs {e['cider']['open_flamingo']:.4f}")
  rows = table_rows(results, sizes, shots)
  print()
  print(markdown(rows, [("benchmark", "benchmark"), ("metric", "metric"),
                        ("flamingo_jax", "flamingo-jax"), ("open_flamingo", "OpenFlamingo"),
                        ("ratio", "ratio")]))
  print("(ratio: flamingo-jax's advantage, a rate's ours / theirs, a time's or memory's "
        f"theirs / ours; medians of {FLAGS.runs} runs after a warm-up run, the captioning "
        "evaluation's one run)")
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
              flags={k: FLAGS[k].value for k in ("smoke", "dtype", "runs", "shots", "prompts",
                                                  "new_tokens", "beams", "scaling_images",
                                                  "scaling_lengths", "scaling_runs", "remat",
                                                  "scan_layers", "tolerance", "eval_queries",
                                                  "eval_batch", "eval_pool")},
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
  if FLAGS.eval_pool < max(evaluated_shots(shots), default=0):
    sys.exit(f"--eval_pool={FLAGS.eval_pool} support images cannot give {max(shots)} shots.")
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
  if worst > tolerance():
    sys.exit(f"The two sides' losses or log-likelihoods differ by {worst:.2e}, more than "
             f"the tolerance {tolerance()}.")


if __name__ == "__main__":
  app.run(main)
