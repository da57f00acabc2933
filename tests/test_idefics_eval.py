"""IDEFICS's evaluation (`style="idefics"`): prompts as transformers' IdeficsProcessor builds
them from m4's templates, beam search that bans token sequences as transformers'
`bad_words_ids`, and the harness's answers equal to transformers' generate on an IDEFICS
imported through the CLI, read as m4 reads them."""

import json
import re

import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest
import tokenizers

import flamingo_jax
from flamingo_jax.data import tokenizer as tokenizer_lib
from flamingo_jax.decode import beam_search, encode
from flamingo_jax.evaluation import harness, idefics_prompts
from flamingo_jax.evaluation.benchmarks import BENCHMARKS

from test_import_idefics import EOS, TOKENS, convert_idefics, inputs, reference_model
from test_import_vision import convert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

FAKE, IMAGE = "<fake_token_around_image>", "<image>"
SIZE = 32
CORPUS = ["Image: Caption: a red square on a blue circle", "Instruction: provide an answer to "
          "the question. Use the image to answer.", "Question: what colour is the square? "
          "Answer: red blue green yes no two three", "Description User task What Who How"]
QUESTIONS = ["what colour is the square?", "how many circles?", "is it red?", "what is it?"]
ANSWERS = ["red", "two", "yes", "a square"]


def idefics_tokenizer(directory):
  """A SentencePiece-style BPE tokenizer (LLaMA's pre-tokenisation, a BOS opening each
  sequence) with IDEFICS's two added tokens, saved as a checkpoint keeps it."""
  bpe = tokenizers.SentencePieceBPETokenizer()
  bpe.train_from_iterator(CORPUS * 4, vocab_size=160, min_frequency=1,
                          special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
  bpe.post_processor = tokenizers.processors.TemplateProcessing(
      single="<s> $A", special_tokens=[("<s>", bpe.token_to_id("<s>"))])
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>",
                                              eos_token="</s>", unk_token="<unk>",
                                              pad_token="<unk>")
  vocab = len(fast)
  fast.add_special_tokens({"additional_special_tokens": [FAKE, IMAGE]})
  assert fast.convert_tokens_to_ids([FAKE, IMAGE]) == [vocab, vocab + 1]
  fast.save_pretrained(directory)
  return fast, vocab


def processor(fast):
  image_processor = transformers.IdeficsImageProcessor(image_size=SIZE)
  return transformers.IdeficsProcessor(image_processor, fast, image_size=SIZE)


def reference_prompt(kind: str, support, query: str, images):
  """The IdeficsProcessor's input for m4's template: texts and images in turn."""
  instruction = idefics_prompts.TEMPLATES[kind].instruction
  label = "Caption:" if kind == "caption" else "Question: {} Answer:"
  texts = [label.format(q) + f" {a}\n" for q, a in support] + [label.format(query)]
  prompt = [instruction + "Image:"]
  for image, text in zip(images, texts):
    prompt += [image, text + ("Image:" if text.endswith("\n") else "")]
  return prompt


def test_prompts_are_the_processors_on_m4s_templates(tmp_path):
  fast, _ = idefics_tokenizer(tmp_path)
  vocabulary = tokenizer_lib.TokenizersVocabulary.from_file(tmp_path / "tokenizer.json")
  images = [Image.new("RGB", (SIZE, SIZE), c) for c in ("red", "blue", "green")]
  support = list(zip(QUESTIONS[:2], ANSWERS[:2]))
  vqa = idefics_prompts.TEMPLATES["vqa"]
  assert vqa.text(support, QUESTIONS[2]) == (
      "Instruction: provide an answer to the question. Use the image to answer.\n"
      f"Image:{FAKE}{IMAGE}{FAKE}Question: {QUESTIONS[0]} Answer: {ANSWERS[0]}\n"
      f"Image:{FAKE}{IMAGE}{FAKE}Question: {QUESTIONS[1]} Answer: {ANSWERS[1]}\n"
      f"Image:{FAKE}{IMAGE}{FAKE}Question: {QUESTIONS[2]} Answer:")
  for kind, shots in [("vqa", 2), ("caption", 2), ("caption", 0), ("vqa", 0)]:
    ours = idefics_prompts.prompt_tokens(idefics_prompts.TEMPLATES[kind], support[:shots],
                                         QUESTIONS[2], vocabulary)
    theirs = processor(fast)(text=reference_prompt(kind, support[:shots], QUESTIONS[2],
                                                   images[:shots + 1]), return_tensors="pt")
    np.testing.assert_array_equal(ours, theirs["input_ids"][0].numpy())
  idefics_prompts.check_vocabulary(vocabulary, len(fast) - 1)
  with pytest.raises(ValueError, match="media token"):
    idefics_prompts.check_vocabulary(vocabulary, len(fast))
  config = ml_collections.ConfigDict({"model": {"media_token_id": len(fast) - 1}})
  with pytest.raises(ValueError, match="prompts for"):
    harness.idefics_template(BENCHMARKS["hateful_memes"], vocabulary, config)


