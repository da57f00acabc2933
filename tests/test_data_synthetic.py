"""Synthetic data: determinism, captions true to the pixels, exact sharding, per-document
bindings, and the seqio Tasks."""

import collections
import re

import numpy as np
import pytest
import seqio
import tensorflow as tf

from flamingo_jax.data import synthetic as S

from test_data_formats import render

SIZES = {"train": 40, "validation": 12}
NUMBERS = {"a": 1, "two": 2, "three": 3, "four": 4}


def read_scene(image: np.ndarray) -> list[S.Obj]:
  """The objects in an image, read from its pixels alone: colour by exact RGB, shape by how much
  of its cell the colour fills (square ~1, circle ~0.8, triangle ~0.5, apex up)."""
  names = {rgb: name for name, rgb in S.PALETTE.items()}
  scene = []
  for position in S.POSITIONS:
    top, left, size = S.cell_box(position, image.shape[0])
    cell = image[top:top + size, left:left + size].reshape(-1, 3)
    colours = {tuple(int(v) for v in p) for p in cell} - {S.BACKGROUND}
    if not colours:
      continue
    assert len(colours) == 1, (position, colours)
    rgb = colours.pop()
    mask = np.all(image[top:top + size, left:left + size] == rgb, axis=-1)
    fill = mask.mean()
    shape = "square" if fill > 0.95 else "circle" if fill > 0.65 else "triangle"
    if shape == "triangle":
      assert mask[1].sum() < mask[-1].sum()
    scene.append(S.Obj(shape, names[rgb], position))
  # Nothing is drawn outside the cells.
  outside = image.copy()
  for position in S.POSITIONS:
    top, left, size = S.cell_box(position, image.shape[0])
    outside[top:top + size, left:left + size] = S.BACKGROUND
  assert np.all(outside == S.BACKGROUND)
  return scene


def parse_caption(text: str) -> collections.Counter:
  """'two red circles and a blue square on the left' -> {(red, circle): 2, (blue, square): 1}."""
  text = re.sub(r" (on the|at the|in the) \w+$", "", text)
  counts = collections.Counter()
  for phrase in re.split(r", | and ", text):
    number, colour, shape = phrase.split()
    counts[(colour, shape.rstrip("s"))] += NUMBERS[number]
  return counts


def assert_examples_equal(a: dict, b: dict):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


MAKERS = [S.pair_example, S.vqa_example, S.interleaved_example, S.binding_example]


@pytest.mark.parametrize("make", MAKERS)
def test_same_seed_same_example_other_seed_differs(make):
  for i in range(5):
    assert_examples_equal(make(0, "train", i), make(0, "train", i))
  first = [make(0, "train", i) for i in range(5)]
  other = [make(1, "train", i) for i in range(5)]
  assert any(str(a) != str(b) for a, b in zip(first, other))
  assert str(first) != str([make(0, "validation", i) for i in range(5)])


@pytest.mark.parametrize("image_size", [32, 48])
def test_captions_are_true_to_the_pixels(image_size):
  for i in range(50):
    example = S.pair_example(3, "train", i, image_size=image_size)
    assert example["image"].shape == (image_size, image_size, 3)
    assert example["image"].dtype == np.uint8
    scene = read_scene(example["image"])
    assert 1 <= len(scene) <= S.MAX_OBJECTS
    assert parse_caption(example["text"]) == collections.Counter(
        (o.colour, o.shape) for o in scene), example["text"]
    if len(scene) == 1:
      assert example["text"].endswith(S.POSITION_PHRASES[scene[0].position])


def answer_of(question: str, scene) -> str:
  """The one true answer to a synthetic question about `scene` (the object it names is
  unique)."""
  if m := re.fullmatch(r"How many (\w+) (\w+)s are there\?", question):
    return str(sum(o.colour == m[1] and o.shape == m[2] for o in scene))
  if m := re.fullmatch(r"What colour is the (\w+)\?", question):
    (answer,) = [o.colour for o in scene if o.shape == m[1]]
  elif m := re.fullmatch(r"What shape is the (\w+) object\?", question):
    (answer,) = [o.shape for o in scene if o.colour == m[1]]
  elif m := re.fullmatch(r"Where is the (\w+) (\w+)\?", question):
    (answer,) = [o.position for o in scene if (o.colour, o.shape) == (m[1], m[2])]
  else:
    raise AssertionError(question)
  return answer


