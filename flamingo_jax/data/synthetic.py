"""Offline synthetic data with known content, as seqio Tasks.

Images are flat-coloured shapes on a grey background, drawn with numpy, so every caption, answer
and binding is exactly true to the pixels. The image is a 3x3 grid of cells; an object fills one
of five cells (left, right, top, bottom, centre), so objects never overlap and a test can read a
scene back from its pixels.

Example i of a split is a pure function of (seed, kind, split, i): its generator is
`np.random.default_rng([seed, kind, split, i])`. Any example can be regenerated on its own, so
sharding is exact and a resumed run sees the same examples.

Example schemas (H = W = image_size):
- pair: {"image": uint8 [H, W, 3], "text": str}
- vqa: {"image": uint8 [H, W, 3], "question": str, "answer": str}
- interleaved: {"images": uint8 [N, H, W, 3], "texts": [N] str, "style": str}, text i follows
  image i, N in 1..5, in one of the PAGE_STYLES.
- binding: {"images": uint8 [K + 1, H, W, 3], "texts": [K + 1] str, "answer": str,
  "candidates": [ways] str}: K = ways * shots support images, each followed by "This is a dex.",
  then the query image followed by "This is a"; the document reads on with answer + ".".

The registered Tasks (`register_synthetic_tasks`) read these through `training_text` into the
raw schemas of `preprocess.py` and yield model examples; evaluation reads the examples above.
"""

import dataclasses
import functools
from typing import Iterator

import numpy as np
import seqio
import tensorflow as tf

from flamingo_jax.data import preprocess
from flamingo_jax.data import tasks

