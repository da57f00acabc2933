"""The embedded demo's held-out benchmarks: files the harness reads, prompts that read as the
training text does, and episodic support for novel-word binding."""

import collections

import numpy as np
from PIL import Image
import pytest
import seqio

from flamingo_jax.data import preprocess, synthetic
from flamingo_jax.evaluation import binding, harness, prompts
from flamingo_jax.evaluation import synthetic as synthetic_benchmarks
from flamingo_jax.evaluation.benchmarks import BENCHMARKS
from flamingo_jax.evaluation.datasets import Example


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  return synthetic_benchmarks.write_benchmarks(str(tmp_path_factory.mktemp("synthetic")),
                                               image_size=32, num_queries=6, num_support=5,
                                               max_shots=8)


def test_binding_episodes_show_every_word_equally_in_every_even_prefix(written):
  benchmark = BENCHMARKS["synthetic_binding"]
  queries = benchmark.read(written["synthetic_binding"], benchmark.eval_split)
  assert len(queries) == 6 and benchmark.support_split is None
  for query in queries:
    words = [s.answers[0] for s in query.support]
    assert len(words) == 8 and query.answers[0] in words and len(set(words)) == 2
    for k in (2, 4, 6, 8):
      assert sorted(collections.Counter(words[:k]).values()) == [k // 2, k // 2]


def test_a_zero_shot_only_binding_benchmark_still_has_its_words(tmp_path):
  """The answer is one of the episode's words, which its support examples bind, shown or not."""
  data_dir = synthetic_benchmarks.write_benchmarks(
      str(tmp_path), image_size=32, num_queries=2, num_support=2, max_shots=0)["synthetic_binding"]
  benchmark = BENCHMARKS["synthetic_binding"]
  for query in benchmark.read(data_dir, benchmark.eval_split):
    assert query.answers[0] in [s.answers[0] for s in query.support]


def test_named_binding_episodes_answer_with_the_colour_and_the_word(tmp_path):
  data_dir = synthetic_benchmarks.write_benchmarks(
      str(tmp_path), image_size=32, num_queries=2, num_support=2, max_shots=4,
      name_colours=True)["synthetic_binding"]
  benchmark = BENCHMARKS["synthetic_binding"]
  for i, query in enumerate(benchmark.read(data_dir, benchmark.eval_split)):
    document = synthetic.binding_example(0, "test", i, 32, ways=2, shots=2, name_colours=True)
    assert query.answers == (document["answer"],) and len(document["answer"].split()) == 2
    assert sorted({s.answers[0] for s in query.support}) == sorted(document["candidates"])


def test_binding_episodes_hold_the_pixels_of_their_document(written):
  """Support i of episode 0 is an image of binding document 0 under its own word."""
  queries = BENCHMARKS["synthetic_binding"].read(written["synthetic_binding"], "test")
  document = synthetic.binding_example(0, "test", 0, 32, ways=2, shots=4)
  read = lambda path: np.asarray(Image.open(path))
  pixels = [read(s.image_paths[0]) for s in queries[0].support]
  words = [t.removeprefix("This is a ").removesuffix(".") for t in document["texts"][:-1]]
  for image, word in zip(document["images"][:-1], words):
    assert any(np.array_equal(image, p) and s.answers[0] == word
               for p, s in zip(pixels, queries[0].support))
  np.testing.assert_array_equal(read(queries[0].image_paths[0]), document["images"][-1])
  assert queries[0].answers == (document["answer"],)


def test_caption_and_vqa_queries_are_held_out_from_their_support(written):
  for name in ("synthetic_caption", "synthetic_vqa"):
    benchmark = BENCHMARKS[name]
    queries = benchmark.read(written[name], benchmark.eval_split)
    support = benchmark.read(written[name], benchmark.support_split)
    assert (len(queries), len(support)) == (6, 5)
    assert all(q.id.startswith("test-") for q in queries)
    assert all(s.id.startswith("validation-") for s in support)
  vqa = BENCHMARKS["synthetic_vqa"].read(written["synthetic_vqa"], "test")[0]
  expected = synthetic.vqa_example(0, "test", 0, 32)
  assert vqa.question == expected["question"] and vqa.answers == (expected["answer"],) * 10


def layout_text(tokens, vocabulary):
  ids = preprocess.special_ids(vocabulary)
  return "".join("<image>" if t == ids.media else "<EOC>" if t == ids.eoc else
                 vocabulary.decode([t]) for t in tokens if t not in (0, ids.eos))


@pytest.mark.parametrize("name", ["synthetic_binding", "synthetic_vqa"])
def test_prompts_read_as_the_training_documents_do(name):
  """A few-shot prompt is a training document of the same examples, cut before the answer
  (which the model learnt to close with `<EOC>`, the harness's stop token)."""
  vocabulary = seqio.ByteVocabulary()
  format_ = prompts.FORMATS["paper"][name]
  if name == "synthetic_binding":
    example = synthetic.binding_example(0, "train", 3, 32)
    raw = synthetic.training_text("binding", example)
    support = [(None, t.removeprefix("This is a ").removesuffix("."))
               for t in example["texts"][:-1]]
    query = None
    answer = example["answer"] + "."
  else:  # A VQA document of two images, as the interleaved tasks lay them out.
    examples = [synthetic.vqa_example(0, "train", i, 32) for i in range(2)]
    texts = [synthetic.training_text("vqa", e)["text"] for e in examples]
    raw = {"images": np.stack([e["image"] for e in examples]), "texts": ["", *texts]}
    support = [(examples[0]["question"], examples[0]["answer"])]
    query, answer = examples[1]["question"], examples[1]["answer"]
  raw = {"images": raw["images"], "texts": [t.encode() for t in raw["texts"]]}
  document = preprocess.model_example(
      raw, "interleaved", preprocess.MediaSpec(image_size=32), vocabulary, max_length=256,
      max_images=9, stats=preprocess.task_stats("test"), rng=np.random.default_rng(0),
      augment=preprocess.NO_AUGMENTATION)
  prompt = prompts.prompt_tokens(format_, support, query, vocabulary)
  prompt_text = layout_text(prompt.tolist(), vocabulary)
  assert layout_text(document["tokens"].tolist(), vocabulary) == (
      prompt_text + format_.separator + answer + "<EOC>")


def test_episodic_support_is_each_querys_own_prefix():
  support = lambda n: tuple(Example(f"s{i}", ("x.png",), answers=("w",)) for i in range(n))
  queries = [Example("a", ("a.png",), support=support(4)),
             Example("b", ("b.png",), support=support(3))]
  assert [s.id for s in binding.episode_pool(queries)] == [f"s{i}" for i in (*range(4), *range(3))]
  np.testing.assert_array_equal(binding.episode_support(queries, 2), [[0, 1], [4, 5]])
  with pytest.raises(ValueError, match="4 shots, but an episode has only 3"):
    binding.episode_support(queries, 4)
  rng = np.random.default_rng(0)
  zero = harness.select_support(harness.Settings(), 0, queries, list(support(7)), None, rng,
                                episodic=True)
  assert zero.shape == (2, prompts.ZERO_SHOT_TEXT_EXAMPLES)


def test_binding_answers_are_read_up_to_the_full_stop():
  assert prompts.postprocess(" blikot. This is", "binding") == "blikot"
  assert prompts.FORMATS["open_flamingo"]["synthetic_binding"].text(None, "dax") == (
      "This is a dax.")