def test_vqa_answers_are_true_to_the_pixels():
  kinds = collections.Counter()
  for i in range(80):
    example = S.vqa_example(5, "train", i)
    question = example["question"]
    assert answer_of(question, read_scene(example["image"])) == example["answer"]
    kinds[question.split()[1]] += 1
  assert set(kinds) == {"many", "colour", "shape", "is"}


def test_interleaved_documents_describe_each_image_in_their_page_style():
  lengths, styles = set(), collections.Counter()
  for i in range(60):
    doc = S.interleaved_example(0, "train", i)
    assert doc["images"].ndim == 4 and len(doc["images"]) == len(doc["texts"])
    lengths.add(len(doc["texts"]))
    styles[doc["style"]] += 1
    for image, text in zip(doc["images"], doc["texts"]):
      if doc["style"] == "questions":
        question, answer = re.fullmatch(r"Question: (.*) Answer: (\w+)", text).groups()
        assert answer_of(question, read_scene(image)) == answer
        continue
      first = text.split(".")[0].lower() if doc["style"] == "prose" else text
      assert parse_caption(first) == collections.Counter(
          (o.colour, o.shape) for o in read_scene(image))
  assert lengths == set(range(1, S.MAX_DOCUMENT_IMAGES + 1))
  assert set(styles) == set(S.PAGE_STYLES)


def test_binding_answer_is_the_word_bound_in_the_support_texts():
  bindings, positions_per_kind = [], []
  for i in range(40):
    doc = S.binding_example(0, "train", i, ways=2, shots=3)
    assert doc["images"].shape == (7, 32, 32, 3) and len(doc["texts"]) == 7
    assert doc["texts"][-1] == "This is a"
    # Read the binding from the support examples: kind shown (from pixels) -> word in the text.
    support = collections.defaultdict(set)
    positions = collections.defaultdict(set)
    for image, text in zip(doc["images"][:-1], doc["texts"][:-1]):
      word = re.fullmatch(r"This is a (\w+)\.", text)[1]
      (obj,) = read_scene(image)
      support[word].add((obj.shape, obj.colour))
      positions[word].add(obj.position)
    assert sorted(support) == sorted(doc["candidates"]) and len(support) == 2
    # Each word names one kind, shown 3 times; the kinds differ in shape and in colour.
    assert all(len(kinds) == 1 for kinds in support.values())
    binding = {kinds.pop(): word for word, kinds in support.items()}
    (a_shape, a_colour), (b_shape, b_colour) = binding
    assert a_shape != b_shape and a_colour != b_colour
    (query,) = read_scene(doc["images"][-1])
    assert doc["answer"] == binding[(query.shape, query.colour)]
    bindings.append(binding)
    positions_per_kind += [len(p) for p in positions.values()]
  # Fresh words and bindings per document: nothing to memorise across documents.
  assert len({frozenset(b.items()) for b in bindings}) == len(bindings)
  words = [w for b in bindings for w in b.values()]
  assert len(set(words)) > 0.7 * len(words)  # Words drawn from a few hundred.
  # A kind is shown at varying positions.
  assert np.mean(np.array(positions_per_kind) > 1) > 0.8


def test_named_binding_names_each_kinds_colour_with_its_word():
  for i in range(20):
    pure = S.binding_example(0, "train", i, ways=2, shots=2)
    doc = S.binding_example(0, "train", i, ways=2, shots=2, name_colours=True)
    np.testing.assert_array_equal(doc["images"], pure["images"])  # The same episode.
    named = {}  # Word -> "<colour> <word>", read from the pixels.
    for image, text, pure_text in zip(doc["images"][:-1], doc["texts"], pure["texts"]):
      (obj,) = read_scene(image)
      word = re.fullmatch(r"This is a (\w+)\.", pure_text)[1]
      named[word] = f"{obj.colour} {word}"
      assert text == f"This is a {named[word]}."
    assert doc["texts"][-1] == "This is a"  # The query names nothing.
    assert doc["answer"] == named[pure["answer"]]
    assert doc["candidates"] == [named[word] for word in pure["candidates"]]