BACKGROUND = (128, 128, 128)
PALETTE = {
    "red": (255, 0, 0),
    "green": (0, 160, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (128, 0, 128),
    "white": (255, 255, 255),
}
SHAPES = ("circle", "square", "triangle")
# Position name -> (row, column) of its cell in the 3x3 grid.
POSITIONS = {"left": (1, 0), "right": (1, 2), "top": (0, 1), "bottom": (2, 1), "centre": (1, 1)}
POSITION_PHRASES = {
    "left": "on the left", "right": "on the right", "top": "at the top",
    "bottom": "at the bottom", "centre": "in the centre",
}
NUMBER_WORDS = ("no", "a", "two", "three", "four")  # Indexed by count.
SPLITS = {"train": 0, "validation": 1, "test": 2}
KINDS = {"pairs": 0, "vqa": 1, "interleaved": 2, "binding": 3}
MAX_OBJECTS = 4
MAX_DOCUMENT_IMAGES = 5  # The paper keeps the first 5 images of an M3W document.

# Made-up words use no letter of the frame "This is a" and none twice: a model continues a word
# it copies by finding the letter it just wrote earlier in the context, which is then always
# inside that word.
_ONSETS = tuple("bdfgklmnprtvz") + ("bl", "dr", "gl", "kr", "pl", "tr")
_VOWELS = tuple("eou")
_CODAS = tuple("ktxpn")
# Nonsense words must not be words the captions already use.
_ENGLISH = frozenset(
    " ".join([*PALETTE, *SHAPES, *POSITIONS, *POSITION_PHRASES.values(), *NUMBER_WORDS,
              "this is and the what colour shape how many where are there"]).split())


@dataclasses.dataclass(frozen=True)
class Obj:
  shape: str
  colour: str
  position: str


def example_rng(seed: int, kind: str, split: str, index: int) -> np.random.Generator:
  """The generator of example `index`: a pure function of its arguments."""
  return np.random.default_rng([seed, KINDS[kind], SPLITS[split], index])


# Drawing.


def shape_mask(shape: str, size: int) -> np.ndarray:
  """bool [size, size]: pixels whose centres fall inside the shape."""
  centre = np.arange(size) + 0.5
  y, x = np.meshgrid(centre, centre, indexing="ij")
  half = size / 2
  if shape == "square":
    return np.ones((size, size), bool)
  if shape == "circle":
    return (x - half) ** 2 + (y - half) ** 2 <= half ** 2
  if shape == "triangle":  # Apex at the top centre, base along the bottom row.
    return np.abs(x - half) <= y / 2
  raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def cell_box(position: str, image_size: int) -> tuple[int, int, int]:
  """(top, left, size) of the square an object at `position` fills: its cell less a 1 px border."""
  cell = image_size // 3
  margin = (image_size - 3 * cell) // 2
  row, col = POSITIONS[position]
  return margin + row * cell + 1, margin + col * cell + 1, cell - 2


def render(scene: list[Obj], image_size: int) -> np.ndarray:
  """uint8 [image_size, image_size, 3]: the scene's objects on the background."""
  if image_size < 12:
    raise ValueError(f"image_size {image_size} is too small: shapes need cells of 4 px or more")
  image = np.empty((image_size, image_size, 3), np.uint8)
  image[...] = BACKGROUND
  for obj in scene:
    top, left, size = cell_box(obj.position, image_size)
    image[top:top + size, left:left + size][shape_mask(obj.shape, size)] = PALETTE[obj.colour]
  return image


def sample_scene(rng: np.random.Generator) -> list[Obj]:
  """1..MAX_OBJECTS objects in distinct cells. Colours and shapes come from few values, so
  repeats (and thus counts above one) are common."""
  num_objects = int(rng.integers(1, MAX_OBJECTS + 1))
  # A scene picks its colours from a prefix of a shuffled palette: 1..4 distinct colours.
  palette = list(rng.permutation(list(PALETTE)))
  colours = [palette[int(c)] for c in rng.integers(0, int(rng.integers(1, 5)), num_objects)]
  shapes = [SHAPES[int(s)] for s in rng.integers(0, len(SHAPES), num_objects)]
  positions = rng.choice(list(POSITIONS), num_objects, replace=False)
  return [Obj(s, c, str(p)) for s, c, p in zip(shapes, colours, positions)]


# Language.


def noun_phrase(count: int, colour: str, shape: str) -> str:
  """'a red circle', 'two red circles'."""
  return f"{NUMBER_WORDS[count]} {colour} {shape}{'s' if count != 1 else ''}"


def join(phrases: list[str]) -> str:
  return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption(scene: list[Obj]) -> str:
  """'two red circles and a blue square'; a single object also gets its position: 'a green
  triangle on the left'. Groups are listed in order of first appearance."""
  if len(scene) == 1:
    obj = scene[0]
    return f"{noun_phrase(1, obj.colour, obj.shape)} {POSITION_PHRASES[obj.position]}"
  groups = {}
  for obj in scene:
    groups[(obj.colour, obj.shape)] = groups.get((obj.colour, obj.shape), 0) + 1
  return join([noun_phrase(n, c, s) for (c, s), n in groups.items()])


def sentence(text: str) -> str:
  return text[0].upper() + text[1:] + "."


def question_answer(scene: list[Obj], rng: np.random.Generator) -> tuple[str, str]:
  """A question about colour, shape, position or count, and its one-word answer. Questions name
  the object by an attribute that is unique in the scene, so every answer is exact."""

  def unique(key):
    values = [key(o) for o in scene]
    return [o for o in scene if values.count(key(o)) == 1]

  askable = {
      "colour": unique(lambda o: o.shape),
      "shape": unique(lambda o: o.colour),
      "position": unique(lambda o: (o.colour, o.shape)),
  }
  kinds = ["count"] + [kind for kind, objs in askable.items() if objs]
  kind = kinds[int(rng.integers(len(kinds)))]
  if kind == "count":
    # Half the time ask about objects that are there, else nearly every answer would be 0.
    if rng.random() < 0.5:
      obj = scene[int(rng.integers(len(scene)))]
      colour, shape = obj.colour, obj.shape
    else:
      colour, shape = str(rng.choice(list(PALETTE))), str(rng.choice(SHAPES))
    n = sum(o.colour == colour and o.shape == shape for o in scene)
    return f"How many {colour} {shape}s are there?", str(n)
  obj = askable[kind][int(rng.integers(len(askable[kind])))]
  if kind == "colour":
    return f"What colour is the {obj.shape}?", obj.colour
  if kind == "shape":
    return f"What shape is the {obj.colour} object?", obj.shape
  return f"Where is the {obj.colour} {obj.shape}?", obj.position


def nonsense_word(rng: np.random.Generator, vowel: str) -> str:
  """A pronounceable made-up word of one syllable on `vowel`, with no letter twice: 'dex',
  'blup'. There are a few hundred; a word means something only within its episode."""
  while True:
    word = str(rng.choice(_ONSETS)) + vowel + str(rng.choice(_CODAS))
    if word not in _ENGLISH and len(set(word)) == len(word):
      return word


def episode_words(rng: np.random.Generator, count: int) -> list[str]:
  """`count` (at most 3, one per vowel) made-up words that share no letter."""
  while True:
    words = []
    for vowel in rng.permutation(_VOWELS)[:count]:
      word = nonsense_word(rng, str(vowel))
      if set(word) & set("".join(words)):
        break
      words.append(word)
    if len(words) == count:
      return words


# Examples.


def pair_example(seed: int, split: str, index: int, image_size: int = 32) -> dict:
  """{"image": uint8 [H, W, 3], "text": str}."""
  scene = sample_scene(example_rng(seed, "pairs", split, index))
  return {"image": render(scene, image_size), "text": caption(scene)}


def vqa_example(seed: int, split: str, index: int, image_size: int = 32) -> dict:
  """{"image": uint8 [H, W, 3], "question": str, "answer": str}."""
  rng = example_rng(seed, "vqa", split, index)
  scene = sample_scene(rng)
  question, answer = question_answer(scene, rng)
  return {"image": render(scene, image_size), "question": question, "answer": answer}


def qa_text(question: str, answer: str) -> str:
  """The paper's VQA-as-caption text (and the synthetic VQA prompt format)."""
  return f"Question: {question} Answer: {answer}"


# The styles of an interleaved page, as the web has them: prose about each picture, a gallery of
# captions, a page of questions and answers. The last two read as the few-shot prompts of
# flamingo_jax.evaluation.prompts (FORMATS[...]["synthetic_caption" / "synthetic_vqa"]).
PAGE_STYLES = ("prose", "gallery", "questions")


def page_text(style: str, scene: list[Obj], rng: np.random.Generator) -> str:
  if style == "gallery":
    return caption(scene)
  question, answer = question_answer(scene, rng)
  if style == "questions":
    return qa_text(question, answer)
  text = sentence(caption(scene))
  return text + f" {question} {sentence(answer)}" if rng.random() < 0.5 else text


def interleaved_example(seed: int, split: str, index: int, image_size: int = 32) -> dict:
  """{"images": uint8 [N, H, W, 3], "texts": [N] str, "style": str}, N in 1..5: each image is
  followed by text about it in the page's style (PAGE_STYLES): prose (its caption as a
  sentence, sometimes a question and its answer), a bare caption, or "Question: ... Answer:
  ..."."""
  rng = example_rng(seed, "interleaved", split, index)
  style = PAGE_STYLES[int(rng.integers(len(PAGE_STYLES)))]
  scenes = [sample_scene(rng) for _ in range(int(rng.integers(1, MAX_DOCUMENT_IMAGES + 1)))]
  return {"images": np.stack([render(s, image_size) for s in scenes]),
          "texts": [page_text(style, scene, rng) for scene in scenes], "style": style}


def binding_example(seed: int, split: str, index: int, image_size: int = 32, ways: int = 2,
                    shots: int = 2, name_colours: bool = False) -> dict:
  """A fast-concept-binding document (Frozen, Tsimpoukelli et al. 2021).

  The document draws `ways` fresh nonsense words that share no letter (so each letter of the
  context points to one word) and binds each, for this document only, to a kind of object: a
  shape in a colour, the kinds differing in both. As Frozen's words name object categories seen
  in varying poses, a kind is shown at varying positions. Support images show one object each,
  every kind `shots` times in random order, with "This is a <word>."; the query image shows one
  of the kinds and is followed by "This is a".

  name_colours: the support texts name the kind's colour, "This is a red dax.", and the answer
  is "red dax": the query's colour is seen in its image, its word bound in the supports. In the
  pure form (Frozen's) only images tell the kinds apart, so the frozen LM must compare two
  things the bridge writes, which the demo's miniature LM is not brought to in minutes (see
  docs/demo.md); with the colour named, the supports' side is text, and copying the word that
  followed the query's colour is induction.

  Returns {"images": uint8 [K + 1, H, W, 3], "texts": [K + 1] str, "answer": str,
  "candidates": [ways] str} with K = ways * shots; candidates are the bound words (with their
  colours when named).
  """
  rng = example_rng(seed, "binding", split, index)
  if not 2 <= ways <= min(len(SHAPES), len(_VOWELS)):
    raise ValueError(f"ways {ways} must be in 2..{min(len(SHAPES), len(_VOWELS))} (there "
                     f"are {len(SHAPES)} shapes and {len(_VOWELS)} vowels for distinct words)")
  shapes = [str(s) for s in rng.permutation(SHAPES)[:ways]]
  colours = [str(c) for c in rng.permutation(list(PALETTE))[:ways]]
  words = episode_words(rng, ways)
  if name_colours:
    words = [f"{colour} {word}" for colour, word in zip(colours, words)]

  def draw(kind):
    position = str(rng.choice(list(POSITIONS)))
    return render([Obj(shapes[kind], colours[kind], position)], image_size)

  support = [int(k) for k in rng.permutation(np.repeat(np.arange(ways), shots))]
  query = int(rng.integers(ways))
  images = [draw(k) for k in support] + [draw(query)]
  texts = [f"This is a {words[k]}." for k in support] + ["This is a"]
  return {"images": np.stack(images), "texts": texts, "answer": words[query],
          "candidates": words}


# seqio.


class ShardedFunctionDataSource(seqio.FunctionDataSource):
  """A FunctionDataSource whose dataset_fn takes `shard_info` and reads only its shard, instead
  of seqio generating the whole split and dropping the other shards' examples."""

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **unused):
    return self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed, shard_info=shard_info)