def test_answers_end_at_m4s_stop_words():
  assert idefics_prompts.TEMPLATES["caption"].answer(" a red square Image: a") == (
      "a red square")
  assert idefics_prompts.TEMPLATES["vqa"].answer(" yes What is it") == "yes"
  assert idefics_prompts.TEMPLATES["vqa"].answer(" two Question") == "two"


@pytest.mark.slow
def test_beam_search_bans_as_transformers_bad_words(tmp_path):
  """Beam search with a single-token and a two-token banned sequence, each one the search
  would otherwise write, gives transformers' generate(num_beams=3, bad_words_ids=...)."""
  reference, fast, (model, params, _), _ = convert_idefics(tmp_path, "float", True)
  pixels, image_mask = inputs(fast, seed=1)
  prompt = TOKENS[:1, :13]
  visual = encode(model, params, jnp.asarray(pixels[:1].transpose(0, 1, 3, 4, 2)[:, :, None]))

  def ours(banned):
    return np.asarray(beam_search(model, params, visual, jnp.asarray(prompt), 6, beam_size=3,
                                  length_penalty=1.0, stop_token=EOS, banned=banned)[0][0, 0])

  free = ours(())
  banned = ((int(prompt[0, -1]), int(free[0])), (int(free[2]),))
  with torch.no_grad():
    theirs = reference.generate(
        input_ids=torch.from_numpy(prompt).long(), pixel_values=torch.from_numpy(pixels[:1]),
        image_attention_mask=image_mask[:1, :13], max_new_tokens=6, num_beams=3,
        length_penalty=1.0, early_stopping=True, do_sample=False, eos_token_id=EOS,
        pad_token_id=0, bad_words_ids=[list(b) for b in banned]).numpy()[0, 13:]
  constrained = ours(banned)
  assert constrained[0] != free[0] and free[2] not in constrained
  np.testing.assert_array_equal(constrained[:len(theirs)], theirs)


def synthetic_vqa(directory, images) -> None:
  """A synthetic_vqa benchmark folder: 4 support and 2 test questions on the images."""
  directory.mkdir()
  for i, image in enumerate(images):
    image.save(directory / f"{i}.png")
  records = [{"id": f"q{i}", "images": [f"{i}.png"], "question": QUESTIONS[i % 4],
              "answers": [ANSWERS[i % 4]]} for i in range(len(images))]
  (directory / "support.json").write_text(json.dumps(records[:4]))
  (directory / "test.json").write_text(json.dumps(records[4:]))


@pytest.mark.slow
def test_harness_answers_as_idefics_generates(tmp_path):
  """An IDEFICS converted through the CLI, evaluated with style="idefics" at 2 shots: each
  answer is transformers' generate on the processor's prompt (3 beams, 15 new tokens, m4's
  banned words), cut at m4's stop words."""
  fast, vocab = idefics_tokenizer(tmp_path / "hf")
  eos = fast.convert_tokens_to_ids("</s>")
  reference = reference_model("vector", True, vocab_size=vocab, eos=eos, seed=3)
  reference.save_pretrained(tmp_path / "hf")
  convert("--from=idefics", f"--path={tmp_path / 'hf'}", f"--out={tmp_path / 'out'}")
  model, params, config = flamingo_jax.load(tmp_path / "out")
  vocabulary = tokenizer_lib.checkpoint_vocabulary(tmp_path / "out", "")
  rng = np.random.default_rng(0)
  images = [Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8)) for _ in range(6)]
  synthetic_vqa(tmp_path / "data", images)
  settings = harness.Settings.for_style("idefics", batch_size=2)
  run = harness.Evaluation(model, params, config, vocabulary, "synthetic_vqa",
                           str(tmp_path / "data"), settings).run(2, seed=0)
  bad_words = fast(list(idefics_prompts.BANNED_WORDS), add_special_tokens=False).input_ids
  for q in (4, 5):
    shown = [int(i[1:]) for i in run["support"][f"q{q}"]]
    prompt = reference_prompt("vqa", [(QUESTIONS[i % 4], ANSWERS[i % 4]) for i in shown],
                              QUESTIONS[q % 4], [images[i] for i in shown + [q]])
    batch = processor(fast)(text=prompt, return_tensors="pt")
    with torch.no_grad():
      generated = reference.generate(
          **batch, max_new_tokens=15, num_beams=3, length_penalty=1.0, early_stopping=True,
          do_sample=False, bad_words_ids=bad_words, eos_token_id=eos, pad_token_id=0)
    text = fast.decode(generated[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    expected = re.split("|".join(idefics_prompts.TEMPLATES["vqa"].stop_words), text)[0].strip()
    assert run["predictions"][f"q{q}"] == expected