def dataset_fn(make):
  keys = {S.pair_example: ("image", "text"),
          S.binding_example: ("images", "texts", "answer", "candidates")}[make]
  spec = {"image": tf.TensorSpec([32, 32, 3], tf.uint8),
          "images": tf.TensorSpec([None, 32, 32, 3], tf.uint8),
          "text": tf.TensorSpec([], tf.string), "answer": tf.TensorSpec([], tf.string),
          "texts": tf.TensorSpec([None], tf.string), "candidates": tf.TensorSpec([None], tf.string)}
  return lambda **kw: S.dataset_fn(
      **kw, make_example=lambda split, i: make(0, split, i),
      signature={k: spec[k] for k in keys}, split_sizes=SIZES)


def decode(example: dict) -> dict:
  return {k: v.decode() if isinstance(v, bytes) else
          [s.decode() for s in v] if v.dtype == object else v for k, v in example.items()}


@pytest.mark.parametrize("make", [S.pair_example, S.binding_example])
def test_shards_are_disjoint_and_cover_the_split(make):
  fn = dataset_fn(make)
  whole = [decode(e) for e in fn(split="train", shuffle_files=False).as_numpy_iterator()]
  assert len(whole) == SIZES["train"]
  for i in (0, 7, 39):
    assert_examples_equal(whole[i], make(0, "train", i))
  shards = [[decode(e) for e in fn(split="train", shuffle_files=False,
                                  shard_info=seqio.ShardInfo(k, 3)).as_numpy_iterator()]
            for k in range(3)]
  assert [len(s) for s in shards] == [14, 13, 13]
  for k, shard in enumerate(shards):
    for j, example in enumerate(shard):  # Shard k holds examples i = k, k + 3, ...
      assert_examples_equal(example, whole[k + 3 * j])
  shuffled = [decode(e) for e in fn(split="train", shuffle_files=True, seed=1,
                                    shard_info=seqio.ShardInfo(1, 3)).as_numpy_iterator()]
  assert sorted(str(e) for e in shuffled) == sorted(str(e) for e in shards[1])
  assert [str(e) for e in shuffled] != [str(e) for e in shards[1]]


@pytest.fixture(scope="module")
def task_names():
  return S.register_synthetic_tasks(seqio.ByteVocabulary(), split_sizes=SIZES,
                                    prefix="test_synthetic")


def expected_text(make, example: dict) -> str:
  """The model text of a synthetic example: the paper's layout of its training text."""
  if make is S.pair_example:
    return f"<image>{example['text']}<EOC><EOS>"
  if make is S.vqa_example:
    return f"<image>Question: {example['question']} Answer: {example['answer']}<EOC><EOS>"
  texts = list(example["texts"])
  if make is S.binding_example:
    texts[-1] += f" {example['answer']}."
  return "".join(f"<image>{t}<EOC>" for t in texts) + "<EOS>"


def test_tasks_yield_model_examples_of_the_synthetic_examples(task_names):
  makers = dict(zip(task_names, MAKERS))
  assert list(makers) == ["test_synthetic_pairs", "test_synthetic_vqa",
                          "test_synthetic_interleaved", "test_synthetic_binding"]
  lengths = {"tokens": 1024, "images": 5}  # Room for whole documents: no random window.
  for name, make in makers.items():
    task = seqio.get_mixture_or_task(name)
    examples = list(task.get_dataset(lengths, split="validation", shuffle=False,
                                     seed=0).as_numpy_iterator())
    assert len(examples) == SIZES["validation"]
    for i in (0, 5):
      example = make(0, "validation", i)
      assert render(examples[i]) == expected_text(make, example)
      pixels = example["images"] if "images" in example else example["image"][None]
      np.testing.assert_array_equal(examples[i]["images"][:len(pixels), 0], pixels)
      assert not examples[i]["images"][len(pixels):].any()
    shard = list(task.get_dataset(lengths, split="validation", shuffle=False, seed=0,
                                  shard_info=seqio.ShardInfo(1, 4)).as_numpy_iterator())
    assert len(shard) == SIZES["validation"] // 4
    for j, example in enumerate(shard):
      assert_examples_equal(example, examples[1 + 4 * j])