def _to_arrays(example: dict, signature: dict) -> list[np.ndarray]:
  # tf.numpy_function returns a flat list; strings go out as object arrays.
  return [np.asarray(example[k], dtype=object if spec.dtype == tf.string else None)
          for k, spec in signature.items()]


def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None,
               shard_info: seqio.ShardInfo | None = None, *, make_example, signature: dict,
               split_sizes: dict) -> tf.data.Dataset:
  """Raw examples i of `split` with i % num_shards == index, in index order (shuffled by `seed`
  if `shuffle_files`). `signature` maps field -> tf.TensorSpec; content never depends on `seed`,
  only the order does.

  Examples are made by Python (tf.numpy_function): delete live iterators before the interpreter
  exits, or TensorFlow's shutdown can hang on their prefetch threads.
  """
  if split not in split_sizes:
    raise ValueError(f"unknown split {split!r}; known: {sorted(split_sizes)}")
  index, num_shards = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
  indices = tf.data.Dataset.range(index, split_sizes[split], num_shards)
  if shuffle_files:  # Indices are tiny, so a full-size buffer is a cheap exact shuffle.
    indices = indices.shuffle(split_sizes[split] // num_shards + 1, seed=seed)
  keys = tuple(signature)

  def generate(i):
    values = tf.numpy_function(
        lambda i: _to_arrays(make_example(split, int(i)), signature), [i],
        [spec.dtype for spec in signature.values()], stateful=False)
    for value, spec in zip(values, signature.values()):
      value.set_shape(spec.shape)
    return dict(zip(keys, values))

  return indices.map(generate, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def training_text(kind: str, example: dict) -> dict:
  """A synthetic example -> the raw schema of its task kind (`preprocess.py`): VQA reads as the
  paper's "Question: ... Answer: ..." caption; documents get their (empty) leading text; a
  binding document reads on with its answer, so a model learns to bind in context."""
  if kind == "pairs":
    return example
  if kind == "vqa":
    return {"image": example["image"], "text": qa_text(example["question"], example["answer"])}
  texts = list(example["texts"])
  if kind == "binding":
    texts[-1] = f"{texts[-1]} {example['answer']}."
  return {"images": example["images"], "texts": ["", *texts]}


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
  """A `sources`-style description of one synthetic kind, for `tasks.register`."""
  kind: str  # A key of KINDS.
  seed: int
  image_size: int
  split_sizes: tuple  # ((split, size), ...): hashable, unlike a dict.
  ways: int = 2
  shots: int = 2
  name_colours: bool = False

  def example(self, split: str, index: int) -> dict:
    make = {"pairs": pair_example, "vqa": vqa_example, "interleaved": interleaved_example,
            "binding": functools.partial(binding_example, ways=self.ways, shots=self.shots,
                                         name_colours=self.name_colours)}
    example = make[self.kind](self.seed, split, index, image_size=self.image_size)
    return training_text(self.kind, example)

  def data_source(self, kind: str, stats) -> seqio.DataSource:
    del stats  # Generated examples are never bad.
    size = self.image_size
    image, string = tf.TensorSpec([size, size, 3], tf.uint8), tf.TensorSpec([], tf.string)
    signature = ({"image": image, "text": string} if kind == "pair" else
                 {"images": tf.TensorSpec([None, size, size, 3], tf.uint8),
                  "texts": tf.TensorSpec([None], tf.string)})
    split_sizes = dict(self.split_sizes)
    return ShardedFunctionDataSource(
        functools.partial(dataset_fn, make_example=self.example, signature=signature,
                          split_sizes=split_sizes),
        splits=list(split_sizes), num_input_examples=split_sizes)

  def preprocessors(self, kind: str) -> list:
    return []


def corpus(seed: int, num_examples: int, split: str = "train", ways: int = 2,
           shots: int = 2, name_colours: bool = False) -> Iterator[str]:
  """The text of the first `num_examples` examples of every kind, one string per caption,
  question-answer or document passage, as the registered Tasks read them (`training_text`):
  what a tokenizer for these tasks is trained on."""
  size = 12  # The smallest image render() draws: only the text is kept.
  sources = [SyntheticSource(kind, seed, size, (), ways, shots, name_colours) for kind in KINDS]
  for index in range(num_examples):
    for source in sources:
      example = source.example(split, index)
      yield from ([example["text"]] if "text" in example else
                  [text for text in example["texts"] if text])


TASK_KINDS = {"pairs": "pair", "vqa": "pair", "interleaved": "interleaved",
              "binding": "interleaved"}


def register_synthetic_tasks(vocabulary: seqio.Vocabulary, split_sizes: dict[str, int],
                             image_size: int = 32, seed: int = 0, ways: int = 2,
                             shots: int = 2, name_colours: bool = False,
                             prefix: str = "synthetic",
                             shuffle_buffer_size: int = tasks.SHUFFLE_BUFFER_SIZE) -> list[str]:
  """Registers `{prefix}_pairs`, `_vqa`, `_interleaved` and `_binding` as Tasks of model
  examples (`tasks.register`) and returns their names; split_sizes: {split: examples}, as
  `data.synthetic.split_sizes` of a config gives them. Registering again replaces them."""
  split_sizes = tuple(sorted(split_sizes.items()))
  media = preprocess.MediaSpec(image_size=image_size)
  names = []
  for kind, task_kind in TASK_KINDS.items():
    names.append(f"{prefix}_{kind}")
    source = SyntheticSource(kind, seed, image_size, split_sizes, ways, shots, name_colours)
    # Exact data: text follows its image by construction (a binding query must precede its
    # answer), captions name sides and colours, so neither attachment, flips nor jitter apply.
    tasks.register(names[-1], task_kind, source, vocabulary, media, shuffle_buffer_size,
                   preprocess.NO_AUGMENTATION)
  return names
